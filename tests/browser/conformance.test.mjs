// The scenarios of Mercure's own conformance suites (their "Publish update" datasets), the
// classic one and the 1.0 one, re-written for node's test runner and run against a real
// `tidings serve`, as a Mercure hub is run for them: the default development key, anonymous
// subscribers, publishers with a token that may publish everywhere — a classic
// `{"mercure": {"publish": ["*"]}}` token, or for 1.0 an RFC 9068 access token (`typ: at+jwt`,
// issuer `https://localhost`, audience `https://localhost/.well-known/mercure`, Mercure
// authorization details) for a hub started with that issuer and audience. Each scenario,
// inside the page at `/` of the hub: an EventSource subscribes to the selectors (classic:
// `topic=`; 1.0: `match=`, or `match_urlpattern=` for a pattern with `/:`); once it is open,
// the page POSTs an update with a custom id and a multi-line payload (as `fetch` sends a
// URLSearchParams body); the update must (or must not) arrive within 2 s as a `message` event
// with that id and payload; a received update's publish answer is `200 text/plain` carrying
// the id. Then a Symfony-style 1.0 app's cookie and token, in Chromium.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, createHmac } from 'node:crypto';
import http from 'node:http';
import { startHub, token, launchBrowser, freePort } from './harness.mjs';

const MERCURE_DEV_KEY = '!ChangeThisMercureHubJWTSecretKey!';
const rnd = () => randomBytes(20).toString('hex');
const r = Array.from({ length: 5 }, rnd);

const classic = [
  { name: 'raw string', received: true, topics: [r[0]], selectors: [r[0]] },
  { name: 'multiple topics', received: true, topics: [rnd(), r[1]], selectors: [r[1]] },
  { name: 'multiple topic selectors', received: true, topics: [r[2]], selectors: ['foo', r[2]] },
  { name: 'URI', received: true, topics: [`https://example.net/foo/${r[3]}`], selectors: [`https://example.net/foo/${r[3]}`] },
  { name: 'URI template', received: true, topics: [`https://example.net/foo/${r[4]}`], selectors: ['https://example.net/foo/{random}'] },
  { name: 'nonmatching raw string', received: false, topics: ['will-not-match}'], selectors: ['another-name'] },
  { name: 'nonmatching URI', received: false, topics: ['https://example.net/foo/will-not-match}'], selectors: ['https://example.net/foo/another-name'] },
  { name: 'nonmatching URI template', received: false, topics: ['https://example.net/foo/will-not-match}'], selectors: ['https://example.net/bar/{var}'] },
  // The suite reuses the ids of the public scenarios for the private ones: a Mercure hub
  // accepts an id twice.
  { name: 'private raw string', received: false, private: true, topics: [r[0]], selectors: [r[0]] },
  { name: 'private URI', received: false, private: true, topics: [`https://example.net/foo/${r[3]}`], selectors: [`https://example.net/foo/${r[3]}`] },
  { name: 'private URI template', received: false, private: true, topics: [`https://example.net/foo/${r[4]}`], selectors: ['https://example.net/foo/{random}'] },
];

const s = Array.from({ length: 4 }, rnd);
const v1 = [
  { name: 'raw string', received: true, topics: [s[0]], selectors: [s[0]] },
  { name: 'multiple topic selectors', received: true, topics: [s[1]], selectors: ['foo', s[1]] },
  { name: 'URI', received: true, topics: [`https://example.net/foo/${s[2]}`], selectors: [`https://example.net/foo/${s[2]}`] },
  { name: 'URL pattern', received: true, topics: [`https://example.net/foo/${s[3]}`], selectors: ['https://example.net/foo/:random'] },
  { name: 'nonmatching raw string', received: false, topics: ['will-not-match}'], selectors: ['another-name'] },
  { name: 'nonmatching URI', received: false, topics: ['https://example.net/foo/will-not-match}'], selectors: ['https://example.net/foo/another-name'] },
  { name: 'nonmatching URL pattern', received: false, topics: ['https://example.net/foo/will-not-match}'], selectors: ['https://example.net/bar/:var'] },
  { name: 'private raw string', received: false, private: true, topics: [s[0]], selectors: [s[0]] },
  { name: 'private URI', received: false, private: true, topics: [`https://example.net/foo/${s[2]}`], selectors: [`https://example.net/foo/${s[2]}`] },
  { name: 'private URL pattern', received: false, private: true, topics: [`https://example.net/foo/${s[3]}`], selectors: ['https://example.net/foo/:random'] },
];

