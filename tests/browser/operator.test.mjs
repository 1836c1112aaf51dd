// Operating a cluster from the browser: three `tidings serve` on Redis with an admin key and
// the operator page on loopback, and the example application (examples/session-app) behind
// nginx on two of them, told the admin key.
// - Alice logs out in the application: the application asks Tidings to end her streams, her
//   page (the browser client) gets the final `tidings-disconnect` event and stays away, and a new EventSource
//   cannot get back in (the application's callback no longer knows her).
// - The operator page shows the three instances, finds Bob's session, disconnects it (his page
//   stops), and publishes to a topic that another page — the hub's own page at / — receives.
//   A screenshot of the operator page goes to docs/page-admin.png.
//
// Run by .ci/run after `cargo test`, with nginx, Redis and the example's requirements installed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startHub, token as mint, launchBrowser, startAppNginx, freePort, root } from './harness.mjs';

const KEY = 'operator-test-key-of-some-length-at-least';
const ADMIN_KEY = randomBytes(32).toString('hex');
const REDIS = process.env.TIDINGS_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const PREFIX = `tidings-operator-${randomBytes(4).toString('hex')}`;
const TOPIC = `https://example.com/status/${PREFIX}`;
const token = (...args) => mint(KEY, ...args);

let hubs = [];
let app;
let nginx;
let browser;

