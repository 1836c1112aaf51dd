/**
 * The Tidings browser client: subscriptions to Mercure topics and to session events that
 * resume across reloads, come back after a drop with jittered backoff, renew their token after
 * a `401`/`403`, and tell the app of gaps, disconnects and their state.
 *
 * ```js
 * import { Tidings } from '@tidings/client';
 * const tidings = new Tidings({ hub: 'https://sse.example.com' });
 * const books = tidings.subscribe(['https://example.com/books/{id}']);
 * books.on('update', (update) => console.log(update.id, update.json()));
 * ```
 */
import {
  Connection,
  type ConnectionOptions,
  type ConnectionState,
  type GetToken,
  type Listener,
  streamUrl,
  TidingsError,
} from './connection.js';
import { canShare, MERCURE, TabGroup } from './shared.js';
import type { SseEvent } from './sse.js';

export { TidingsError } from './connection.js';
export type { ConnectionState, GetToken } from './connection.js';

/** One update, or one session event, as delivered. */
export interface Update {
  /** Its id (the `Last-Event-ID` a resume sends). */
  id: string;
  /** Its SSE event type: the update's `type`, the session event's name, or `message`. */
  type: string;
  /** Its data, as sent. */
  data: string;
  /** The data parsed as JSON. */
  json<T = unknown>(): T;
}

/** A `tidings-gap`: a resume found its id no longer in history (what came between is lost). */
export interface Gap {
  lastEventId: string;
  reason: string;
  replayedFrom: string | null;
}

/** A `tidings-disconnect`: an operator or the application ended the stream. */
export interface Disconnect {
  reason: string;
  /** `false`: the stream stays closed (a logout, a ban); `true`: it comes back by itself. */
  reconnect: boolean;
}

/** What a subscription tells, by event name. */
export interface SubscriptionEvents {
  update: Update;
  gap: Gap;
  disconnect: Disconnect;
  state: ConnectionState;
  /** A final error: the subscription is closed (a refused token, a bad request). */
  error: TidingsError;
}

/** The client's settings. */
export interface TidingsOptions {
  /** Tidings' base URL (`https://sse.example.com`); the page's origin by default. */
  hub?: string;
  /**
   * Gives the subscriber token, sent as `Authorization: Bearer`; asked before each connection,
   * with `renew: true` after the hub refused the last one (return a fresh token, or `null` to
   * give up). Without it, the browser's cookies authorize (the authorization callback, or the
   * `mercureAuthorization` cookie).
   */
  getToken?: GetToken;
  /** `fetch`'s `credentials`: `include` (default) sends cookies to another origin too. */
  credentials?: RequestCredentials;
  /**
   * Where each subscription keeps its last event id, so that a reload resumes exactly
   * (`sessionStorage` by default: per tab, gone with it; `null` keeps nothing).
   */
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  /** First reconnection delay (1 s), doubled after each failure up to `maxReconnectMs` (30 s). */
  reconnectMs?: number;
  maxReconnectMs?: number;
  /** A stream silent this long (45 s: three heartbeats) is taken for dead and reopened. */
  idleTimeoutMs?: number;
  /** The `fetch` to use (tests, or a runtime without a global one). */
  fetch?: typeof fetch;
  /**
   * One stream per browser (default `true` where Web Locks and `BroadcastChannel` exist): the
   * tabs of this origin elect a leader that holds one stream for all their subscriptions to
   * this hub and hands each tab its events; when it closes, another tab takes over and resumes.
   * The leader's `getToken` and cookies authorize that stream: set `false` where tabs of one
   * origin act for different users.
   */
  shared?: boolean;
}

/** What a subscription may ask besides its selectors or event names. */
export interface SubscribeOptions {
  /**
   * On a fresh start (no stored id), the last N updates of each exact topic first (1–100).
   * Such a subscription holds a stream of its own (a shared one would rewind for every tab).
   */
  rewind?: number;
  /** The storage key of its last event id, when two subscriptions of a page share selectors. */
  key?: string;
}

type Handlers = { [K in keyof SubscriptionEvents]: Set<(value: SubscriptionEvents[K]) => void> };

/** One stream's worth of events: Mercure selectors, or a session's event names. */
export class Subscription {
  private readonly handlers: Handlers = {
    update: new Set(),
    gap: new Set(),
    disconnect: new Set(),
    state: new Set(),
    error: new Set(),
  };
  /** Its stream: a connection of its own, or its part in the tabs' shared one. */
  private readonly source: { stop(): void };
  private last: string | null;
  /** Where the connection stands. */
  state: ConnectionState = 'connecting';

  /** @internal Made by {@link Tidings.subscribe} and {@link Tidings.session}. */
  constructor(
    client: ResolvedOptions,
    group: TabGroup | null,
    path: string,
    params: [string, string][],
    options: SubscribeOptions,
  ) {
    const storage = client.storage;
    const key =
      options.key ?? `tidings:${client.hub}${path}?${params.map(([k, v]) => `${k}=${v}`).sort().join('&')}`;
    const stored = storage?.getItem(key) ?? null;
    this.last = stored;
    const keep = (id: string) => {
      this.last = id;
      try {
        storage?.setItem(key, id);
      } catch {
        // A full or refused storage: the subscription goes on, a reload starts afresh.
      }
    };
    const listener: Listener = {
      event: (event) => {
        this.dispatch(event);
        // Kept once the app has seen it: a reload resumes after it, never before.
        if (event.id) keep(event.id);
      },
      id: keep,
      state: (state) => {
        if (state === this.state) return;
        this.state = state;
        this.emit('state', state);
      },
      error: (error) => this.emit('error', error),
    };
    if (group && !options.rewind) {
      this.source = group.join(path, params, stored, listener);
      return;
    }
    this.source = new Connection(
      {
        url: (lastId) => {
          const url = streamUrl(client.hub, path, params, lastId);
          if (!lastId && options.rewind) url.searchParams.set('rewind', String(options.rewind));
          return url.toString();
        },
        ...connecting(client),
      },
      listener,
      stored,
    );
  }

