// Shared by the browser tests: start a real `tidings serve`, mint tokens with `tidings token`,
// launch Debian's Chromium headless through playwright-core.
import { spawn, execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
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

/** Starts `tidings serve --listen 127.0.0.1:0 <args>`; resolves to { child, base } once ready. */
export function startHub(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, ['serve', '--listen', '127.0.0.1:0', ...args], {
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
        resolve({ child, base: m[1] });
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
