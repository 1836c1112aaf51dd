// Headless Chromium against a real `tidings serve`: the page at `/` subscribes with an
// EventSource (one page with a subscriber token, one anonymous), updates published over HTTP
// and through the page's own form arrive — multi-line data intact, the private update only
// where the token allows it. An EventSource turned away for a passing reason (the instance
// is full) is not closed for good: it comes back after the retry hint and gets its updates.
//
// Run by .ci/run after `cargo test` (which builds target/debug/tidings):
//   cd tests/browser && npm ci && npm test
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHub, token as mint, launchBrowser } from './harness.mjs';

const KEY = 'browser-test-key-of-some-length';
const PUBLIC = 'https://example.com/books/1';
const PRIVATE_TEMPLATE = 'https://example.com/orders/{id}';
const PRIVATE = 'https://example.com/orders/7';

let hub;
let base;
let browser;

const token = (...args) => mint(KEY, ...args);

async function publish(fields, bearer) {
  const body = new URLSearchParams(fields);
  const res = await fetch(`${base}/.well-known/mercure`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${bearer}` },
    body,
  });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.text()).trim();
}

async function openPage(query) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/?${query}`);
  await page.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 10000 });
  return { page, errors };
}

async function eventsWhen(page, count) {
  await page.waitForFunction((n) => window.tidingsEvents.length >= n, count, { timeout: 10000 });
  return page.evaluate(() => window.tidingsEvents);
}

before(async () => {
  ({ child: hub, base } = await startHub(['--jwt-key', KEY, '--anonymous']));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  hub?.kill('SIGKILL');
});

test('an EventSource on the page receives public and private updates', async () => {
  const subscriber = token('--subscribe', PRIVATE_TEMPLATE);
  const publisher = token('--publish', '*');
  const topics = new URLSearchParams([['topic', PUBLIC], ['topic', PRIVATE_TEMPLATE]]);
  const withToken = await openPage(`${topics}&jwt=${subscriber}&types=book&autosubscribe=1`);
  const anonymous = await openPage(`${topics}&types=book&autosubscribe=1`);

  const privateId = await publish([['topic', PRIVATE], ['data', 'for your eyes only'], ['private', 'on']], publisher);
  const publicId = await publish([['topic', PUBLIC], ['type', 'book'], ['data', 'line one\nline two\n\nline four']], publisher);

  const seen = await eventsWhen(withToken.page, 2);
  assert.deepEqual(seen.slice(0, 2), [
    { type: 'message', id: privateId, data: 'for your eyes only' },
    { type: 'book', id: publicId, data: 'line one\nline two\n\nline four' },
  ]);
  const anon = await eventsWhen(anonymous.page, 1);
  assert.deepEqual(anon, [{ type: 'book', id: publicId, data: 'line one\nline two\n\nline four' }],
    'the anonymous page gets the public update only');
  assert.deepEqual([...withToken.errors, ...anonymous.errors], []);
});

test("the page's own publish form reaches its EventSource", async () => {
  const publisher = token('--publish', '*');
  const { page, errors } = await openPage(`topic=${encodeURIComponent(PUBLIC)}&autosubscribe=1`);
  await page.fill('#pub-data', 'typed in the page');
  await page.fill('#pub-jwt', publisher);
  await page.click('#publish');
  await page.waitForFunction(() => document.querySelector('#pub-result').textContent.startsWith('Published'), null, { timeout: 10000 });
  const events = await eventsWhen(page, 1);
  assert.equal(events[0].data, 'typed in the page');
  // A refused publish shows the hub's error.
  await page.fill('#pub-jwt', 'not-a-token');
  await page.click('#publish');
  await page.waitForFunction(() => document.querySelector('#pub-result').textContent.includes('401'), null, { timeout: 10000 });
  assert.deepEqual(errors, []);
});

test('an EventSource turned away by a full instance comes back by itself', async () => {
  const { child, base: fullBase } = await startHub(['--auth', 'none', '--max-streams', '1']);
  try {
    const page = await browser.newPage();
    await page.goto(`${fullBase}/healthz`);
    // The first takes the only place before the second asks (both at once would race for it).
    await page.evaluate(() => new Promise((resolve) => {
      window.first = new EventSource('/.well-known/mercure?topic=full');
      window.first.onopen = () => resolve();
    }));
    await page.evaluate(() => {
      window.second = { opens: 0, errors: 0, data: [], states: [] };
      const source = new EventSource('/.well-known/mercure?topic=full');
      source.onopen = () => { window.second.opens += 1; };
      source.onerror = () => { window.second.errors += 1; window.second.states.push(source.readyState); };
      source.onmessage = (e) => window.second.data.push(e.data);
    });
    // The second is turned away (200, a comment and a retry hint), again and again. The hint
    // for a full instance is 2.5 to 7.5 s: each wait below allows for two of them and more.
    await page.waitForFunction(() => window.second.errors >= 2, null, { timeout: 30000 });
    const waiting = await page.evaluate(() => window.second);
    assert.ok(waiting.states.every((s) => s === 0), `reconnecting, never closed: ${JSON.stringify(waiting)}`);
    // Once the first stream goes, the second gets the place and its updates.
    await page.evaluate(() => window.first.close());
    await page.waitForFunction(() => window.second.opens > window.second.errors, null, { timeout: 30000 });
    const res = await fetch(`${fullBase}/.well-known/mercure`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams([['topic', 'full'], ['data', 'in at last']]),
    });
    assert.equal(res.status, 200);
    await page.waitForFunction(() => window.second.data.length >= 1, null, { timeout: 10000 });
    assert.deepEqual(await page.evaluate(() => window.second.data), ['in at last']);
    const deferred = await (await fetch(`${fullBase}/metrics`)).text();
    assert.match(deferred, /^tidings_streams_deferred_total [1-9]/m);
    await page.close();
  } finally {
    child.kill('SIGKILL');
  }
});
