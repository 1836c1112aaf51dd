// The whole path as users run it: headless Chromium, nginx with deploy/nginx/tidings.conf,
// three `tidings serve` on Redis. The page (the hub's own, served through nginx) holds three
// EventSources: a public topic, a private topic authorized by the token cookie, and a session
// stream. A publisher posts to the instances directly, round-robin. Midway the instance
// holding most of the browser's streams is killed (SIGKILL); the browser reconnects by itself
// through nginx to the others, resumes with Last-Event-ID, and its record must show every
// update exactly once, in order. A screenshot of the page receiving live updates goes to docs/page-nginx.png.
// Then a rolling restart: each instance in turn gets SIGTERM, drains (its streams close at
// random moments of the drain window, with a retry hint) and is started again on its port;
// the browser's streams move to the others without losing or repeating an update, and the
// reconnections are spread out in time and over the instances.
// Then a stream that has received nothing yet when its instance is killed: it opened with the
// head id as an `id:` line without data, so the browser resumes from the moment it subscribed
// and gets what was published while it was away.
// Last, the kit's HTTPS listener: HTTP/2, so one page holds ten streams on one origin where
// HTTP/1.1 gives it six.
//
// Run by .ci/run after `cargo test` (which builds target/debug/tidings), with nginx installed
// (.ci/services) and Redis at TIDINGS_TEST_REDIS or 127.0.0.1:6379.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startHub, token as mint, behindNginx, metric, root } from './harness.mjs';

const KEY = 'cluster-browser-test-key-of-some-length';
const REDIS = process.env.TIDINGS_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const PREFIX = `tidings-browser-${randomBytes(4).toString('hex')}`;
const PUBLIC = `https://example.com/news/${PREFIX}`;
const PRIVATE_TEMPLATE = `https://example.com/orders/${PREFIX}/{id}`;
const PRIVATE = `https://example.com/orders/${PREFIX}/7`;
const SESSION = `alice-${PREFIX}`;
const UPDATES = 24;
const DRAIN_SECS = 3;

let hubs = [];
let nginx;
let browser;
const token = (...args) => mint(KEY, ...args);

/** Instance `i` of the cluster, on `listen` (a free port when not given). */
function startInstance(i, listen) {
  return startHub(['--jwt-key', KEY, '--bus', REDIS, '--bus-prefix', PREFIX,
    '--instance-id', `${PREFIX}-${i}`, '--max-streams-per-address', '1000',
    '--drain-secs', `${DRAIN_SECS}`, ...(listen ? ['--listen', listen] : [])]);
}

let cluster;
before(async () => {
  cluster = await behindNginx(startInstance);
  ({ hubs, nginx, browser } = cluster);
});

after(() => cluster?.stop());

/** Streams each instance holds now (0 for one that is down). */
function held() {
  return Promise.all(hubs.map((h) => metric(h.base, 'tidings_subscribers').catch(() => 0)));
}

