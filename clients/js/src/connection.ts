/**
 * One stream held open: a `fetch` read of `text/event-stream`, reconnected with jittered
 * backoff (or the server's `retry:` hint), resumed from the last event id, with a token asked
 * for again after a `401`/`403`. What it reads goes to a {@link Listener}; nothing here knows
 * about topics, tabs or storage.
 */
import { SseDecoder, type SseEvent } from './sse.js';

/** Where a connection stands. */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Asked for a token before each connection; `renew` after the hub refused the last one. */
export type GetToken = (context: { renew: boolean }) => string | null | undefined | Promise<string | null | undefined>;

/** An error the hub answered, or one met on the way (`status` 0). */
export class TidingsError extends Error {
  /** The HTTP status (0: no answer, or the token callback failed). */
  readonly status: number;
  /** The hub's `error` code (`invalid_token`, `forbidden`, …), or the client's own. */
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'TidingsError';
    this.status = status;
    this.code = code;
  }
}

/** Reads an error answer's JSON body (`{"error", "detail"}`) into a {@link TidingsError}. */
export async function errorOf(response: Response): Promise<TidingsError> {
  let code = `http_${response.status}`;
  let detail = response.statusText || `the hub answered ${response.status}`;
  try {
    const body = (await response.json()) as { error?: unknown; detail?: unknown };
    if (typeof body.error === 'string') code = body.error;
    if (typeof body.detail === 'string') detail = body.detail;
  } catch {
    // Not JSON: the status says enough.
  }
  return new TidingsError(response.status, code, detail);
}

/** The URL of the stream at `path` of `hub` with `params`, resuming after `lastId` if given. */
export function streamUrl(hub: string, path: string, params: [string, string][], lastId: string | null): URL {
  const url = new URL(path, hub);
  for (const [k, v] of params) url.searchParams.append(k, v);
  if (lastId) url.searchParams.set('lastEventID', lastId);
  return url;
}

/** What a connection tells its owner. */
export interface Listener {
  event(event: SseEvent): void;
  /** The last event id moved without an event (where a fresh stream starts). */
  id(id: string): void;
  state(state: ConnectionState): void;
  /** A final error: the connection is closed and will not come back by itself. */
  error(error: TidingsError): void;
}

/** How a connection is made. */
export interface ConnectionOptions {
  /** The stream's URL for a connection resuming from `lastId` (none: a fresh stream). */
  url(lastId: string | null): string;
  getToken?: GetToken;
  credentials: RequestCredentials;
  fetch: typeof fetch;
  /** First reconnection delay, doubled after each failed attempt up to `maxDelayMs`. */
  initialDelayMs: number;
  maxDelayMs: number;
  /** No byte for this long (heartbeats included) and the connection is taken for dead. */
  idleTimeoutMs: number;
}

/** A wait that `signal` cuts short. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}

/** `base` spread over ±50 %, so that clients refused together do not come back together. */
const jitter = (base: number) => Math.round(base * (0.5 + Math.random()));

/** How a read of the body ended. */
type Ended = 'end' | 'stay-away' | 'stopped';

/** A stream kept open until {@link Connection.stop}. */
export class Connection {
  /** The last event id read, carried into every reconnection. */
  lastId: string | null;
  private readonly stopped = new AbortController();
  private current: AbortController | null = null;
  /** Cuts the wait before the next attempt short (stop, restart). */
  private waiting: AbortController | null = null;
  private hint: number | null = null;
  private failures = 0;

  constructor(
    private readonly options: ConnectionOptions,
    private readonly listener: Listener,
    lastId: string | null,
  ) {
    this.lastId = lastId;
    void this.run();
  }

  /** Ends the stream for good. */
  stop(): void {
    this.stopped.abort();
    this.current?.abort();
    this.waiting?.abort();
  }

  /**
   * Ends the current connection (or the wait for the next) and opens another at once, from
   * {@link Connection.lastId} and with what `url` says now.
   */
  restart(): void {
    this.hint = 0;
    this.failures = 0;
    this.current?.abort(new Error('restart'));
    this.waiting?.abort();
  }

