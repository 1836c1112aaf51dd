// The scenarios of Mercure's own conformance suite (its "Publish update" dataset), re-written
// for node's test runner and run against a real `tidings serve`, as a Mercure hub is run for
// it: the default development key, anonymous subscribers, publishers with a `publish: ["*"]`
// token. Each scenario, inside the page at `/` of the hub:
// an EventSource subscribes to the selectors; once it is open, the page POSTs an update with a
// custom id and a multi-line payload (as `fetch` sends a URLSearchParams body); the update
// must (or must not) arrive within 2 s as a `message` event with that id and payload; a
// received update's publish answer is `200 text/plain` carrying the id.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startHub, token, launchBrowser } from './harness.mjs';

const MERCURE_DEV_KEY = '!ChangeThisMercureHubJWTSecretKey!';
const rnd = () => randomBytes(20).toString('hex');
const r = Array.from({ length: 5 }, rnd);

const scenarios = [
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

let hub;
let base;
let browser;
let page;
let publisher;

before(async () => {
  ({ child: hub, base } = await startHub(['--jwt-key', MERCURE_DEV_KEY, '--anonymous']));
  publisher = token(MERCURE_DEV_KEY, '--publish', '*', '--subscribe', '*');
  browser = await launchBrowser();
  page = await browser.newPage();
});

after(async () => {
  await browser?.close();
  hub?.kill('SIGKILL');
});

for (const scenario of scenarios) {
  test(scenario.name, async () => {
    await page.goto(`${base}/`);
    const id = `id-${JSON.stringify(scenario.topics)}`;
    const outcome = await page.evaluate(async ({ scenario, id, publisher }) => {
      const url = new URL('/.well-known/mercure', location.origin);
      scenario.selectors.forEach((s) => url.searchParams.append('topic', s));
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
    }, { scenario, id, publisher });

    assert.equal(outcome.received, scenario.received, JSON.stringify(outcome));
    assert.equal(outcome.status, 200, outcome.body);
    if (scenario.received) {
      assert.match(outcome.contentType, /^text\/plain(?:$|;.*)/);
      assert.equal(outcome.body, id, 'the custom id is used');
    }
  });
}
