// Headless Chromium and two instances on Redis that consume a Spring application's RabbitMQ
// exchange, a Redis channel per job and a service's JetStream stream: a SendSseEvent published
// with pika as Spring AMQP writes it (examples/python/spring_sse_event.py) reaches a browser's
// EventSource on the session API, a worker's "job done" published with redis-py
// (examples/python/redis_channels.py) reaches one on the job's Mercure topic, and an order
// event published with nats-py (examples/python/nats_event.py) one on the customer's session,
// an order paid in a PostgreSQL transaction with psycopg (examples/python/outbox_order.py)
// one too, while a transaction that rolls back sends nothing, and a shipping event produced to
// Kafka with confluent-kafka (examples/python/kafka_event.py), keyed by the session, one more —
// on the instance that did not consume it as on the one that did, once.
//
// Run by .ci/run after `cargo test` (which builds target/debug/tidings):
//   cd tests/browser && npm ci && node --test consume.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startHub, launchBrowser, metric, root } from './harness.mjs';

const REDIS = process.env.TIDINGS_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const AMQP = process.env.TIDINGS_TEST_AMQP || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const PREFIX = `tidings-consume-${randomBytes(4).toString('hex')}`;
const EXCHANGE = `${PREFIX}.sse-events`;
const PUBLISHED = `tidings_consumer_messages_total{source="${PREFIX}",outcome="published"}`;
const NATS = process.env.TIDINGS_TEST_NATS || 'nats://127.0.0.1:4222';
const ORDERS = `${PREFIX}-orders`;
const ORDERS_PUBLISHED = `tidings_consumer_messages_total{source="${ORDERS}",outcome="published"}`;
const POSTGRES = process.env.TIDINGS_TEST_POSTGRES || 'postgresql://postgres@127.0.0.1:5432/postgres';
const SCHEMA = PREFIX.replaceAll('-', '_');
const OUTBOX_PUBLISHED = `tidings_consumer_messages_total{source="${SCHEMA}",outcome="published"}`;
const KAFKA = process.env.TIDINGS_TEST_KAFKA_BOOTSTRAP || '127.0.0.1:9092';
const SHIPPING = `${SCHEMA}.shipping`;
const SHIPPING_PUBLISHED = `tidings_consumer_messages_total{source="${PREFIX}-kafka",outcome="published"}`;
const JOBS_PUBLISHED = `tidings_consumer_messages_total{source="${PREFIX}-jobs",outcome="published"}`;

let hubs = [];
let browser;

/** Runs the Spring example against the test's exchange; returns what it prints. */
function spring(...args) {
  const script = path.join(root, 'examples', 'python', 'spring_sse_event.py');
  return execFileSync('python3', [script, '--amqp', AMQP, '--exchange', EXCHANGE, ...args]).toString().trim();
}

/** Runs the Redis example's worker "job done" on the test's channels; returns what it prints. */
function jobDone(job) {
  const script = path.join(root, 'examples', 'python', 'redis_channels.py');
  return execFileSync('python3', [script, '--redis', REDIS, '--prefix', `${PREFIX}:`, 'job', '--job', String(job)])
    .toString().trim();
}

/** Runs the NATS example against the test's stream; returns what it prints. */
function orders(...args) {
  const script = path.join(root, 'examples', 'python', 'nats_event.py');
  return execFileSync('python3', [script, '--nats', NATS, '--stream', ORDERS,
    '--subject-prefix', `${PREFIX}.orders`, ...args]).toString().trim();
}

/** Runs `psql` on the test's database (`sql` as one command, in the test's schema). */
function psql(sql, file) {
  const args = ['-q', '-v', 'ON_ERROR_STOP=1', POSTGRES, ...(file ? ['-f', file] : ['-c', sql])];
  execFileSync('psql', args, { env: { ...process.env, PGOPTIONS: `-c search_path=${SCHEMA}` } });
}

/** Runs the outbox example in the test's schema; returns what it prints. */
function payOrder(...args) {
  const script = path.join(root, 'examples', 'python', 'outbox_order.py');
  return execFileSync('python3', [script, '--database', POSTGRES, '--schema', SCHEMA, ...args]).toString().trim();
}

/** Runs the Kafka example against the test's topic; returns what it prints. */
function shipping(...args) {
  const script = path.join(root, 'examples', 'python', 'kafka_event.py');
  return execFileSync('python3', [script, '--bootstrap', KAFKA, '--topic', SHIPPING, ...args]).toString().trim();
}

