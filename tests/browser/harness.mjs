// Shared by the browser tests: start a real `tidings serve`, mint tokens with `tidings token`,
// launch Debian's Chromium headless through playwright-core.
import { spawn, execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const binary = process.env.TIDINGS_BIN || path.join(root, 'target', 'debug', 'tidings');

function cleanEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('TIDINGS_')) delete env[k];
  return env;
}

/** Mints an HS256 token signed with `key`; `args` are `tidings token` flags. */
export function token(key, ...args) {
  return execFileSync(binary, ['token', '--jwt-key', key, ...args], { env: cleanEnv() }).toString().trim();
}

/**
 * Starts `tidings serve --listen 127.0.0.1:0 <args>` (unless `args` has a `--listen` of its
 * own); resolves to { child, base } once ready.
 */
export function startHub(args) {
  return new Promise((resolve, reject) => {
    const listen = args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
    const child = spawn(binary, ['serve', ...listen, ...args], {
      env: { ...cleanEnv(), TIDINGS_LOG: 'info' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const timer = setTimeout(() => reject(new Error('hub did not become ready')), 10000);
    let buffered = '';
    child.stderr.on('data', (chunk) => {
      buffered += chunk.toString();
      const m = buffered.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        // (`log()`: what the hub has logged so far.)
        resolve({ child, base: m[1], log: () => buffered });
      }
    });
    child.on('exit', (code) => reject(new Error(`hub exited early (${code}): ${buffered}`)));
  });
}

/** Headless Chromium with the flags this machine needs. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
}

/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts connections on 127.0.0.1:`port`, or rejects after 10 s. */
async function listening(port, what) {
  const deadline = Date.now() + 10000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.end(); resolve(true); });
      socket.on('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > deadline) throw new Error(`${what} did not start on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * nginx on free loopback ports with the kit's deploy/nginx/tidings.conf, its three instance
 * addresses replaced by `addrs` (`host:port` each), serving HTTP and HTTPS with HTTP/2 (a
 * self-signed certificate made with openssl); resolves to { base, tlsBase, stop }.
 */
export async function startNginx(addrs) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-nginx-'));
  const port = await freePort();
  const tlsPort = await freePort();
  let site = readFileSync(path.join(root, 'deploy', 'nginx', 'tidings.conf'), 'utf8');
  addrs.forEach((addr, i) => {
    const shipped = `127.0.0.1:${3001 + i}`;
    if (!site.includes(shipped)) throw new Error(`deploy/nginx/tidings.conf does not name ${shipped}`);
    site = site.replace(shipped, addr);
  });
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    '-keyout', path.join(dir, 'privkey.pem'), '-out', path.join(dir, 'fullchain.pem')], { stdio: 'ignore' });
  for (const shipped of ['listen 80;', 'listen 443 ssl http2;', '/etc/ssl/tidings/fullchain.pem', '/etc/ssl/tidings/privkey.pem']) {
    if (!site.includes(shipped)) throw new Error(`deploy/nginx/tidings.conf does not say ${shipped}`);
  }
  site = site.replace('listen 80;', `listen 127.0.0.1:${port};`)
    .replace('listen 443 ssl http2;', `listen 127.0.0.1:${tlsPort} ssl http2;`)
    .replaceAll('/etc/ssl/tidings/', `${dir}/`);
  writeFileSync(path.join(dir, 'tidings.conf'), site);
  return startNginxWith(dir, 'tidings.conf', port, { tlsBase: `https://127.0.0.1:${tlsPort}`, tlsPort });
}

/**
 * Three instances made by `startInstance(i)`, the nginx kit in front of them and Chromium:
 * resolves to { hubs, nginx, browser, stop } (`hubs` may be changed in place: `stop` ends the
 * instances it holds then). What started before a failure is stopped.
 */
