// compose.yaml as a newcomer runs it: `podman-compose up -d` (the image built from this
// build's binary, the Containerfile's prebuilt target), then headless Chromium on the page at
// `/` through the file's nginx — the README's curl publish shown, publishes spread over the
// three instances arriving in order, the session panel answering for the cluster — and
// `podman-compose down` leaving no container, network or volume behind. Then the NATS variant
// (one more -f): up, a publish through nginx reaches a stream, down. The RabbitMQ and Kafka
// variants, whose brokers' images cannot be made here, are read as compose reads them.
//
// Run by .ci/run after `cargo test` and .ci/container (podman and the base images: .ci/images).
// Root only, as podman runs here; podman-compose is installed with pip when missing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { binary, launchBrowser, freePort, readmeCommand, runReadmeCommand, root } from './harness.mjs';

const PODMAN_COMPOSE = 'podman-compose==1.6.0';
const image = `localhost/tidings-compose-ci:${randomBytes(4).toString('hex')}`;
const conf = mkdtempSync(path.join(os.tmpdir(), 'tidings-compose-'));
let browser;

// This machine runs containers as root with runc and cgroupfs, and refuses the runtime's
// default process limit: podman reads that from a containers.conf of the test's own.
writeFileSync(path.join(conf, 'containers.conf'), [
  '[containers]', 'default_ulimits = ["nproc=4096:4096", "nofile=4096:4096"]',
  '[engine]', 'runtime = "runc"', 'cgroup_manager = "cgroupfs"', ''].join('\n'));
const env = { ...process.env, CONTAINERS_CONF: path.join(conf, 'containers.conf'), TIDINGS_IMAGE: image };
for (const k of Object.keys(env)) if (k.startsWith('TIDINGS_') && k !== 'TIDINGS_IMAGE') delete env[k];

const run = (cmd, args, options = {}) => execFileSync(cmd, args, { cwd: root, env, encoding: 'utf8', ...options });

/** `podman-compose` for project `project` with the files given, and a port of its own. */
function compose(project, port, files, ...args) {
  return run('podman-compose', ['-p', project, ...files.flatMap((f) => ['-f', f]), ...args],
    { env: { ...env, TIDINGS_PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120000 });
}

/** What podman still holds of `project`: containers, networks, volumes, pods. */
function leftovers(project) {
  const label = `label=io.podman.compose.project=${project}`;
  return [
    ...run('podman', ['ps', '-a', '--filter', label, '--format', '{{.Names}}']).split('\n'),
    ...run('podman', ['network', 'ls', '--format', '{{.Name}}']).split('\n').filter((n) => n.startsWith(`${project}_`)),
    ...run('podman', ['volume', 'ls', '--filter', label, '--format', '{{.Name}}']).split('\n'),
    ...run('podman', ['pod', 'ls', '--format', '{{.Name}}']).split('\n').filter((n) => n === `pod_${project}`),
  ].filter(Boolean);
}

/** Resolves once `base`/readyz has answered 200 from each of `count` instances, to their ids. */
async function readyInstances(base, count) {
  const seen = new Set();
  const deadline = Date.now() + 60000;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${base}/readyz`);
      last = `${res.status} ${await res.text()}`;
      if (res.status === 200) seen.add(JSON.parse(last.slice(4)).instanceId);
      if (seen.size === count) return [...seen].sort();
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`only ${[...seen]} ready through nginx after 60 s; last answer: ${last}`);
}

/** Brings `files` up as a project of its own; resolves to { base, project, down }. */
async function up(files) {
  const project = `tidings-ci-${randomBytes(3).toString('hex')}`;
  const port = await freePort();
  try {
    compose(project, port, files, 'up', '-d');
  } catch (e) {
    compose(project, port, files, 'down');
    throw new Error(`podman-compose up failed: ${e.stderr}`);
  }
  return {
    base: `http://127.0.0.1:${port}`,
    project,
    logs: () => compose(project, port, files, 'logs'),
    down: () => compose(project, port, files, 'down'),
  };
}

/**
 * Brings `files` up, runs `check(cluster)` against it, brings it down (the services' logs
 * printed when the check failed), and checks that down left nothing behind.
 */
async function withCluster(files, check) {
  const cluster = await up(files);
  try {
    await check(cluster);
  } catch (e) {
    console.error(cluster.logs());
    throw e;
  } finally {
    cluster.down();
  }
  assert.deepEqual(leftovers(cluster.project), [], 'podman-compose down leaves nothing behind');
}

