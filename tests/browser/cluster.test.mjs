// The whole path as users run it: headless Chromium, nginx with deploy/nginx/tidings.conf,
// three `tidings serve` on Redis. The page (the hub's own, served through nginx) holds three
// EventSources: a public topic, a private topic authorized by the token cookie, and a session
// stream. A publisher posts to the instances directly, round-robin. Midway the instance
// holding most of the browser's streams is killed (SIGKILL); the browser reconnects by itself
// through nginx to the others, resumes with Last-Event-ID, and its record must show every
// update exactly once, in order. A screenshot of the page receiving live updates goes to docs/.
//
// Run by .ci/run after `cargo test` (which builds target/debug/tidings), with nginx installed
// (.ci/services) and Redis at TIDINGS_TEST_REDIS or 127.0.0.1:6379.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startHub, token as mint, launchBrowser, startNginx, metric, root } from './harness.mjs';

const KEY = 'cluster-browser-test-key-of-some-length';
const REDIS = process.env.TIDINGS_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const PREFIX = `tidings-browser-${randomBytes(4).toString('hex')}`;
const PUBLIC = `https://example.com/news/${PREFIX}`;
const PRIVATE_TEMPLATE = `https://example.com/orders/${PREFIX}/{id}`;
const PRIVATE = `https://example.com/orders/${PREFIX}/7`;
const SESSION = `alice-${PREFIX}`;
const UPDATES = 24;

let hubs = [];
let nginx;
let browser;
const token = (...args) => mint(KEY, ...args);

before(async () => {
  for (let i = 0; i < 3; i++) {
    hubs.push(await startHub(['--jwt-key', KEY, '--bus', REDIS, '--bus-prefix', PREFIX,
      '--instance-id', `${PREFIX}-${i}`, '--max-streams-per-address', '1000']));
  }
  nginx = await startNginx(hubs.map((h) => h.base.replace('http://', '')));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  nginx?.stop();
  for (const hub of hubs) hub.child.kill('SIGKILL');
});

async function post(hub, pathname, body, contentType, bearer) {
  const res = await fetch(`${hub.base}${pathname}`, {
    method: 'POST',
    headers: { 'content-type': contentType, authorization: `Bearer ${bearer}` },
    body,
  });
  assert.equal(res.status, 200, `${hub.base}${pathname}: ${await res.clone().text()}`);
}

/** Publishes update `n` of each stream's kind, through `hub`. */
async function publishRound(hub, n, publisher) {
  const form = (fields) => new URLSearchParams(fields).toString();
  const formType = 'application/x-www-form-urlencoded';
  await post(hub, '/.well-known/mercure', form([['topic', PUBLIC], ['data', `${n}`]]), formType, publisher);
  await post(hub, '/.well-known/mercure', form([['topic', PRIVATE], ['data', `${n}`], ['private', 'on']]), formType, publisher);
  await post(hub, '/sse/events', JSON.stringify({ sessionId: SESSION, eventName: 'chat', payload: n }),
    'application/json', publisher);
}

test('through nginx, the browser rides out the death of the instance holding its streams', async () => {
  const context = await browser.newContext();
  const origin = new URL(nginx.base);
  await context.addCookies([{
    name: 'mercureAuthorization',
    value: token('--subscribe', PRIVATE_TEMPLATE, '--subscribe', PUBLIC, '--sub', SESSION),
    domain: origin.hostname, path: '/', httpOnly: true, sameSite: 'Strict',
  }]);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // The hub's page, subscribed to the public topic, for the screenshot.
  await page.goto(`${nginx.base}/?topic=${encodeURIComponent(PUBLIC)}&autosubscribe=1`);
  await page.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 10000 });
  // Three more EventSources, recording what each receives.
  await page.evaluate(({ PUBLIC, PRIVATE_TEMPLATE }) => {
    window.record = { public: [], private: [], session: [] };
    window.opened = { public: 0, private: 0, session: 0 };
    const open = (name, url, type) => {
      const source = new EventSource(url);
      source.onopen = () => { window.opened[name] += 1; };
      source.addEventListener(type, (e) => window.record[name].push({ id: e.lastEventId, data: e.data }));
    };
    open('public', `/.well-known/mercure?topic=${encodeURIComponent(PUBLIC)}`, 'message');
    open('private', `/.well-known/mercure?topic=${encodeURIComponent(PRIVATE_TEMPLATE)}`, 'message');
    open('session', '/sse/event-stream?eventName=chat', 'chat');
  }, { PUBLIC, PRIVATE_TEMPLATE });
  await page.waitForFunction(() => Object.values(window.opened).every((n) => n >= 1), null, { timeout: 10000 });
  const held = async () => Promise.all(hubs.map((h) => metric(h.base, 'tidings_subscribers')));
  for (let i = 0; i < 50 && (await held()).reduce((a, b) => a + b, 0) < 4; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const before = await held();
  assert.equal(before.reduce((a, b) => a + b, 0), 4, `the page's four streams: ${before}`);

  const publisher = token('--publish', '*');
  let live = [...hubs];
  for (let n = 0; n < UPDATES; n++) {
    if (n === UPDATES / 2) {
      const victim = hubs[before.indexOf(Math.max(...before))];
      victim.child.kill('SIGKILL');
      live = live.filter((h) => h !== victim);
    }
    await publishRound(live[n % live.length], n, publisher);
    await new Promise((r) => setTimeout(r, 100));
  }

  await page.waitForFunction((n) => Object.values(window.record).every((r) => r.length >= n), UPDATES,
    { timeout: 30000 }).catch(() => {});
  const record = await page.evaluate(() => window.record);
  const expected = Array.from({ length: UPDATES }, (_, n) => `${n}`);
  for (const [name, events] of Object.entries(record)) {
    assert.deepEqual(events.map((e) => e.data), expected, `${name}: every update once, in order`);
    assert.equal(new Set(events.map((e) => e.id)).size, UPDATES, `${name}: distinct ids`);
  }
  const reopened = await page.evaluate(() => window.opened);
  assert.ok(Object.values(reopened).some((n) => n >= 2), `some stream reconnected: ${JSON.stringify(reopened)}`);
  assert.deepEqual(errors, []);

  await page.waitForFunction((n) => window.tidingsEvents.length >= n, UPDATES, { timeout: 10000 });
  await page.screenshot({ path: path.join(root, 'docs', 'page.png'), fullPage: true });
  await context.close();
});
