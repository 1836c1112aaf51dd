// The browser client (clients/js) in headless Chromium, through the nginx kit in front of
// three instances on Redis, over HTTP/1.1 and HTTP/2: a page that reloads while updates are
// published has each once, in order; an expired token is renewed and the stream resumes, a
// refused renewal ends it with an error the page sees; a resume from an id history lacks is a
// `gap` event; an instance SIGKILLed under the page: it resumes on another, nothing lost. Five
// tabs share one stream at the hub through a reload, the leader tab's close and an instance's
// SIGKILL, each with its own updates once. The Node publisher of the same package publishes,
// and retries a 504 with one id.
//
// The React hooks mount, receive and unmount without leaving a stream open at the hub.
//
// Run by .ci/run after `cargo test` and the client's build (`npm run build` in clients/js).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { startHub, token as mint, behindNginx, metric, root } from './harness.mjs';
import { Publisher, TidingsError } from '../../clients/js/dist/publisher.js';

const KEY = 'client-browser-test-key-of-some-length';
const REDIS = process.env.TIDINGS_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const PREFIX = `tidings-client-${randomBytes(4).toString('hex')}`;
const DIST = path.join(root, 'clients', 'js', 'dist');

let hubs = [];
let nginx;
let browser;
const token = (...args) => mint(KEY, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Instance `i`; `at` (a killed one's base URL): again on its address, where nginx sends. */
function startInstance(i, at) {
  const listen = at ? ['--listen', at.replace('http://', '')] : [];
  return startHub(['--jwt-key', KEY, '--bus', REDIS, '--bus-prefix', PREFIX, '--instance-id', `${PREFIX}-${i}`,
    '--max-streams-per-address', '1000', '--anonymous', '--jwt-leeway', '0', ...listen]);
}

let cluster;
before(async () => {
  cluster = await behindNginx(startInstance);
  ({ hubs, nginx, browser } = cluster);
});

after(() => cluster?.stop());

// The page the tests open: one subscription to `topic`, whose updates it keeps in
// sessionStorage as they arrive (so that what it received survives its reloads); a token from
// the test (`window.mintToken`) when `token` is asked for.
const PAGE = `<!doctype html><meta charset=utf-8><title>client</title><script type=module>
import { Tidings } from '/tidings-client/index.js';
const params = new URLSearchParams(location.search);
const kept = (name) => JSON.parse(sessionStorage.getItem(name) || '[]');
const keep = (name, value) => { const list = kept(name); list.push(value); sessionStorage.setItem(name, JSON.stringify(list)); };
const getToken = params.has('token') ? (context) => window.mintToken(context.renew) : undefined;
const tidings = new Tidings({ getToken, reconnectMs: 200 });
if (params.has('resumeFrom')) sessionStorage.setItem('resume', params.get('resumeFrom'));
const sub = tidings.subscribe(params.get('topic'), { key: 'resume' });
sub.on('update', (u) => keep('got', u.id));
sub.on('gap', (g) => keep('gaps', g));
sub.on('state', (s) => keep('states', s));
sub.on('error', (e) => keep('errors', { status: e.status, code: e.code, message: e.message }));
window.subscription = sub;
</script>`;

/** A page of `context` with the client served at /tidings-client/ of `origin`. */
async function clientPage(context, origin) {
  const page = await context.newPage();
  await page.route(`${origin}/tidings-client/**`, (route) => {
    const name = new URL(route.request().url()).pathname.replace('/tidings-client/', '');
    if (name === 'page.html') return route.fulfill({ contentType: 'text/html', body: PAGE });
    if (!/^[a-z]+\.js$/.test(name)) return route.fulfill({ status: 404, body: '' });
    return route.fulfill({ contentType: 'text/javascript', body: readFileSync(path.join(DIST, name)) });
  });
  return page;
}

/** What the page kept under `name` (its received ids: `got`). */
const kept = (page, name) => page.evaluate((n) => JSON.parse(sessionStorage.getItem(n) || '[]'), name);

/** Waits (up to `ms`) until `check()` is true. */
async function until(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

const publisher = (i = 0) => new Publisher({ hub: hubs[i].base, token: token('--publish', '*') });

for (const [protocol, originOf] of [['HTTP/1.1', () => nginx.base], ['HTTP/2', () => nginx.tlsBase]]) {
  test(`${protocol}: a page reloaded three times while 150 updates are published has each once, in order`, async () => {
    const origin = originOf();
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await clientPage(context, origin);
    const topic = `https://example.com/reload/${PREFIX}/${protocol}`;
    await page.goto(`${origin}/tidings-client/page.html?topic=${encodeURIComponent(topic)}`);
    await until('the stream open', async () => (await kept(page, 'states')).includes('open'));
    const sent = [];
    const publishing = (async () => {
      for (let n = 0; n < 150; n++) {
        const { id } = await publisher(n % 3).publish({ topics: [topic], data: `${n}` });
        sent.push(id);
        await sleep(15);
      }
    })();
    for (const wait of [400, 500, 600]) {
      await sleep(wait);
      await page.reload();
    }
    await publishing;
    await until('every update received', async () => (await kept(page, 'got')).length >= sent.length);
    await sleep(300);
    assert.deepEqual(await kept(page, 'got'), sent);
    assert.deepEqual(await kept(page, 'gaps'), []);
    await context.close();
  });
}

// Five tabs of one browser, each subscribed to a topic of its own, opened one after another
// while updates to all five are published: they hold one stream at the hub (the first tab
// leads), a follower reloads (the leader reopens from its older position, the others skip what
// they had), the leader tab is closed (another takes over and resumes), the instance holding
// the stream is SIGKILLed. Each tab has every update of its topic from its start on, once, in
// order.
for (const [protocol, originOf] of [['HTTP/1.1', () => nginx.base], ['HTTP/2', () => nginx.tlsBase]]) {
  test(`${protocol}: five tabs hold one stream; a reload, the leader closed and an instance killed lose and repeat nothing`, async () => {
    const origin = originOf();
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    // (A SIGKILLed child's exit is seen a moment later: the one killed is left out at once.)
    let killed = null;
    const live = () => hubs.filter((h, i) => i !== killed && h.child.exitCode === null && h.child.signalCode === null);
    const streams = async () => Promise.all(hubs.map((h) => (live().includes(h) ? metric(h.base, 'tidings_subscribers') : 0)));
    const held = async () => (await streams()).reduce((a, b) => a + b, 0);
    // The streams of the tests before end at the hub a moment after their pages closed: count
    // from none (a count taken while one was still ending made this test wait for 2 forever).
    await until('the streams of earlier tests ended', async () => (await held()) === 0);
    const topics = [0, 1, 2, 3, 4].map((k) => `https://example.com/tabs/${PREFIX}/${protocol}/${k}`);
    const tabs = [];
    const open = async (k) => {
      const page = await clientPage(context, origin);
      await page.goto(`${origin}/tidings-client/page.html?topic=${encodeURIComponent(topics[k])}`);
      await until(`tab ${k} open`, async () => (await kept(page, 'states')).includes('open'));
      tabs[k] = page;
    };
    await open(0);
    const sent = topics.map(() => []);
    let publishing = true;
    const published = (async () => {
      for (let n = 0; publishing; n++) {
        const k = n % 5;
        const id = `urn:uuid:${randomUUID()}`;
        // A publish to the instance being killed goes again, with its id, to another.
        for (let attempt = 0; ; attempt++) {
          const by = live()[(n + attempt) % live().length];
          try {
            await new Publisher({ hub: by.base, token: token('--publish', '*'), attempts: 1 })
              .publish({ topics: [topics[k]], data: `${n}`, id });
            break;
          } catch (e) {
            if (attempt > 3) throw e;
          }
        }
        sent[k].push(id);
        await sleep(10);
      }
    })();
    for (const k of [1, 2, 3, 4]) await open(k);
    await until('one stream for five tabs', async () => (await held()) === 1);
    await sleep(300);
    await tabs[2].reload();
    await sleep(500);
    // How many each topic had when the leader closed, and when the instance was killed.
    const atClose = sent.map((list) => list.length);
    await tabs[0].close();
    await until('another tab leads, one stream', async () => (await held()) === 1);
    await sleep(500);
    // (Looked for until found: the new leader's stream may be reopening at that moment, and
    // then no instance holds it for a few milliseconds.)
    let holder = -1;
    await until('the instance holding the stream', async () => {
      holder = (await streams()).findIndex((c) => c > 0);
      return holder >= 0;
    });
    killed = holder;
    const atKill = sent.map((list) => list.length);
    hubs[holder].child.kill('SIGKILL');
    try {
      await sleep(1500);
      publishing = false;
      await published;
      for (const k of [1, 2, 3, 4]) {
        await until(`tab ${k} has its last update`, async () => (await kept(tabs[k], 'got')).at(-1) === sent[k].at(-1));
      }
      await sleep(300);
      for (const k of [1, 2, 3, 4]) {
        const got = await kept(tabs[k], 'got');
        const from = sent[k].indexOf(got[0]);
        assert.ok(from >= 0, `tab ${k}: its first update is one sent to its topic`);
        assert.deepEqual(got, sent[k].slice(from), `tab ${k}: every update of its topic from its start, once, in order`);
        assert.ok(from < atClose[k] && sent[k].length > atKill[k],
          `tab ${k}: updates from before the leader closed to after the kill (${from}, ${atClose[k]}, ${atKill[k]}, ${sent[k].length})`);
        assert.deepEqual(await kept(tabs[k], 'gaps'), [], `tab ${k}: no gap`);
      }
      assert.equal(await held(), 1, 'still one stream');
    } finally {
      await context.close();
      // Back on its address, where nginx sends, for the tests that follow.
      hubs[holder] = await startInstance(holder, hubs[holder].base);
    }
  });
}

test('a tab whose selector the hub refuses gets the error; the tab it shares the stream with goes on', async () => {
  const context = await browser.newContext();
  const good = `https://example.com/refused/${PREFIX}`;
  const open = async (topic) => {
    const page = await clientPage(context, nginx.base);
    await page.goto(`${nginx.base}/tidings-client/page.html?topic=${encodeURIComponent(topic)}`);
    return page;
  };
  const leader = await open(good);
  await until('the first tab open', async () => (await kept(leader, 'states')).includes('open'));
  const refused = await open('https://example.com/{a b}');
  await until('the refused tab told', async () => (await kept(refused, 'errors')).length === 1);
  const [error] = await kept(refused, 'errors');
  assert.equal(error.status, 400, JSON.stringify(error));
  assert.equal((await kept(refused, 'states')).at(-1), 'closed');
  const { id } = await publisher().publish({ topics: [good], data: 'still here' });
  await until('the other tab still receives', async () => (await kept(leader, 'got')).includes(id));
  assert.ok(!(await kept(leader, 'states')).includes('closed'));
  assert.deepEqual(await kept(leader, 'errors'), []);
  await context.close();
});

for (const [protocol, originOf] of [['HTTP/1.1', () => nginx.base], ['HTTP/2', () => nginx.tlsBase]]) {
  test(`${protocol}: an expired token is renewed and the stream resumes; a refused renewal ends it with an error`, async () => {
    const origin = originOf();
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await clientPage(context, origin);
    const topic = `https://example.com/private/${PREFIX}/${protocol}`;
    let asked = { fresh: 0, renew: 0 };
    let refuse = false;
    // A token that lives 2 s; the page caches it as an app would, and is asked to renew.
    let cached = null;
    await page.exposeFunction('mintToken', (renew) => {
      asked[renew ? 'renew' : 'fresh'] += 1;
      if (renew && refuse) return null;
      if (renew || !cached) cached = token('--subscribe', topic, '--ttl', '2');
      return cached;
    });
    await page.goto(`${origin}/tidings-client/page.html?token&topic=${encodeURIComponent(topic)}`);
    await until('the stream open', async () => (await kept(page, 'states')).includes('open'));
    const sent = [];
    for (let n = 0; n < 40; n++) {
      sent.push((await publisher(n % 3).publish({ topics: [topic], data: `${n}`, private: true })).id);
      await sleep(100);
    }
    await until('every private update received', async () => (await kept(page, 'got')).length >= sent.length);
    assert.deepEqual(await kept(page, 'got'), sent, 'across the renewals, each once, in order');
    assert.ok(asked.renew >= 1, `asked to renew: ${JSON.stringify(asked)}`);
    assert.deepEqual(await kept(page, 'errors'), []);
    refuse = true;
    await until('a refused renewal reported', async () => (await kept(page, 'errors')).length === 1, 10000);
    const [error] = await kept(page, 'errors');
    assert.equal(error.code, 'token_refused');
    assert.equal((await kept(page, 'states')).at(-1), 'closed');
    await context.close();
  });

  test(`${protocol}: a resume from an id history lacks reaches the page as a gap event, then what history holds`, async () => {
    const origin = originOf();
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await clientPage(context, origin);
    const topic = `https://example.com/gap/${PREFIX}/${protocol}`;
    const { id } = await publisher().publish({ topics: [topic], data: 'kept' });
    const unknown = 'urn:uuid:00000000-0000-4000-8000-000000000000';
    await page.goto(`${origin}/tidings-client/page.html?topic=${encodeURIComponent(topic)}&resumeFrom=${unknown}`);
    await until('the gap told', async () => (await kept(page, 'gaps')).length === 1);
    const [gap] = await kept(page, 'gaps');
    assert.equal(gap.lastEventId, unknown);
    await until('history replayed', async () => (await kept(page, 'got')).includes(id));
    await context.close();
  });
}

test('an instance SIGKILLed under the page: it resumes on another, nothing lost or repeated', async () => {
  const context = await browser.newContext();
  const page = await clientPage(context, nginx.base);
  const topic = `https://example.com/kill/${PREFIX}`;
  await page.goto(`${nginx.base}/tidings-client/page.html?topic=${encodeURIComponent(topic)}`);
  await until('the stream open', async () => (await kept(page, 'states')).includes('open'));
  const counts = await Promise.all(hubs.map((h) => metric(h.base, 'tidings_subscribers')));
  const holder = counts.findIndex((c) => c > 0);
  assert.ok(holder >= 0, `an instance holds the stream: ${counts}`);
  const other = (holder + 1) % 3;
  const sent = [];
  for (let n = 0; n < 60; n++) {
    if (n === 20) hubs[holder].child.kill('SIGKILL');
    sent.push((await publisher(other).publish({ topics: [topic], data: `${n}` })).id);
    await sleep(30);
  }
  await until('every update received', async () => (await kept(page, 'got')).length >= sent.length);
  await sleep(300);
  assert.deepEqual(await kept(page, 'got'), sent);
  hubs[holder] = await startInstance(holder, hubs[holder].base);
  await context.close();
});

test('the Node publisher: Mercure and session events, typed errors, a 504 retried with one id', async () => {
  const hub = hubs.find((h) => h.child.exitCode === null);
  // A hub behind a proxy that loses the first answer: the publish is stored, answered 504, retried.
  let calls = 0;
  const flaky = async (url, init) => {
    calls += 1;
    const answer = await fetch(url, init);
    if (calls === 1) return new Response(JSON.stringify({ error: 'publish_outcome_unknown', detail: 'lost' }), { status: 504 });
    return answer;
  };
  const topic = `https://example.com/node/${PREFIX}`;
  const stream = await fetch(`${hub.base}/.well-known/mercure?topic=${encodeURIComponent(topic)}`,
    { headers: { accept: 'text/event-stream' } });
  const published = await new Publisher({ hub: hub.base, token: token('--publish', '*'), fetch: flaky, retryDelayMs: 10 })
    .publish({ topics: [topic], data: 'once' });
  assert.equal(published.attempts, 2);
  const second = await publisher().publish({ topics: [topic], data: 'after' });
  // The stream holds the retried update once, then the next.
  const reader = stream.body.getReader();
  let text = '';
  while (!text.includes(second.id)) text += new TextDecoder().decode((await reader.read()).value);
  await reader.cancel();
  assert.equal(text.split(`id: ${published.id}`).length - 1, 1, text);
  // Session events; and what the hub refuses arrives as a TidingsError with its code.
  const sent = await publisher().toSessions({ sessionIds: ['alice', 'bob'], eventName: 'chat', payload: { text: 'hi' } });
  assert.match(sent.id, /^urn:uuid:/);
  await assert.rejects(
    new Publisher({ hub: hub.base, token: token('--publish', 'https://example.com/other') }).publish({ topics: [topic] }),
    (e) => e instanceof TidingsError && e.status === 403 && e.code === 'forbidden',
  );
  await assert.rejects(publisher().toSessions({ eventName: 'chat', payload: 1 }),
    (e) => e instanceof TidingsError && e.status === 400 && e.code === 'missing_session');
});

// A React page built here with the package's own esbuild, React and react-dom (its dev
// dependencies) from dist/: a component with useTopic, mounted and unmounted by the test.
const REACT_APP = `
import { createElement as h, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { Tidings } from './dist/index.js';
import { TidingsProvider, useTopic } from './dist/react.js';
const topic = new URLSearchParams(location.search).get('topic');
const tidings = new Tidings({ storage: null });
window.got = [];
function Stock() {
  const { last, state } = useTopic(topic, { onUpdate: (u) => window.got.push(u.id) });
  return h('p', { id: 'stock', 'data-state': state }, last ? last.data : '-');
}
function App() {
  const [shown, setShown] = useState(true);
  window.toggle = () => setShown((s) => !s);
  return h(TidingsProvider, { client: tidings }, shown ? h(Stock) : h('p', { id: 'none' }, 'unmounted'));
}
createRoot(document.getElementById('root')).render(h(App));
`;

test('the React hook: mounted it receives, unmounted its stream is gone at the hub', async () => {
  const clientDir = path.join(root, 'clients', 'js');
  const { build } = createRequire(path.join(clientDir, 'package.json'))('esbuild');
  const bundled = await build({
    stdin: { contents: REACT_APP, resolveDir: clientDir, loader: 'js' },
    bundle: true, write: false, format: 'esm', define: { 'process.env.NODE_ENV': '"production"' },
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.route(`${nginx.base}/react-app/**`, (route) => {
    if (route.request().url().includes('app.js')) {
      return route.fulfill({ contentType: 'text/javascript', body: bundled.outputFiles[0].text });
    }
    return route.fulfill({ contentType: 'text/html', body: '<!doctype html><div id=root></div><script type=module src=/react-app/app.js></script>' });
  });
  const live = hubs.filter((h) => h.child.exitCode === null && h.child.signalCode === null);
  const held = async () => (await Promise.all(live.map((h) => metric(h.base, 'tidings_subscribers')))).reduce((a, b) => a + b, 0);
  // (Counted from none: see the five tabs.)
  await until('the streams of earlier tests ended', async () => (await held()) === 0);
  const topic = `https://example.com/react/${PREFIX}`;
  await page.goto(`${nginx.base}/react-app/page.html?topic=${encodeURIComponent(topic)}`);
  await page.waitForSelector('#stock[data-state=open]');
  await until('the hook\'s stream held', async () => (await held()) === 1);
  const sent = [];
  for (const data of ['3', '2', '1']) sent.push((await publisher().publish({ topics: [topic], data })).id);
  await page.waitForFunction(() => document.getElementById('stock')?.textContent === '1');
  assert.deepEqual(await page.evaluate(() => window.got), sent);
  await page.evaluate(() => window.toggle());
  await page.waitForSelector('#none');
  await until('the stream closed at the hub on unmount', async () => (await held()) === 0);
  // Mounted again: a new stream; the page closed: none.
  await page.evaluate(() => window.toggle());
  await page.waitForSelector('#stock[data-state=open]');
  await until('a stream again', async () => (await held()) === 1);
  await context.close();
  await until('none once the page is gone', async () => (await held()) === 0);
});