export async function behindNginx(startInstance) {
  const started = { hubs: [], nginx: null, browser: null };
  started.stop = async () => {
    await started.browser?.close();
    started.nginx?.stop();
    for (const hub of started.hubs) hub.child.kill('SIGKILL');
  };
  try {
    for (let i = 0; i < 3; i++) started.hubs.push(await startInstance(i));
    started.nginx = await startNginx(started.hubs.map((h) => h.base.replace('http://', '')));
    started.browser = await launchBrowser();
  } catch (e) {
    await started.stop();
    throw e;
  }
  return started;
}

/**
 * nginx in the foreground with `dir`/`site` included in its http block; resolves once it
 * accepts connections on `port` (and `extra.tlsPort`, if given) to { base, ...extra, stop }.
 */
export async function startNginxWith(dir, site, port, extra = {}) {
  writeFileSync(path.join(dir, 'nginx.conf'), [
    'worker_processes 1;', 'daemon off;', `pid ${dir}/nginx.pid;`, `error_log ${dir}/error.log warn;`,
    'events { worker_connections 1024; }',
    'http {', ' access_log off;', ` client_body_temp_path ${dir}/body;`, ` proxy_temp_path ${dir}/proxy;`,
    ` fastcgi_temp_path ${dir}/fastcgi;`, ` uwsgi_temp_path ${dir}/uwsgi;`, ` scgi_temp_path ${dir}/scgi;`,
    ` include ${path.join(dir, site)};`, '}', ''].join('\n'));
  const child = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const failed = exited.then((code) => { throw new Error(`nginx exited (${code}): ${readFileSync(path.join(dir, 'error.log'), 'utf8')}`); });
  await Promise.race([listening(port, 'nginx'), failed]);
  if (extra.tlsPort) await Promise.race([listening(extra.tlsPort, 'nginx (TLS)'), failed]);
  return {
    base: `http://127.0.0.1:${port}`,
    ...extra,
    stop() {
      child.kill('SIGTERM'); // nginx's fast shutdown: the master stops its worker
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * nginx with the example application's nginx.conf (examples/session-app), its two instances
 * and the app replaced by `hubBases[0..2]` and `appUrl`; resolves as startNginxWith.
 */
export async function startAppNginx(hubBases, appUrl) {
  let site = readFileSync(path.join(root, 'examples', 'session-app', 'nginx.conf'), 'utf8');
  const port = await freePort();
  for (const [shipped, actual] of [['127.0.0.1:3001', hubBases[0]], ['127.0.0.1:3002', hubBases[1]],
    ['127.0.0.1:8000', appUrl], ['listen 8080;', `listen 127.0.0.1:${port};`]]) {
    if (!site.includes(shipped)) throw new Error(`the example's nginx.conf does not say ${shipped}`);
    site = site.replace(shipped, actual.replace('http://', ''));
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-app-nginx-'));
  writeFileSync(path.join(dir, 'site.conf'), site);
  return startNginxWith(dir, 'site.conf', port);
}

/** A free TCP port on 127.0.0.1 (exported for tests that run servers of their own). */
export { freePort };

/** The value of the unlabelled metric `name` on the hub at `base`. */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`${base}/metrics has no ${name}`);
  return Number(line.split(' ')[1]);
}

/**
 * The README's shell commands that start with `start` (the first line of a command; a
 * command goes on while its lines end in `\`), e.g. the curl publish of "Try it with curl".
 * Throws when the README has none, so a test that runs it notices when the README changes.
 */
export function readmeCommand(start) {
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  for (const block of blocks) {
    const lines = block.split('\n');
    const at = lines.findIndex((l) => l.startsWith(start));
    if (at < 0) continue;
    let end = at;
    while (lines[end].endsWith('\\')) end += 1;
    return lines.slice(at, end + 1).join('\n');
  }
  throw new Error(`README.md shows no command starting with ${start}`);
}

/** Runs a README command against the hub at `base` instead of http://127.0.0.1:3000. */
export function runReadmeCommand(command, base) {
  return execFileSync('sh', ['-c', command.replaceAll('http://127.0.0.1:3000', base)], { env: cleanEnv() }).toString();
}