  /** The id a reconnection (or a reload) resumes from. */
  get lastEventId(): string | null {
    return this.last;
  }

  /** Calls `handler` on each `type` event; returns what removes it. */
  on<K extends keyof SubscriptionEvents>(type: K, handler: (value: SubscriptionEvents[K]) => void): () => void {
    const set = this.handlers[type] as Set<(value: SubscriptionEvents[K]) => void>;
    set.add(handler);
    return () => set.delete(handler);
  }

  /** Ends the subscription: its stream closes, its handlers hear nothing more. */
  close(): void {
    this.source.stop();
    if (this.state !== 'closed') {
      this.state = 'closed';
      this.emit('state', 'closed');
    }
  }

  private emit<K extends keyof SubscriptionEvents>(type: K, value: SubscriptionEvents[K]): void {
    for (const handler of [...this.handlers[type]] as ((value: SubscriptionEvents[K]) => void)[]) {
      try {
        handler(value);
      } catch (e) {
        // One handler's fault is not the stream's: report it and go on.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private dispatch(event: SseEvent): void {
    const parse = <T>(): T | null => {
      try {
        return JSON.parse(event.data) as T;
      } catch {
        return null;
      }
    };
    switch (event.type) {
      case 'tidings-gap': {
        const gap = parse<Gap>();
        if (gap) this.emit('gap', gap);
        return;
      }
      case 'tidings-disconnect': {
        const detail = parse<Disconnect>() ?? { reason: '', reconnect: false };
        this.emit('disconnect', { reason: detail.reason ?? '', reconnect: detail.reconnect === true });
        return;
      }
      default:
        this.emit('update', {
          id: event.id,
          type: event.type,
          data: event.data,
          json: <T>() => JSON.parse(event.data) as T,
        });
    }
  }
}

type ResolvedOptions = Required<Omit<TidingsOptions, 'getToken' | 'storage' | 'shared'>> &
  Pick<TidingsOptions, 'getToken'> & { storage: TidingsOptions['storage'] };

/** How this client's connections are made, whatever their URL. */
function connecting(client: ResolvedOptions): Omit<ConnectionOptions, 'url'> {
  return {
    getToken: client.getToken,
    credentials: client.credentials,
    fetch: client.fetch,
    initialDelayMs: client.reconnectMs,
    maxDelayMs: client.maxReconnectMs,
    idleTimeoutMs: client.idleTimeoutMs,
  };
}

/** The page's `sessionStorage`, or nothing where there is none (a worker, Node). */
function defaultStorage(): TidingsOptions['storage'] {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

/** A client of one Tidings deployment. */
export class Tidings {
  private readonly options: ResolvedOptions;
  private readonly subscriptions = new Set<Subscription>();
  private readonly shared: boolean;
  private group: TabGroup | null = null;

  constructor(options: TidingsOptions = {}) {
    const page = globalThis.location?.href;
    const hub = options.hub ?? page;
    if (!hub) throw new TypeError('Tidings: `hub` is required outside a page (the base URL of Tidings)');
    // Ends with `/`, so that the endpoints' paths (relative) keep a path prefix it has.
    const base = new URL(options.hub ? hub : '/', page);
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    this.options = {
      hub: base.toString(),
      getToken: options.getToken,
      credentials: options.credentials ?? 'include',
      storage: options.storage === undefined ? defaultStorage() : options.storage,
      reconnectMs: options.reconnectMs ?? 1000,
      maxReconnectMs: options.maxReconnectMs ?? 30_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 45_000,
      fetch: options.fetch ?? globalThis.fetch.bind(globalThis),
    };
    this.shared = (options.shared ?? true) && canShare();
  }

  /**
   * Subscribes to Mercure selectors: exact topics, URI templates, or `*`
   * (`GET /.well-known/mercure`).
   */
  subscribe(selectors: string | string[], options: SubscribeOptions = {}): Subscription {
    const list = typeof selectors === 'string' ? [selectors] : selectors;
    if (list.length === 0) throw new TypeError('Tidings.subscribe: at least one selector');
    const params = list.map((s): [string, string] => ['topic', s]);
    return this.track(MERCURE, params, options);
  }

  /**
   * Subscribes to the caller's session events with these names, every name when none
   * (`GET /sse/event-stream`); each arrives with its name as `type`.
   */
  session(eventNames: string | string[] = [], options: SubscribeOptions = {}): Subscription {
    const list = typeof eventNames === 'string' ? [eventNames] : eventNames;
    const params = list.map((n): [string, string] => ['eventName', n]);
    return this.track('sse/event-stream', params, options);
  }

  /** Closes every subscription of this client. */
  close(): void {
    for (const subscription of this.subscriptions) subscription.close();
    this.subscriptions.clear();
    this.group?.close();
    this.group = null;
  }

  private track(path: string, params: [string, string][], options: SubscribeOptions): Subscription {
    if (this.shared && !this.group) this.group = new TabGroup({ hub: this.options.hub, ...connecting(this.options) });
    const subscription = new Subscription(this.options, this.group, path, params, options);
    this.subscriptions.add(subscription);
    subscription.on('state', (state) => {
      if (state === 'closed') this.subscriptions.delete(subscription);
    });
    return subscription;
  }
}