/** An HS256 JWT with this header and payload. */
function jwt(header, payload, key) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const unsigned = `${part(header)}.${part(payload)}`;
  return `${unsigned}.${createHmac('sha256', key).update(unsigned).digest('base64url')}`;
}

const MERCURE_DETAIL = 'https://mercure.rocks/authorization-detail';
const v1Publisher = jwt({ alg: 'HS256', typ: 'at+jwt' }, {
  iss: 'https://localhost',
  aud: 'https://localhost/.well-known/mercure',
  exp: 4102444800,
  authorization_details: [
    { type: MERCURE_DETAIL, actions: ['publish'], topics: [{ match: '*' }] },
    { type: MERCURE_DETAIL, actions: ['subscribe'], topics: [{ match: '*' }] },
  ],
}, MERCURE_DEV_KEY);

let browser;
let page;

before(async () => {
  browser = await launchBrowser();
  page = await browser.newPage();
});

after(async () => {
  await browser?.close();
});

/** The scenarios of one suite against a hub of its own. */
function suite(name, { scenarios, hubArgs, publisher, selectorParam }) {
  describe(name, () => {
    let hub;
    let base;
    let publisherToken;

    before(async () => {
      ({ child: hub, base } = await startHub(['--jwt-key', MERCURE_DEV_KEY, '--anonymous', ...hubArgs]));
      publisherToken = publisher();
    });

    after(() => {
      hub?.kill('SIGKILL');
    });

    for (const scenario of scenarios) {
      test(scenario.name, async () => {
        await page.goto(`${base}/`);
        const id = `id-${JSON.stringify(scenario.topics)}`;
        const query = scenario.selectors.map((selector) => [selectorParam(selector), selector]);
        const outcome = await runScenario(scenario, id, query, publisherToken);
        assert.equal(outcome.received, scenario.received, JSON.stringify(outcome));
        assert.equal(outcome.status, 200, outcome.body);
        if (scenario.received) {
          assert.match(outcome.contentType, /^text\/plain(?:$|;.*)/);
          assert.equal(outcome.body, id, 'the custom id is used');
        }
      });
    }
  });
}

suite('classic', {
  scenarios: classic,
  hubArgs: [],
  publisher: () => token(MERCURE_DEV_KEY, '--publish', '*', '--subscribe', '*'),
  selectorParam: () => 'topic',
});

suite('1.0', {
  scenarios: v1,
  hubArgs: ['--jwt-issuer', 'https://localhost', '--jwt-audience', 'https://localhost/.well-known/mercure'],
  publisher: () => v1Publisher,
  selectorParam: (selector) => (selector.includes('/:') ? 'match_urlpattern' : 'match'),
});