  private async run(): Promise<void> {
    const { options, listener } = this;
    let renew = false;
    let first = true;
    while (!this.stopped.signal.aborted) {
      listener.state(first ? 'connecting' : 'reconnecting');
      first = false;
      const headers: Record<string, string> = { accept: 'text/event-stream' };
      if (options.getToken) {
        let token: string | null | undefined;
        try {
          token = await options.getToken({ renew });
        } catch (e) {
          return this.fail(new TidingsError(0, 'token_refused', `getToken failed: ${String(e)}`));
        }
        if (token) headers.authorization = `Bearer ${token}`;
        else if (renew) return this.fail(new TidingsError(401, 'token_refused', 'getToken gave no new token'));
      }
      const attempt = new AbortController();
      this.current = attempt;
      let response: Response;
      try {
        response = await options.fetch(options.url(this.lastId), {
          headers,
          credentials: options.credentials,
          cache: 'no-store',
          signal: attempt.signal,
        });
      } catch {
        if (!(await this.backoff())) return;
        continue;
      }
      if (response.status === 401 || response.status === 403) {
        const error = await errorOf(response);
        // The token may have expired: ask for a new one once, at once.
        if (options.getToken && !renew) {
          renew = true;
          continue;
        }
        return this.fail(error);
      }
      if (!response.ok || !response.body) {
        const error = await errorOf(response);
        const passing = response.status === 429 || response.status >= 500;
        if (!passing) return this.fail(error);
        const after = Number(response.headers.get('retry-after'));
        if (after > 0) this.hint = jitter(after * 1000);
        if (!(await this.backoff())) return;
        continue;
      }
      renew = false;
      const ended = await this.read(response.body, attempt);
      if (ended === 'stay-away' || ended === 'stopped') break;
      // A clean end (a drain, a token's expiry, a passing refusal) comes back after the
      // server's hint; a broken one after the backoff.
      if (!(await this.backoff())) return;
    }
    listener.state('closed');
  }

  /** Reads the body until it ends; `stay-away` after a final `tidings-disconnect`. */
  private async read(body: ReadableStream<Uint8Array>, attempt: AbortController): Promise<Ended> {
    const { listener, options } = this;
    let stayAway = false;
    let opened = false;
    const decoder = new SseDecoder(
      {
        event: (event) => {
          this.lastId = event.id || this.lastId;
          if (event.type === 'tidings-disconnect') {
            try {
              stayAway = !(JSON.parse(event.data) as { reconnect?: boolean }).reconnect;
            } catch {
              stayAway = true;
            }
          }
          listener.event(event);
        },
        id: (id) => {
          this.lastId = id;
          listener.id(id);
        },
        retry: (ms) => {
          this.hint = ms;
        },
      },
      this.lastId ?? '',
    );
    const reader = body.getReader();
    let idle: ReturnType<typeof setTimeout> | undefined;
    const watch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => attempt.abort(new Error('idle')), options.idleTimeoutMs);
    };
    watch();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        watch();
        if (!opened) {
          opened = true;
          this.failures = 0;
          listener.state('open');
        }
        decoder.push(value);
        if (stayAway) {
          void reader.cancel();
          return 'stay-away';
        }
      }
    } catch {
      // Aborted (idle, restart, stop) or broken: the loop decides what comes next.
    } finally {
      clearTimeout(idle);
    }
    return this.stopped.signal.aborted ? 'stopped' : 'end';
  }

  /** Waits before the next attempt; `false` once stopped. */
  private async backoff(): Promise<boolean> {
    const { initialDelayMs, maxDelayMs } = this.options;
    const planned = this.hint ?? jitter(Math.min(maxDelayMs, initialDelayMs * 2 ** this.failures));
    this.hint = null;
    this.failures += 1;
    this.listener.state('reconnecting');
    if (this.stopped.signal.aborted) return false;
    this.waiting = new AbortController();
    await sleep(planned, this.waiting.signal);
    this.waiting = null;
    return !this.stopped.signal.aborted;
  }

  private fail(error: TidingsError): void {
    this.listener.error(error);
    this.listener.state('closed');
  }
}