before(async () => {
  try {
    run('podman-compose', ['--version'], { stdio: 'ignore' });
  } catch {
    run('python3', ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', PODMAN_COMPOSE]);
  }
  run(path.join(root, '.ci', 'images'), [], { stdio: 'ignore' });
  // (docker format: the OCI format has no HEALTHCHECK.)
  run('podman', ['build', '--quiet', '--format', 'docker', '-f', 'deploy/container/Containerfile',
    '--target', 'prebuilt', '--build-arg', `BINARY=${path.relative(root, binary)}`, '-t', image, '.']);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  try { run('podman', ['rmi', '-f', image], { stdio: 'ignore' }); } catch { /* gone already */ }
  rmSync(conf, { recursive: true, force: true });
});

test('compose.yaml: three instances on Redis behind nginx serve the page at / as the README shows it, and down leaves nothing', async () => {
  await withCluster(['compose.yaml'], async (cluster) => {
    assert.deepEqual(await readyInstances(cluster.base, 3), ['tidings-1', 'tidings-2', 'tidings-3'],
      'nginx reaches the three instances, round-robin');
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${cluster.base}/`);
    assert.equal(await page.locator('#hub-bus').textContent(), 'redis');
    await page.click('#subscribe');
    await page.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 10000 });
    // The README's curl publish, then more through nginx: each goes to the next instance.
    const ids = [runReadmeCommand(readmeCommand('curl -X POST http://127.0.0.1:3000/.well-known/mercure \\'), cluster.base).trim()];
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${cluster.base}/.well-known/mercure`, {
        method: 'POST', body: new URLSearchParams({ topic: 'https://example.com/books/1', type: 'book', data: `${i}` }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      ids.push((await res.text()).trim());
    }
    await page.waitForFunction((n) => window.tidingsEvents.length >= n, ids.length, { timeout: 10000 });
    const events = await page.evaluate(() => window.tidingsEvents);
    assert.deepEqual(events.map((e) => e.id), ids, 'every publish, once, in order');
    assert.deepEqual(events[0], { type: 'book', id: ids[0], data: '{"title": "Dune"}' });
    // The session panel: a publish to alice, and presence answered for the whole cluster.
    const session = await browser.newPage();
    await session.goto(`${cluster.base}/?api=session&autosubscribe=1`);
    await session.waitForFunction(() => window.tidingsStatus === 'open', null, { timeout: 10000 });
    await session.click('#publish');
    await session.waitForFunction(() => window.tidingsEvents.length >= 1, null, { timeout: 10000 });
    await session.click('#presence');
    await session.waitForFunction(() => document.querySelector('#pub-result').textContent.includes('connected'), null, { timeout: 10000 });
    assert.equal(await session.locator('#pub-result').textContent(), 'alice is connected: 1 stream(s) (cluster)');
    assert.deepEqual(errors, []);
    await page.close();
    await session.close();
  });
});

test('compose.yaml with deploy/compose/nats.yaml: the same cluster on NATS JetStream, Redis off', async () => {
  await withCluster(['compose.yaml', 'deploy/compose/nats.yaml'], async (cluster) => {
    await readyInstances(cluster.base, 3);
    const ready = await (await fetch(`${cluster.base}/readyz`)).json();
    assert.equal(ready.bus, 'nats', JSON.stringify(ready));
    const containers = run('podman', ['ps', '--filter', `label=io.podman.compose.project=${cluster.project}`,
      '--format', '{{.Names}}']);
    assert.doesNotMatch(containers, /redis/, 'the variant leaves Redis off');
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 15000);
    const res = await fetch(`${cluster.base}/.well-known/mercure?topic=compose`, { signal: controller.signal });
    const reader = res.body.getReader();
    await reader.read(); // the stream's opening comment: subscribed
    const published = await fetch(`${cluster.base}/.well-known/mercure`, { method: 'POST', body: new URLSearchParams({ topic: 'compose', data: 'through NATS' }) });
    const id = (await published.text()).trim();
    let received = '';
    while (!received.includes(`id: ${id}`)) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`the stream ended before the update: ${received}`);
      received += new TextDecoder().decode(value);
    }
    assert.match(received, /data: through NATS/);
    clearTimeout(timer);
    controller.abort();
  });
});

test('deploy/compose/rabbitmq.yaml and kafka.yaml: each brings its broker, points the three instances at it, and leaves Redis off', () => {
  // (Their brokers' images cannot be made here: the files are checked as compose reads them.)
  for (const [file, broker, bus] of [['rabbitmq.yaml', 'rabbitmq', 'amqp://tidings:tidings@rabbitmq:5672/%2f'],
    ['kafka.yaml', 'kafka', 'kafka://kafka:9092']]) {
    const config = run('podman-compose', ['-f', 'compose.yaml', '-f', `deploy/compose/${file}`, 'config']);
    const services = config.split('\nservices:\n')[1].split(/\n(?=\S)/)[0];
    const names = [...services.matchAll(/^ {2}(\S+):$/gm)].map((m) => m[1]).sort();
    assert.deepEqual(names, [broker, 'nginx', 'tidings-1', 'tidings-2', 'tidings-3'].sort(), file);
    assert.equal(services.split(`TIDINGS_BUS: ${bus}`).length - 1, 3, `${file}: every instance on ${bus}`);
  }
});