async function consumerConnected(base) {
  for (let i = 0; i < 200; i++) {
    const ready = await (await fetch(`${base}/readyz`)).json();
    if (ready.consumers?.length === 5 && ready.consumers.every((c) => c.connection === 'connected')) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the consumer of ${base} did not connect`);
}

before(async () => {
  spring('--declare'); // the application's exchange, as the starter declares it
  orders('--declare'); // the order service's stream
  psql(`CREATE SCHEMA ${SCHEMA}`); // the application's outbox, as docs/outbox.sql creates it
  psql(null, path.join(root, 'docs', 'outbox.sql'));
  shipping('--create'); // the shipping service's topic
  const consume = `${AMQP}?exchange=${EXCHANGE}&preset=spring-sse-starter&name=${PREFIX}`;
  const jobs = `${REDIS}?pattern=${PREFIX}:subtitles:job:*&topic=https://example.com/jobs/{1}`
    + `&type=job-done&name=${PREFIX}-jobs&key=${PREFIX}:jobs`;
  for (let i = 0; i < 2; i++) {
    hubs.push(await startHub(['--auth', 'none', '--bus', REDIS, '--bus-prefix', PREFIX,
      '--instance-id', `${PREFIX}-${i}`, '--consume', consume, '--consume', jobs, '--consume',
      `${NATS}?stream=${ORDERS}&subject=${PREFIX}.orders.>&session={/customer}&event=order-paid`
        + `&data=/order&name=${ORDERS}`, '--consume',
      `${POSTGRES}?table=${SCHEMA}.tidings_outbox&session={/customer}&event=order-paid&data=/order`
        + `&name=${SCHEMA}`, '--consume',
      `kafka://${KAFKA}?kafka-topic=${SHIPPING}&session={key}&event=order-shipped&data=/order`
        + `&name=${PREFIX}-kafka`]));
  }
  for (const hub of hubs) await consumerConnected(hub.base);
  // The Kafka consumer starts at the topic's end once an instance reads it: wait for that.
  for (let i = 0; !hubs.some((h) => h.log().includes('consumer: reading the topic')); i++) {
    if (i > 200) throw new Error('no instance reads the Kafka topic');
    await new Promise((r) => setTimeout(r, 50));
  }
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const hub of hubs) hub.child.kill('SIGKILL');
  // The application's exchange and the consumers' shared queue go with the test.
  execFileSync('python3', ['-c',
    'import pika, sys\n'
    + 'c = pika.BlockingConnection(pika.URLParameters(sys.argv[1])); ch = c.channel()\n'
    + 'ch.queue_delete(sys.argv[2]); ch.exchange_delete(sys.argv[3]); c.close()',
    AMQP, `tidings.${PREFIX}`, EXCHANGE]);
  orders('--delete');
  psql(`DROP SCHEMA ${SCHEMA} CASCADE`);
  shipping('--delete');
});

/**
 * A page on each instance with an EventSource on `path`, collecting its `event` events:
 * `{ id, data }` (the data parsed as JSON when `json`).
 */
async function openPages(path, event, json = false) {
  const pages = [];
  for (const hub of hubs) {
    const page = await browser.newPage();
    await page.goto(`${hub.base}/healthz`);
    await page.evaluate(([path, event, json]) => new Promise((resolve) => {
      window.got = [];
      const source = new EventSource(path);
      source.addEventListener(event, (e) => window.got.push({ id: e.lastEventId, data: json ? JSON.parse(e.data) : e.data }));
      source.onopen = () => resolve();
    }), [path, event, json]);
    pages.push(page);
  }
  return pages;
}

/**
 * Waits for each page's first event; then checks that one instance consumed it (its
 * `published` metric), and that both pages got `expected` (their `data`), once — the page on
 * the instance that did not consume it as the one that did. `settle` ms are left for a
 * repeat (or what must not come) to show.
 */
async function receivedOnceOnEither(pages, published, expected, settle = 300) {
  for (const page of pages) {
    await page.waitForFunction(() => window.got.length >= 1, null, { timeout: 10000 });
  }
  const consumed = await Promise.all(hubs.map((h) => metric(h.base, published).catch(() => 0)));
  assert.deepEqual([...consumed].sort(), [0, 1], `one instance consumed it: ${consumed}`);
  const other = consumed.indexOf(0);
  await new Promise((r) => setTimeout(r, settle));
  const data = async (page) => (await page.evaluate(() => window.got)).map((e) => e.data);
  assert.deepEqual(await data(pages[other]), expected, 'on the instance that did not consume it');
  assert.deepEqual(await data(pages[1 - other]), expected, 'and on the one that did');
  return Promise.all(pages.map((page) => page.evaluate(() => window.got)));
}

test("a Spring service's SendSseEvent reaches the browser's EventSource on either instance", async () => {
  const pages = await openPages('/sse/event-stream?sessionId=alice', 'order-update');
  const messageId = spring('--session', 'alice', '--event', 'order-update', '--payload', '{"order": 42}');
  const got = await receivedOnceOnEither(pages, PUBLISHED, ['{"order":42}']);
  for (const events of got) assert.equal(events[0].id, `urn:tidings:${PREFIX}:${messageId}`);
});

test("a worker's job-done on the job's Redis channel reaches the browser's EventSource on either instance", async () => {
  const topic = encodeURIComponent('https://example.com/jobs/42');
  const pages = await openPages(`/.well-known/mercure?topic=${topic}`, 'job-done', true);
  assert.equal(jobDone(42), '2', 'both instances subscribe to the channel');
  await receivedOnceOnEither(pages, JOBS_PUBLISHED, [{ job: 42, status: 'done' }]);
});

test("an order service's JetStream event reaches the browser's EventSource on either instance", async () => {
  const pages = await openPages('/sse/event-stream?sessionId=carol', 'order-paid', true);
  orders('--customer', 'carol', '--order', '{"id": 42, "total": 12.5}');
  await receivedOnceOnEither(pages, ORDERS_PUBLISHED, [{ id: 42, total: 12.5 }]);
});

test('an order paid in a PostgreSQL transaction reaches the browser once; one rolled back, never', async () => {
  const pages = await openPages('/sse/event-stream?sessionId=dave', 'order-paid', true);
  assert.match(payOrder('--customer', 'dave', '--total', '99', '--roll-back'), /rolled back/);
  const id = Number(payOrder('--customer', 'dave', '--total', '12.5'));
  // (A poll's wait: the rolled back order never comes.)
  await receivedOnceOnEither(pages, OUTBOX_PUBLISHED, [{ id, total: 12.5, state: 'paid' }], 1200);
});

test("a shipping service's Kafka record, keyed by the session, reaches the browser's EventSource on either instance", async () => {
  const pages = await openPages('/sse/event-stream?sessionId=erin', 'order-shipped', true);
  shipping('--session', 'erin', '--order', '{"id": 42, "carrier": "DHL"}');
  await receivedOnceOnEither(pages, SHIPPING_PUBLISHED, [{ id: 42, carrier: 'DHL' }]);
});