// A Symfony app with `protocol_version: 1.0` (MercureBundle): its controller mints an access
// token as symfony/mercure's factory does (typ at+jwt; iss, sub, client_id, aud the hub's
// public URL, iat, jti, exp; an authorization detail per grant) and sets it in the
// `__Secure-mercure_access_token` cookie (Secure, HttpOnly, SameSite=Strict, Path the hub's
// path); its page opens an EventSource with credentials to the hub on another port of the
// same host, and must receive the private updates its grant allows, and no other.
describe('a Symfony-style Mercure 1.0 app', () => {
  test('its cookie and access token receive the private updates the grant allows', async () => {
    const APP_SECRET = 'a-symfony-app-secret-of-32-bytes!';
    const [hubPort, appPort] = [await freePort(), await freePort()];
    const hubUrl = `http://127.0.0.1:${hubPort}/.well-known/mercure`;
    const appOrigin = `http://127.0.0.1:${appPort}`;
    const issuer = 'https://shop.example';
    const { child: hub } = await startHub([
      '--listen', `127.0.0.1:${hubPort}`, '--jwt-key', APP_SECRET,
      '--jwt-issuer', issuer, '--jwt-audience', hubUrl, '--cors-origin', appOrigin,
    ]);
    const now = Math.floor(Date.now() / 1000);
    const minted = (details) => jwt({ alg: 'HS256', typ: 'at+jwt' }, {
      iss: issuer, sub: 'alice', client_id: 'shop', aud: hubUrl,
      iat: now, jti: randomBytes(16).toString('hex'), exp: now + 3600,
      authorization_details: details,
    }, APP_SECRET);
    const subscriberToken = minted([{
      type: MERCURE_DETAIL, actions: ['subscribe'],
      topics: [{ match: 'https://shop.example/orders/:id', match_type: 'urlpattern' }],
      payload: { user: 'alice' },
    }]);
    const publisherToken = minted([{ type: MERCURE_DETAIL, actions: ['publish'], topics: [{ match: '*' }] }]);
    const app = http.createServer((req, res) => {
      res.setHeader('Set-Cookie', `__Secure-mercure_access_token=${subscriberToken}; Path=/.well-known/mercure; Secure; HttpOnly; SameSite=Strict`);
      res.setHeader('Content-Type', 'text/html');
      res.end('<!doctype html><title>shop</title><p>orders</p>');
    });
    await new Promise((resolve) => app.listen(appPort, '127.0.0.1', resolve));
    try {
      const context = await browser.newContext();
      const shop = await context.newPage();
      await shop.goto(`${appOrigin}/`);
      assert.deepEqual((await context.cookies(hubUrl)).map((c) => [c.name, c.secure, c.httpOnly]),
        [['__Secure-mercure_access_token', true, true]], 'the browser holds the cookie for the hub');
      const publish = async (topic, data) => {
        const response = await fetch(hubUrl, {
          method: 'POST',
          headers: { Authorization: `Bearer ${publisherToken}` },
          body: new URLSearchParams({ topic, data, private: 'on' }),
        });
        assert.equal(response.status, 200, await response.text());
      };
      await shop.evaluate((hubUrl) => {
        const url = new URL(hubUrl);
        url.searchParams.append('match_urlpattern', 'https://shop.example/orders/:id');
        url.searchParams.append('match', 'https://shop.example/invoices/1');
        window.received = [];
        const source = new EventSource(url, { withCredentials: true });
        source.onmessage = (e) => window.received.push(e.data);
        return new Promise((resolve, reject) => {
          source.onopen = resolve;
          source.onerror = () => reject(new Error('the stream was refused'));
        });
      }, hubUrl);
      // The grant covers orders, not invoices: the invoice is selected but private.
      await publish('https://shop.example/invoices/1', 'invoice 1');
      await publish('https://shop.example/orders/42', 'order 42 paid');
      await shop.waitForFunction(() => window.received.length > 0, null, { timeout: 5000 });
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.deepEqual(await shop.evaluate(() => window.received), ['order 42 paid']);
      await context.close();
    } finally {
      app.close();
      hub.kill('SIGKILL');
    }
  });
});

/** Runs one scenario in the page: subscribe, publish, wait up to 2 s. */
function runScenario(scenario, id, query, publisher) {
  return page.evaluate(async ({ scenario, id, query, publisher }) => {
    const url = new URL('/.well-known/mercure', location.origin);
    query.forEach(([param, selector]) => url.searchParams.append(param, selector));
    const form = new URLSearchParams();
    scenario.topics.forEach((t) => form.append('topic', t));
    form.set('id', id);
    form.set('data', `data for\n\n        ${scenario.name}`);
    if (scenario.private) form.set('private', 'on');

    const source = new EventSource(url);
    await new Promise((resolve) => { source.onopen = resolve; });
    const arrived = new Promise((resolve) => {
      source.onmessage = (e) => {
        if (e.type === 'message' && e.lastEventId === id && e.data === form.get('data')) resolve(true);
      };
    });
    const response = await fetch('/.well-known/mercure', {
      method: 'POST',
      headers: { Authorization: `Bearer ${publisher}` },
      body: form,
    });
    const body = await response.text();
    const received = await Promise.race([arrived, new Promise((resolve) => setTimeout(resolve, 2000, false))]);
    source.close();
    return { received, status: response.status, contentType: response.headers.get('content-type'), body };
  }, { scenario, id, query, publisher });
}
