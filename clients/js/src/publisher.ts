/**
 * Publishing to Tidings from a service (Node 18+, Deno, Bun, or a browser): the Mercure form
 * (`POST /.well-known/mercure`) and the session API (`POST /sse/events`). Every publish carries
 * an id (generated when not given), so that one whose answer was lost — a `504
 * publish_outcome_unknown`, a dropped connection — is retried with the same id and stored once.
 *
 * ```js
 * import { Publisher } from '@tidings/client/publisher';
 * const publisher = new Publisher({ hub: 'http://127.0.0.1:3000', token: process.env.TIDINGS_TOKEN });
 * await publisher.publish({ topics: ['https://example.com/books/1'], data: JSON.stringify({ stock: 3 }) });
 * await publisher.toSessions({ sessionId: 'alice', eventName: 'chat', payload: { text: 'hi' } });
 * ```
 */
import { errorOf, TidingsError } from './connection.js';

export { TidingsError } from './connection.js';

/** The publisher's settings. */
export interface PublisherOptions {
  /** Tidings' base URL, e.g. `http://127.0.0.1:3000`. */
  hub: string;
  /** A publisher token (`mercure.publish` claim), or the hub's admin key; none with `--auth none`. */
  token?: string | (() => string | Promise<string>);
  /** Attempts for a publish whose outcome is unknown (`504`, a network error): 4 by default. */
  attempts?: number;
  /** Wait before the first retry, doubled after each (250 ms). */
  retryDelayMs?: number;
  /** Longest wait for one answer (10 s). */
  timeoutMs?: number;
  /** The `fetch` to use (tests, or a runtime without a global one). */
  fetch?: typeof fetch;
}

/** A Mercure update. */
export interface Publication {
  /** Its topics: the first canonical, the others alternates. At least one. */
  topics: string[];
  data?: string;
  /** Only subscribers allowed its topics see it. */
  private?: boolean;
  /** Its id: a retry with the same id is stored once. Generated (`urn:uuid:…`) when absent. */
  id?: string;
  /** Its SSE `event:` type. */
  type?: string;
  /** The `retry:` hint it carries, in milliseconds. */
  retry?: number;
}

/** A session event: to one session, to several, or to every session stream. */
export type SessionEvent = {
  eventName: string;
  /** A string is sent as it is; anything else as its JSON text. */
  payload: unknown;
  id?: string;
  retry?: number;
} & ({ sessionId: string } | { sessionIds: string[] } | { broadcast: true });

/** What the hub answered to a publish. */
export interface Published {
  id: string;
  /** How many attempts it took (more than one: an unknown outcome was retried). */
  attempts: number;
}

const newId = () => `urn:uuid:${globalThis.crypto.randomUUID()}`;

/** Publishes to one Tidings deployment. */
export class Publisher {
  private readonly base: URL;
  private readonly fetch: typeof fetch;
  private readonly attempts: number;
  private readonly retryDelayMs: number;
  private readonly timeoutMs: number;

  constructor(private readonly options: PublisherOptions) {
    this.base = new URL(options.hub);
    if (!this.base.pathname.endsWith('/')) this.base.pathname += '/';
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.attempts = Math.max(1, options.attempts ?? 4);
    this.retryDelayMs = options.retryDelayMs ?? 250;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  /**
   * Publishes a Mercure update; resolves with its id once the hub stored it.
   * @throws {TidingsError} what the hub refused (`400`, `403`, …), or an outcome still unknown
   *   after every attempt (`504 publish_outcome_unknown`, or status 0 for no answer).
   */
  async publish(publication: Publication): Promise<Published> {
    if (!publication.topics?.length) throw new TypeError('Publisher.publish: at least one topic');
    const id = publication.id ?? newId();
    const form = new URLSearchParams();
    for (const topic of publication.topics) form.append('topic', topic);
    if (publication.data !== undefined) form.set('data', publication.data);
    if (publication.private) form.set('private', 'on');
    if (publication.type !== undefined) form.set('type', publication.type);
    if (publication.retry !== undefined) form.set('retry', String(publication.retry));
    form.set('id', id);
    const attempts = await this.send('.well-known/mercure', 'application/x-www-form-urlencoded', form.toString());
    return { id, attempts };
  }

  /** Sends a session event (`POST /sse/events`); resolves with its id once stored. */
  async toSessions(event: SessionEvent): Promise<Published> {
    const id = event.id ?? newId();
    const attempts = await this.send('sse/events', 'application/json', JSON.stringify({ ...event, id }));
    return { id, attempts };
  }

  /** Sends `body` until the hub answers with a known outcome; how many attempts it took. */
  private async send(path: string, type: string, body: string): Promise<number> {
    const url = new URL(path, this.base);
    let last: TidingsError | null = null;
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      if (attempt > 1) await new Promise((r) => setTimeout(r, this.retryDelayMs * 2 ** (attempt - 2)));
      const headers: Record<string, string> = { 'content-type': type };
      const token = typeof this.options.token === 'function' ? await this.options.token() : this.options.token;
      if (token) headers.authorization = `Bearer ${token}`;
      let response: Response;
      try {
        response = await this.fetch(url, {
          method: 'POST',
          headers,
          body,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        // Sent or not, the answer is lost: the same id again is safe.
        last = new TidingsError(0, 'no_answer', `no answer from ${url.origin}: ${String(e)}`);
        continue;
      }
      if (response.ok) {
        await response.body?.cancel();
        return attempt;
      }
      last = await errorOf(response);
      // Unknown (504) or not taken for a passing reason (503): the same id again.
      if (response.status !== 504 && response.status !== 503) throw last;
    }
    throw last ?? new TidingsError(0, 'no_answer', 'no attempt made');
  }
}
