// Headless Chromium against a real `tidings serve`: the page at `/` as a newcomer meets it.
// Opened as the README says and subscribed as it suggests, it shows the README's own curl
// publish (an event of type `book`: every type is shown, a filter only narrows); its session
// panel subscribes, publishes and asks who is connected; it names the instance, the bus and
// the authorization mode, and hides token fields that `--auth none` ignores. With tokens, the
// subscriber's token goes as a header and the private update arrives only where it may; a
// refused stream says why; a stream resumes from the last id it saw, and one turned away by
// a full instance comes back by itself (the page's, and a plain EventSource). The first test
// takes the screenshot in docs/page.png.
//
// Run by .ci/run after `cargo test` (which builds target/debug/tidings):
//   cd tests/browser && npm ci && npm test
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startHub, token as mint, launchBrowser, readmeCommand, runReadmeCommand, root } from './harness.mjs';

const KEY = 'browser-test-key-of-some-length';
const PUBLIC = 'https://example.com/books/1';
const PRIVATE_TEMPLATE = 'https://example.com/orders/{id}';
const PRIVATE = 'https://example.com/orders/7';

let browser;
let open = []; // hubs to stop

const token = (...args) => mint(KEY, ...args);

async function hub(args) {
  const started = await startHub(args);
  open.push(started.child);
  return started.base;
}

async function publish(base, fields, bearer) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const res = await fetch(`${base}/.well-known/mercure`, { method: 'POST', headers, body: new URLSearchParams(fields) });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.text()).trim();
}