/** Waits (up to 20 s) until the instances hold `count` streams in all; returns each one's. */
async function holding(count, what) {
  const sum = (counts) => counts.reduce((a, b) => a + b, 0);
  for (let i = 0; i < 200 && sum(await held()) !== count; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const counts = await held();
  assert.equal(sum(counts), count, `${what}: ${counts}`);
  return counts;
}

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
  const before = await holding(4, "the page's four streams");

  const publisher = token('--publish', '*');
  let live = [...hubs];
  let killed;
  for (let n = 0; n < UPDATES; n++) {
    if (n === UPDATES / 2) {
      const victim = before.indexOf(Math.max(...before));
      hubs[victim].child.kill('SIGKILL');
      live = live.filter((h) => h !== hubs[victim]);
      killed = victim;
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
  await page.screenshot({ path: path.join(root, 'docs', 'page-nginx.png'), fullPage: true });
  await context.close();
  // The killed instance comes back on its port, for the next test.
  hubs[killed] = await startInstance(killed, hubs[killed].base.replace('http://', ''));
});

test('a rolling restart with SIGTERM moves every stream without loss, spread out', async () => {
  // Four browser contexts (each has its own six connections per host) of four streams each.
  const contexts = await Promise.all([0, 1, 2, 3].map(() => browser.newContext()));
  const topic = `${PUBLIC}/rolling`;
  const pages = [];
  for (const context of contexts) {
    await context.addCookies([{
      name: 'mercureAuthorization', value: token('--subscribe', topic),
      domain: new URL(nginx.base).hostname, path: '/', httpOnly: true, sameSite: 'Strict',
    }]);
    const page = await context.newPage();
    await page.goto(`${nginx.base}/healthz`);
    await page.evaluate((topic) => {
      window.streams = [];
      for (let s = 0; s < 4; s++) {
        const stream = { data: [], opens: [] };
        const source = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(topic)}`);
        source.onopen = () => stream.opens.push(Date.now());
        source.onmessage = (e) => stream.data.push(e.data);
        window.streams.push(stream);
      }
    }, topic);
    pages.push(page);
  }
  const streams = 16;
  // (Test 1's streams gone; a stream closed by a draining instance comes back after its retry
  // hint, up to 3 s, and Chromium's own delay.)
  const settled = () => holding(streams, 'the instances hold every stream');
  await settled();

  // Publish steadily, each update through the next instance that takes it.
  const publisher = token('--publish', '*');
  let published = 0;
  let publishing = true;
  const publishingDone = (async () => {
    let next = 0;
    while (publishing) {
      for (let tries = 0; tries < 6; tries++) {
        const hub = hubs[next++ % hubs.length];
        const ok = await fetch(`${hub.base}/.well-known/mercure`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${publisher}` },
          body: new URLSearchParams([['topic', topic], ['data', `${published}`]]),
        }).then((r) => r.ok, () => false);
        if (ok) { published += 1; break; }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();

  const moves = [];
  for (let i = 0; i < hubs.length; i++) {
    const heldBefore = await settled();
    const leaving = Date.now();
    const exited = new Promise((resolve) => hubs[i].child.on('exit', resolve));
    hubs[i].child.kill('SIGTERM');
    await exited;
    const heldAfter = await settled();
    moves.push({ instance: i, had: heldBefore[i], gained: heldAfter.map((n, j) => n - heldBefore[j]), leaving });
    hubs[i] = await startInstance(i, hubs[i].base.replace('http://', ''));
  }
  await new Promise((r) => setTimeout(r, 500));
  publishing = false;
  await publishingDone;

  const expected = Array.from({ length: published }, (_, n) => `${n}`);
  for (const page of pages) {
    await page.waitForFunction((n) => window.streams.every((s) => s.data.length >= n), published,
      { timeout: 15000 }).catch(() => {});
  }
  const all = (await Promise.all(pages.map((p) => p.evaluate(() => window.streams)))).flat();
  all.forEach((stream, s) => assert.deepEqual(stream.data, expected, `stream ${s}: every update once, in order`));
  assert.ok(published > 50, `the publisher kept going (${published} updates)`);

  // Every stream moved at least once (each instance was restarted), and each drained
  // instance's streams reopened at different moments of its drain window, on both others.
  const reopens = all.map((s) => s.opens.slice(1));
  assert.ok(reopens.every((r) => r.length >= 1), 'every stream reconnected');
  for (const move of moves.filter((m) => m.had >= 4)) {
    const others = move.gained.filter((_, j) => j !== move.instance);
    assert.ok(others.every((n) => n >= 1), `instance ${move.instance}'s ${move.had} streams went to both others: ${others}`);
    const times = reopens.flat().filter((t) => t >= move.leaving && t <= move.leaving + DRAIN_SECS * 1000 + 3000);
    const spread = Math.max(...times) - Math.min(...times);
    assert.ok(spread >= DRAIN_SECS * 1000 * 0.3, `instance ${move.instance}: reconnections over ${spread} ms, not at once`);
  }
  await Promise.all(contexts.map((c) => c.close()));
});

test('a stream that received nothing yet resumes from where it subscribed when its instance dies', async () => {
  const topic = `${PUBLIC}/quiet`;
  const publisher = token('--publish', '*');
  const publish = (hub, data) => post(hub, '/.well-known/mercure',
    new URLSearchParams([['topic', topic], ['data', data]]).toString(), 'application/x-www-form-urlencoded', publisher);
  // Published before the stream opens: not for it.
  await publish(hubs[0], 'before');
  const context = await browser.newContext();
  await context.addCookies([{
    name: 'mercureAuthorization', value: token('--subscribe', topic),
    domain: new URL(nginx.base).hostname, path: '/', httpOnly: true, sameSite: 'Strict',
  }]);
  const page = await context.newPage();
  await page.goto(`${nginx.base}/healthz`);
  const heldBefore = await held();
  const total = heldBefore.reduce((a, b) => a + b, 0);
  await page.evaluate((topic) => {
    window.quiet = { data: [], opens: 0 };
    const source = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(topic)}`);
    source.onopen = () => { window.quiet.opens += 1; };
    source.onmessage = (e) => window.quiet.data.push(e.data);
  }, topic);
  await page.waitForFunction(() => window.quiet.opens === 1, null, { timeout: 10000 });
  const heldAfter = await holding(total + 1, 'the quiet stream is open');
  const victim = heldAfter.findIndex((n, i) => n > heldBefore[i]);
  assert.ok(victim >= 0, `one instance gained the stream: ${heldBefore} -> ${heldAfter}`);
  hubs[victim].child.kill('SIGKILL');
  // Published at once, before the browser reconnects (its reconnection delay is seconds).
  const live = hubs.filter((_, i) => i !== victim);
  const sent = ['0', '1', '2', '3', '4'];
  for (const [n, data] of sent.entries()) await publish(live[n % live.length], data);
  await page.waitForFunction((n) => window.quiet.data.length >= n, sent.length, { timeout: 20000 }).catch(() => {});
  const quiet = await page.evaluate(() => window.quiet);
  assert.ok(quiet.opens >= 2, `the stream reconnected: ${JSON.stringify(quiet)}`);
  assert.deepEqual(quiet.data, sent, 'what was published while it was away, once, in order, and nothing from before');
  await context.close();
  hubs[victim] = await startInstance(victim, hubs[victim].base.replace('http://', ''));
});

test('over HTTPS the kit serves HTTP/2: one origin carries more than six streams of one page', async () => {
  const STREAMS = 10;
  const topic = `${PUBLIC}/h2`;
  const opened = async (base) => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    await context.addCookies([{
      name: 'mercureAuthorization', value: token('--subscribe', topic),
      domain: new URL(base).hostname, path: '/', httpOnly: true, sameSite: 'Strict',
    }]);
    const page = await context.newPage();
    await page.goto(`${base}/healthz`);
    await page.evaluate(({ topic, STREAMS }) => {
      window.h2 = { opens: 0, data: [] };
      for (let s = 0; s < STREAMS; s++) {
        const source = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(topic)}`);
        source.onopen = () => { window.h2.opens += 1; };
        source.onmessage = (e) => window.h2.data.push(e.data);
      }
    }, { topic, STREAMS });
    return { context, page };
  };
  // HTTP/1.1 first, to show what the test would catch: six connections per origin, the rest
  // of the page's streams wait.
  const plain = await opened(nginx.base);
  await new Promise((r) => setTimeout(r, 2000));
  assert.equal(await plain.page.evaluate(() => window.h2.opens), 6, 'HTTP/1.1: six streams per origin');
  await plain.context.close();

  const secure = await opened(nginx.tlsBase);
  await secure.page.waitForFunction((n) => window.h2.opens === n, STREAMS, { timeout: 10000 });
  const protocol = await secure.page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(protocol, 'h2');
  await post(hubs[1], '/.well-known/mercure', new URLSearchParams([['topic', topic], ['data', 'over h2']]).toString(),
    'application/x-www-form-urlencoded', token('--publish', '*'));
  await secure.page.waitForFunction((n) => window.h2.data.length === n, STREAMS, { timeout: 10000 });
  // The page's own requests are not held up behind the streams.
  const health = await secure.page.evaluate(() => fetch('/healthz').then((r) => r.status));
  assert.equal(health, 200);
  await secure.context.close();
});