before(async () => {
  const appPort = await freePort();
  const appUrl = `http://127.0.0.1:${appPort}`;
  for (let i = 0; i < 3; i++) {
    hubs.push(await startHub(['--jwt-key', KEY, '--bus', REDIS, '--bus-prefix', PREFIX,
      '--instance-id', `${PREFIX}-${i}`, '--admin-key', ADMIN_KEY, '--admin-page', 'loopback',
      '--cluster-heartbeat', '1', '--auth-url', `${appUrl}/tidings/auth`]));
  }
  app = spawn('python3', [path.join(root, 'examples', 'session-app', 'app.py'), '--port', `${appPort}`], {
    env: {
      ...process.env,
      TIDINGS_URL: hubs[2].base,
      TIDINGS_PUBLISHER_TOKEN: token('--publish', 'urn:tidings:session:{id}'),
      TIDINGS_ADMIN_KEY: ADMIN_KEY,
      APP_SECRET: 'operator-test-app-secret',
    },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  for (let i = 0; !(await fetch(`${appUrl}/online`).then((r) => r.ok, () => false)); i++) {
    assert.ok(i < 100 && app.exitCode === null, 'the example app starts');
    await new Promise((r) => setTimeout(r, 100));
  }
  nginx = await startAppNginx([hubs[0].base, hubs[1].base], appUrl);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  nginx?.stop();
  app?.kill('SIGKILL');
  for (const hub of hubs) hub.child.kill('SIGKILL');
});

/** A page of the example app, logged in as `name`, its stream open. */
async function loggedIn(name, password) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${nginx.base}/`);
  await page.fill('input[name=name]', name);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/login"] button')]);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open', null, { timeout: 10000 });
  return page;
}

/** Where `session` is online, as the admin API answers. */
async function presence(session) {
  const res = await fetch(`${hubs[0].base}/admin/presence`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
    body: JSON.stringify({ sessionIds: [session] }),
  });
  assert.equal(res.status, 200);
  return (await res.json()).sessions[0];
}

test('a logout ends the user\'s stream for good, through the application', async () => {
  const page = await loggedIn('alice', 'wonderland');
  // (Redis's registry is written a moment after the stream opens.)
  for (let i = 0; !(await presence('alice')).connected; i++) {
    assert.ok(i < 50, 'alice is online');
    await new Promise((r) => setTimeout(r, 100));
  }
  await page.click('#logout button');
  await page.waitForFunction(() => window.disconnected !== undefined, null, { timeout: 5000 });
  assert.deepEqual(await page.evaluate(() => window.disconnected), { reason: 'logged out', reconnect: false });
  assert.equal(await page.textContent('#status'), 'disconnected: logged out');
  // The stream may end before the logout's answer (which clears the session cookie) reaches
  // the page: the application asks Tidings to end it first. Its cookie is signed, not looked
  // up, so until that answer arrives the page would still be logged in.
  await page.waitForFunction(() => document.body.textContent.includes('Logged out.'), null, { timeout: 5000 });
  for (let i = 0; (await presence('alice')).connected; i++) {
    assert.ok(i < 50, 'alice is offline on every instance');
    await new Promise((r) => setTimeout(r, 100));
  }
  // Coming back is refused: the application's callback no longer knows her.
  const state = await page.evaluate(() => new Promise((resolve) => {
    const again = new EventSource('/sse/event-stream');
    again.onopen = () => resolve('open');
    again.onerror = () => resolve(again.readyState === EventSource.CLOSED ? 'closed' : 'retrying');
  }));
  assert.equal(state, 'closed');
  await page.context().close();
});

test('the operator page shows the cluster, disconnects a session and publishes', async () => {
  const bob = await loggedIn('bob', 'builder');
  for (let i = 0; !(await presence('bob')).connected; i++) {
    assert.ok(i < 50, 'bob is online');
    await new Promise((r) => setTimeout(r, 100));
  }
  // Another page, the hub's own, follows a public topic.
  const watching = await browser.newContext();
  await watching.addCookies([{
    name: 'mercureAuthorization', value: token('--subscribe', TOPIC),
    domain: '127.0.0.1', path: '/', httpOnly: true, sameSite: 'Strict',
  }]);
  const watcher = await watching.newPage();
  await watcher.goto(`${hubs[0].base}/?topic=${encodeURIComponent(TOPIC)}&autosubscribe=1`);
  await watcher.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 10000 });

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const operator = await context.newPage();
  const errors = [];
  operator.on('pageerror', (e) => errors.push(e.message));
  await operator.goto(`${hubs[2].base}/admin/`);
  await operator.fill('#key', ADMIN_KEY);
  await operator.click('#key-form button');
  await operator.waitForFunction(() => document.querySelectorAll('#instances tr').length === 3, null, { timeout: 10000 });
  const shown = await operator.$$eval('#instances tr', (rows) => rows.map((r) => r.dataset.instance).sort());
  assert.deepEqual(shown, hubs.map((_, i) => `${PREFIX}-${i}`));

  // Find Bob's session and end it.
  await operator.fill('#find-what', 'bob, nobody');
  await operator.click('#find button');
  await operator.waitForSelector('tr[data-session="bob"] button.danger');
  assert.equal(await operator.textContent('tr[data-session="bob"] td:nth-child(2)'), 'yes');
  assert.equal(await operator.textContent('tr[data-session="nobody"] td:nth-child(2)'), 'no');
  await operator.click('tr[data-session="bob"] button.danger');
  await bob.waitForFunction(() => window.disconnected !== undefined, null, { timeout: 5000 });
  assert.equal(await bob.evaluate(() => window.disconnected.reconnect), false);
  await operator.waitForFunction(() => document.getElementById('sessions-status').textContent.includes('1 stream(s) ended'),
    null, { timeout: 5000 });

  // The topics, and a publish the watching page receives.
  await operator.click('#topics-form button');
  await operator.waitForFunction((t) => document.getElementById('topics').textContent.includes(t), TOPIC, { timeout: 5000 });
  await operator.click(`#topics tr:has-text("${TOPIC}") button`);
  await operator.waitForFunction(() => document.getElementById('tail').textContent.includes('following'), null, { timeout: 5000 });
  await operator.fill('#pub-topic', TOPIC);
  await operator.fill('#pub-data', 'all systems go');
  await operator.click('#publish button');
  await watcher.waitForFunction(() => document.body.textContent.includes('all systems go'), null, { timeout: 5000 });
  // The operator's own tail saw it too.
  await operator.waitForFunction(() => document.getElementById('tail').textContent.includes('all systems go'), null, { timeout: 5000 });
  await operator.waitForFunction(() => document.getElementById('publish-status').textContent.startsWith('published'));
  assert.deepEqual(errors, []);
  await operator.screenshot({ path: path.join(root, 'docs', 'page-admin.png'), fullPage: true });
  await context.close();
});