async function openPage(base, query = '') {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/${query ? `?${query}` : ''}`);
  return { page, errors };
}

const opened = (page) => page.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 10000 });

async function eventsWhen(page, count) {
  await page.waitForFunction((n) => window.tidingsEvents.length >= n, count, { timeout: 10000 });
  return page.evaluate(() => window.tidingsEvents);
}

const text = (page, selector) => page.locator(selector).textContent();

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const child of open) child.kill('SIGKILL');
});

test("the page shows the README's curl publish, whatever its type, and says which hub it is", async () => {
  const base = await hub(['--auth', 'none']);
  const { page, errors } = await openPage(base);
  await page.setViewportSize({ width: 1280, height: 800 });
  const ready = await (await fetch(`${base}/readyz`)).json();
  assert.equal(await text(page, '#hub-instance'), ready.instanceId);
  assert.equal(await text(page, '#hub-bus'), 'memory');
  assert.equal(await text(page, '#hub-auth'), 'none');
  await page.waitForFunction(() => document.querySelector('#hub-bus-state').textContent === 'connected', null, { timeout: 10000 });
  assert.equal(await page.isVisible('#sub-jwt'), false, 'no token field under --auth none');
  assert.equal(await page.isVisible('#pub-jwt'), false);
  // As the page suggests: its topic selector is filled in, Subscribe.
  await page.click('#subscribe');
  await opened(page);
  assert.match(await text(page, '#sub-curl'), /^curl -N 'http:\/\/127\.0\.0\.1:\d+\/\.well-known\/mercure\?topic=https%3A%2F%2Fexample\.com%2Fbooks%2F%7Bid%7D'$/);
  const out = runReadmeCommand(readmeCommand('curl -X POST http://127.0.0.1:3000/.well-known/mercure \\'), base);
  const [event] = await eventsWhen(page, 1);
  assert.deepEqual(event, { type: 'book', id: out.trim(), data: '{"title": "Dune"}' });
  assert.equal(await text(page, '#count'), '1');
  assert.equal(await page.isVisible('#log li'), true);
  await page.screenshot({ path: path.join(root, 'docs', 'page.png'), fullPage: true });
  // The filter narrows what is shown and says what it hides.
  await page.fill('#show', 'message');
  assert.equal(await page.isVisible('#log li'), false);
  assert.equal(await text(page, '#filter-note'), '1 hidden by the filter');
  await page.fill('#show', 'message, book');
  assert.equal(await page.isVisible('#log li'), true);
  assert.deepEqual(errors, []);
});

test('the session panel subscribes, publishes, asks who is connected, and shows the README\'s session publish', async () => {
  const base = await hub(['--auth', 'none']);
  const { page, errors } = await openPage(base, 'api=session');
  assert.equal(await page.isVisible('#topics'), false);
  assert.equal(await page.inputValue('#sub-session'), 'alice');
  await page.click('#subscribe');
  await opened(page);
  assert.match(await text(page, '#sub-curl'), /\/sse\/event-stream\?sessionId=alice'$/);
  await page.click('#publish'); // the form's example: alice, chat, {"text": "hi"}
  await page.waitForFunction(() => document.querySelector('#pub-result').textContent.startsWith('Published: '), null, { timeout: 10000 });
  const [first] = await eventsWhen(page, 1);
  assert.deepEqual({ type: first.type, data: first.data }, { type: 'chat', data: '{"text":"hi"}' });
  assert.equal(await text(page, '#pub-result'), `Published: ${first.id}`);
  runReadmeCommand(readmeCommand('curl -X POST http://127.0.0.1:3000/sse/events'), base);
  const events = await eventsWhen(page, 2);
  assert.deepEqual({ type: events[1].type, data: events[1].data }, { type: 'chat', data: '{"text":"hi"}' });
  await page.click('#presence');
  await page.waitForFunction(() => document.querySelector('#pub-result').textContent.includes('connected'), null, { timeout: 10000 });
  assert.equal(await text(page, '#pub-result'), 'alice is connected: 1 stream(s) (cluster)');
  // A session event published without a session ID is refused, and the page says why.
  await page.fill('#pub-session', '');
  await page.click('#publish');
  await page.waitForFunction(() => document.querySelector('#pub-result').className.includes('err'), null, { timeout: 10000 });
  assert.match(await text(page, '#pub-result'), /^400 Bad Request — /);
  assert.deepEqual(errors, []);
});

test('with tokens the subscriber token goes as a header and private updates arrive only where they may', async () => {
  const base = await hub(['--jwt-key', KEY, '--anonymous']);
  const subscriber = token('--subscribe', PRIVATE_TEMPLATE);
  const publisher = token('--publish', '*');
  const topics = new URLSearchParams([['topic', PUBLIC], ['topic', PRIVATE_TEMPLATE]]);
  const withToken = await openPage(base, `${topics}&jwt=${subscriber}&autosubscribe=1`);
  const anonymous = await openPage(base, `${topics}&autosubscribe=1`);
  await opened(withToken.page);
  await opened(anonymous.page);
  assert.equal(await text(withToken.page, '#hub-auth'), 'jwt');
  assert.equal(await withToken.page.isVisible('#sub-jwt'), true);

  const privateId = await publish(base, [['topic', PRIVATE], ['data', 'for your eyes only'], ['private', 'on']], publisher);
  const publicId = await publish(base, [['topic', PUBLIC], ['type', 'book'], ['data', 'line one\nline two\n\nline four']], publisher);

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

test("the page's publish form reaches its stream; a refused publish or stream says why", async () => {
  const base = await hub(['--jwt-key', KEY]);
  const publisher = token('--publish', '*');
  const subscriber = token('--subscribe', '*');
  const { page, errors } = await openPage(base, `topic=${encodeURIComponent(PUBLIC)}`);
  // No token, and this hub has no anonymous subscribers: refused, and told why.
  await page.click('#subscribe');
  await page.waitForFunction(() => window.tidingsStatus === 'error', null, { timeout: 10000 });
  assert.match(await text(page, '#sub-result'), /^401 Unauthorized — missing_token: /);
  await page.fill('#sub-jwt', subscriber);
  await page.click('#subscribe');
  await opened(page);
  await page.fill('#pub-data', 'typed in the page');
  await page.fill('#pub-jwt', publisher);
  await page.click('#publish');
  await page.waitForFunction(() => document.querySelector('#pub-result').textContent.startsWith('Published'), null, { timeout: 10000 });
  const events = await eventsWhen(page, 1);
  assert.equal(events[0].data, 'typed in the page');
  await page.fill('#pub-jwt', 'not-a-token');
  await page.click('#publish');
  await page.waitForFunction(() => document.querySelector('#pub-result').textContent.includes('401'), null, { timeout: 10000 });
  assert.deepEqual(errors, []);
});

test('Subscribe again resumes from the last id seen: what was published meanwhile arrives', async () => {
  const base = await hub(['--auth', 'none']);
  const { page, errors } = await openPage(base, `topic=${encodeURIComponent(PUBLIC)}&autosubscribe=1`);
  await opened(page);
  const first = await publish(base, [['topic', PUBLIC], ['data', 'one']]);
  await eventsWhen(page, 1);
  assert.equal(await page.inputValue('#last-id'), first);
  await page.click('#unsubscribe');
  const missed = [await publish(base, [['topic', PUBLIC], ['data', 'two']]), await publish(base, [['topic', PUBLIC], ['data', 'three']])];
  await page.click('#subscribe');
  const events = await eventsWhen(page, 3);
  assert.deepEqual(events.map((e) => e.id), [first, ...missed]);
  assert.deepEqual(events.map((e) => e.data), ['one', 'two', 'three']);
  assert.deepEqual(errors, []);
});

test('a stream turned away by a full instance comes back by itself, in a plain EventSource and on the page', async () => {
  const base = await hub(['--auth', 'none', '--max-streams', '1']);
  const holder = await browser.newPage();
  await holder.goto(`${base}/healthz`);
  // The first takes the only place before the second asks (at once they would race for it).
  await holder.evaluate(() => new Promise((resolve) => {
    window.first = new EventSource('/.well-known/mercure?topic=full');
    window.first.onopen = () => resolve();
  }));
  await holder.evaluate(() => {
    window.second = { opens: 0, errors: 0, data: [], states: [] };
    const source = new EventSource('/.well-known/mercure?topic=full');
    source.onopen = () => { window.second.opens += 1; };
    source.onerror = () => { window.second.errors += 1; window.second.states.push(source.readyState); };
    source.onmessage = (e) => window.second.data.push(e.data);
  });
  // The second is turned away (200, a comment and a retry hint), again and again. The hint
  // for a full instance is 2.5 to 7.5 s: each wait below allows for two of them and more.
  await holder.waitForFunction(() => window.second.errors >= 2, null, { timeout: 30000 });
  const waiting = await holder.evaluate(() => window.second);
  assert.ok(waiting.states.every((s) => s === 0), `reconnecting, never closed: ${JSON.stringify(waiting)}`);
  // Once the first stream goes, the second gets the place and its updates.
  await holder.evaluate(() => window.first.close());
  await holder.waitForFunction(() => window.second.opens > window.second.errors, null, { timeout: 30000 });
  await publish(base, [['topic', 'full'], ['data', 'in at last']]);
  await holder.waitForFunction(() => window.second.data.length >= 1, null, { timeout: 10000 });
  assert.deepEqual(await holder.evaluate(() => window.second.data), ['in at last']);
  const deferred = await (await fetch(`${base}/metrics`)).text();
  assert.match(deferred, /^tidings_streams_deferred_total [1-9]/m);
  // The page, turned away while the second holds the place, says why and waits its turn.
  const { page, errors } = await openPage(base, 'topic=full&autosubscribe=1');
  await page.waitForFunction(() => document.querySelector('#sub-result').textContent.includes('too_many_streams'), null, { timeout: 10000 });
  assert.equal(await page.evaluate(() => window.tidingsStatus), 'connecting');
  await holder.close();
  await page.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 30000 });
  const sent = await publish(base, [['topic', 'full'], ['data', 'the page too']]);
  const events = await eventsWhen(page, 1);
  assert.deepEqual(events.map((e) => [e.id, e.data]), [[sent, 'the page too']]);
  assert.deepEqual(errors, []);
});
