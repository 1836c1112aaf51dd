// The example application (examples/session-app): a Flask app with its own login, behind nginx
// (the example's nginx.conf) with two `tidings serve` on Redis that ask the app about each
// stream (--auth-url) and tell it who is online (--webhook-url). Headless Chromium logs in with
// a form and holds the app's session cookie only — no JWT anywhere in the browser — and its
// page's one stream (the browser client, clients/js, which the app serves) gets the session's
// events of two names. Then the app goes down and the instance holding the stream is killed:
// the client reconnects through nginx to the other instance, which cannot ask the app and
// tells it to retry (200 with a retry hint, not an error it would give up on); once the app is
// back, the client is let in by itself and gets, once and in order, what was sent to the
// session meanwhile.
//
// Run by .ci/run after `cargo test`, with nginx, Redis and the example's requirements
// installed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startHub, token as mint, launchBrowser, startAppNginx, freePort, metric, root } from './harness.mjs';

const KEY = 'session-app-test-key-of-some-length';
const REDIS = process.env.TIDINGS_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const PREFIX = `tidings-app-${randomBytes(4).toString('hex')}`;
const WEBHOOK_SECRET = 'session-app-webhook-secret';
const token = (...args) => mint(KEY, ...args);

let hubs = [];
let app;
let appPort;
let nginx;
let browser;

/** Starts the example app on `appPort`; resolves once it answers. */
async function startApp() {
  const child = spawn('python3', [path.join(root, 'examples', 'session-app', 'app.py'), '--port', `${appPort}`], {
    env: {
      ...process.env,
      TIDINGS_URL: hubs[0].base,
      TIDINGS_PUBLISHER_TOKEN: token('--publish', 'urn:tidings:session:{id}'),
      WEBHOOK_SECRET,
      APP_SECRET: 'the-same-secret-across-restarts',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (chunk) => { log += chunk; });
  for (let i = 0; ; i++) {
    const up = await fetch(`http://127.0.0.1:${appPort}/online`).then((r) => r.ok, () => false);
    if (up) return child;
    if (i > 100 || child.exitCode !== null) throw new Error(`the app did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function startInstance(i) {
  const appUrl = `http://127.0.0.1:${appPort}`;
  return startHub(['--jwt-key', KEY, '--bus', REDIS, '--bus-prefix', PREFIX, '--instance-id', `${PREFIX}-${i}`,
    '--auth-url', `${appUrl}/tidings/auth`, '--auth-timeout', '2',
    '--webhook-url', `${appUrl}/tidings/events`, '--webhook-secret', WEBHOOK_SECRET]);
}

before(async () => {
  appPort = await freePort();
  for (let i = 0; i < 2; i++) hubs.push(await startInstance(i));
  app = await startApp();
  nginx = await startAppNginx([hubs[0].base, hubs[1].base], `http://127.0.0.1:${appPort}`);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  nginx?.stop();
  app?.kill('SIGKILL');
  for (const hub of hubs) hub.child.kill('SIGKILL');
});

/** Sends a `notice` to `session` straight through an instance, as any backend service may. */
async function notice(hub, session, n) {
  const res = await fetch(`${hub.base}/sse/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token('--publish', '*')}` },
    body: JSON.stringify({ sessionId: session, eventName: 'notice', payload: { n } }),
  });
  assert.equal(res.status, 200, await res.text());
}

test('a logged-in page gets its session events without a JWT, and rides out the app being down', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const authorized = [];
  page.on('request', (r) => { if (r.headers().authorization) authorized.push(r.url()); });
  await page.goto(`${nginx.base}/`);
  await page.fill('input[name=name]', 'alice');
  await page.fill('input[name=password]', 'wonderland');
  await Promise.all([page.waitForNavigation(), page.click('form[action="/login"] button')]);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open', null, { timeout: 10000 });

  // The browser holds the application's session cookie, nothing else, and sends no token.
  const cookies = await context.cookies();
  assert.deepEqual(cookies.map((c) => [c.name, c.httpOnly]), [['session', true]]);

  // A message through the app (its form), and a notice from another service: one stream, two names.
  await page.fill('#text', 'hello');
  await page.click('#say button');
  await notice(hubs[1], 'alice', 0);
  await page.waitForFunction(() => window.received.length >= 2, null, { timeout: 10000 });
  let received = await page.evaluate(() => window.received);
  assert.deepEqual(received.map((e) => e.name).sort(), ['chat', 'notice']);
  assert.equal(received.find((e) => e.name === 'chat').data.text, 'hello');

  // The app heard from the webhooks that alice is online.
  for (let i = 0; i < 100; i++) {
    const { online } = await (await fetch(`${nginx.base}/online`)).json();
    if (online.includes('alice')) break;
    assert.ok(i < 99, `alice online by webhook: ${JSON.stringify(online)}`);
    await new Promise((r) => setTimeout(r, 100));
  }

  // The app goes down, and so does the instance holding the stream.
  const holders = await Promise.all(hubs.map((h) => metric(h.base, 'tidings_subscribers')));
  const victim = holders.indexOf(1);
  assert.ok(victim >= 0, `one instance holds the stream: ${holders}`);
  const survivor = hubs[1 - victim];
  app.kill('SIGKILL');
  hubs[victim].child.kill('SIGKILL');
  const missed = [1, 2, 3];
  for (const n of missed) await notice(survivor, 'alice', n);
  // The browser comes back to the survivor, which cannot ask the app: told to retry.
  for (let i = 0; ; i++) {
    const deferred = await metric(survivor.base, 'tidings_streams_deferred_total');
    if (deferred >= 1) break;
    assert.ok(i < 150, 'the survivor told the returning browser to retry');
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(await page.evaluate(() => window.received.length), 2, 'nothing while the app is down');

  // The app is back: the client gets in by itself and resumes where it was.
  app = await startApp();
  await page.waitForFunction((n) => window.received.length >= n, 2 + missed.length, { timeout: 20000 });
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open', null, { timeout: 10000 });
  received = await page.evaluate(() => window.received);
  assert.deepEqual(received.slice(2).map((e) => [e.name, e.data.n]), missed.map((n) => ['notice', n]),
    'what was sent while it was away, once, in order');

  // A second tab of the app: it joins the first tab's stream (the client shares one per
  // browser) and both get the next notice.
  const second = await context.newPage();
  await second.goto(`${nginx.base}/`);
  await second.waitForFunction(() => document.getElementById('status').textContent === 'open', null, { timeout: 10000 });
  await notice(survivor, 'alice', 4);
  for (const tab of [page, second]) {
    await tab.waitForFunction(() => window.received.some((e) => e.data.n === 4), null, { timeout: 10000 });
  }
  assert.equal(await metric(survivor.base, 'tidings_subscribers'), 1, 'two tabs, one stream');
  assert.deepEqual(errors, []);
  assert.deepEqual(authorized, [], 'no request of the page carried an Authorization header');
  await context.close();
});
