/**
 * One stream per browser: the tabs of an origin that use the same hub elect a leader (a Web
 * Lock), the leader holds one stream per endpoint for the union of every tab's subscriptions
 * (Mercure with `withSelectors=1`, so that each update names the selectors it matched; session
 * streams by event name) and passes every event to every tab over a `BroadcastChannel`, where
 * each subscription takes its own.
 *
 * Positions. Every tab hears every event of a shared stream, in order, and logs its ids. A
 * subscription's resume point is the shared stream's position (the last id its tab heard while
 * it existed), stored where a lone subscription stores its last id. When the leader opens or
 * reopens a stream (the union changed, a reloaded tab comes back with an older position, a new
 * leader takes over) it starts from the earliest position anyone needs, and each subscription
 * skips the replayed ids that its tab's log shows it already had: nothing lost, nothing twice.
 *
 * Written here, not taken from a package: the election and the hand-over are a few messages,
 * and the resume rules are Tidings' own.
 */
import {
  Connection,
  type ConnectionOptions,
  type ConnectionState,
  type Listener,
  streamUrl,
  TidingsError,
} from './connection.js';
import type { SseEvent } from './sse.js';

/** The Mercure endpoint, relative to the hub. */
export const MERCURE = '.well-known/mercure';

/** How many of a shared stream's ids each tab remembers (to skip what a replay repeats). */
const LOG_SIZE = 10_000;
/** How many of its newest ids a tab sends with its subscriptions (to order its position). */
const TAIL = 64;
/** How long a new leader gathers the tabs' subscriptions before it opens the streams. */
const GATHER_MS = 100;
/** How often the leader drops the subscriptions of tabs that are gone without a word. */
const SWEEP_MS = 5_000;

type Params = [string, string][];

/** What the tabs say to each other. */
type Message =
  /** A subscription, with the position it resumes from (`pos`) and its tab's newest ids. */
  | { t: 'sub'; tab: string; id: string; path: string; params: Params; pos: string | null; tail: string[] }
  | { t: 'unsub'; tab: string; id: string }
  | { t: 'bye'; tab: string }
  /** A new leader asks every tab for its subscriptions. */
  | { t: 'who' }
  /** The leader (re)opens the stream of `path` from `id`: what comes next may repeat. */
  | { t: 'from'; path: string; id: string | null }
  | { t: 'ev'; path: string; e: SseEvent }
  /** The stream's position moved without an event. */
  | { t: 'pos'; path: string; id: string }
  | { t: 'state'; path: string; state: ConnectionState }
  /** A final error, for the subscriptions named (`tab id`), or all of `path`'s. */
  | { t: 'err'; path: string; to: string[] | null; status: number; code: string; message: string };

/**
 * The ids a tab heard on one shared stream, in order (the newest {@link LOG_SIZE} or more).
 * (Exported for its tests, as {@link earliest} is; not an entry point of the package.)
 */
export class Log {
  private readonly seq = new Map<string, number>();
  private order: string[] = [];
  /** The sequence number of `order[0]`. */
  private first = 1;
  /** The stream's position: the last id heard. */
  last: string | null = null;

  add(id: string): void {
    this.last = id;
    if (this.seq.has(id)) return;
    this.seq.set(id, this.first + this.order.length);
    this.order.push(id);
    if (this.order.length > 2 * LOG_SIZE) {
      for (const old of this.order.splice(0, LOG_SIZE)) this.seq.delete(old);
      this.first += LOG_SIZE;
    }
  }

  /** Where `id` stands (a larger number is later), if this tab heard it. */
  at(id: string): number | undefined {
    return this.seq.get(id);
  }

  tail(): string[] {
    return this.order.slice(-TAIL);
  }

  /** Learns the ids another tab heard after the last one this tab knows of them. */
  merge(tail: string[]): void {
    let known = -1;
    for (let i = tail.length - 1; i >= 0; i--) {
      if (this.seq.has(tail[i])) {
        known = i;
        break;
      }
    }
    if (known === -1 && this.order.length > 0) return; // Nothing in common: no order to learn.
    const last = this.last;
    for (const id of tail.slice(known + 1)) this.add(id);
    this.last = last;
  }

  /**
   * The ids after `start` up to `pos` (all up to `pos` when `start` is older than this log):
   * what a subscription at `pos` already had of a stream reopened from `start`.
   */
  had(start: string | null, pos: string | null): Set<string> | null {
    if (start === null || pos === null || start === pos) return null;
    const p = this.seq.get(pos);
    if (p === undefined) return null;
    const s = this.seq.get(start) ?? this.first - 1;
    if (s >= p) return null;
    return new Set(this.order.slice(s + 1 - this.first, p + 1 - this.first));
  }
}

/** Of these positions, the one heard first; one this tab never heard counts as older. */
export function earliest(log: Log, ids: (string | null)[]): string | null {
  let best: string | null = null;
  let bestAt = Infinity;
  for (const id of ids) {
    if (id === null) continue;
    const at = log.at(id) ?? -1;
    if (at < bestAt) {
      best = id;
      bestAt = at;
    }
  }
  return best;
}

/** A subscription of this tab. */
interface Local {
  id: string;
  path: string;
  params: Params;
  listener: Listener;
  /** The shared stream's position as far as this subscription had it. */
  pos: string | null;
  /** After a reopen from an earlier position: the replayed ids this subscription already had. */
  skip: Set<string> | null;
  /** Its selectors (Mercure) or event names (session; `null`: every name). */
  wants: Set<string> | null;
}

/** A subscription as the leader knows it. */
interface Member {
  tab: string;
  id: string;
  path: string;
  params: Params;
}

/** A stream the leader holds. */
interface Held {
  connection: Connection;
  params: Params;
  key: string;
  state: ConnectionState;
  /** The members it was opened for, and those added by its last reopen (not yet confirmed). */
  members: Set<string>;
  fresh: Set<string>;
}

const isControl = (e: SseEvent) => e.type === 'tidings-gap' || e.type === 'tidings-disconnect';

function matches(local: Local, e: SseEvent): boolean {
  if (isControl(e)) return true;
  if (local.path === MERCURE) return e.selectors?.some((s) => local.wants!.has(s)) ?? false;
  return local.wants === null || local.wants.has(e.type);
}

/** The union of `members`' params, as the leader's stream asks for it. */
function union(path: string, members: Member[]): Params {
  const names = new Set<string>();
  let everyName = false;
  for (const member of members) {
    if (path !== MERCURE && member.params.length === 0) everyName = true;
    for (const [, value] of member.params) names.add(value);
  }
  if (path !== MERCURE) return everyName ? [] : [...names].sort().map((n) => ['eventName', n]);
  return [...[...names].sort().map((s): [string, string] => ['topic', s]), ['withSelectors', '1']];
}

const randomId = () => Math.random().toString(36).slice(2) + Date.now().toString(36);

/**
 * A page (or worker) with Web Locks and `BroadcastChannel`, both needed to share streams between
 * tabs. (Node has both in recent versions, but no tabs: there each subscription streams alone.)
 */
export function canShare(): boolean {
  return (
    typeof BroadcastChannel === 'function' &&
    typeof addEventListener === 'function' &&
    typeof navigator !== 'undefined' &&
    !!navigator.locks
  );
}

/** How the leader's streams are made. */
export interface GroupOptions extends Omit<ConnectionOptions, 'url'> {
  /** Tidings' base URL (ends with `/`). */
  hub: string;
}

/** This tab's part in the group of tabs sharing streams to one hub. */
export class TabGroup {
  private readonly tab = randomId();
  private readonly channel: BroadcastChannel;
  private readonly locals = new Map<string, Local>();
  private readonly logs = new Map<string, Log>();
  private closed = false;
  private release: (() => void) | null = null;
  // The leader's part.
  private leading = false;
  private resign: (() => void) | null = null;
  private readonly members = new Map<string, Member>();
  /** Positions announced since the last open, per path: where a stream must start from. */
  private readonly needs = new Map<string, (string | null)[]>();
  private readonly held = new Map<string, Held>();
  private syncing: ReturnType<typeof setTimeout> | null = null;
  private sweeping: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly options: GroupOptions) {
    this.channel = new BroadcastChannel(`tidings ${options.hub}`);
    this.channel.onmessage = (m: MessageEvent<Message>) => this.receive(m.data);
    const locks = navigator.locks;
    // Held while this tab lives: the leader asks the browser which tabs still do.
    void locks.request(`tidings tab ${this.tab}`, () =>
      this.closed ? undefined : new Promise<void>((resolve) => (this.release = resolve)),
    );
    void locks.request(`tidings leader ${options.hub}`, () => {
      if (this.closed) return undefined;
      return new Promise<void>((resolve) => {
        this.resign = resolve;
        this.lead();
      });
    });
    addEventListener('pagehide', this.hidden);
    addEventListener('pageshow', this.shown);
  }

  /** Adds a subscription of this tab; `stored` is the position a reload resumes from. */
  join(path: string, params: Params, stored: string | null, listener: Listener): { stop(): void } {
    const id = randomId();
    const local: Local = {
      id,
      path,
      params,
      listener,
      pos: stored ?? this.log(path).last,
      skip: null,
      wants: path === MERCURE || params.length > 0 ? new Set(params.map(([, v]) => v)) : null,
    };
    this.locals.set(id, local);
    this.announce(local, stored);
    return {
      stop: () => {
        if (!this.locals.delete(id)) return;
        this.post({ t: 'unsub', tab: this.tab, id });
      },
    };
  }

  /** Leaves the group: this tab's subscriptions end, another tab leads if this one did. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.locals.clear();
    this.post({ t: 'bye', tab: this.tab });
    this.stepDown();
    this.release?.();
    removeEventListener('pagehide', this.hidden);
    removeEventListener('pageshow', this.shown);
    this.channel.close();
  }

  private readonly hidden = () => this.post({ t: 'bye', tab: this.tab });
  private readonly shown = (event: PageTransitionEvent) => {
    // Back from the back-forward cache: the leader dropped this tab's subscriptions.
    if (event.persisted) for (const local of this.locals.values()) this.announce(local, local.pos);
  };

  private log(path: string): Log {
    let log = this.logs.get(path);
    if (!log) this.logs.set(path, (log = new Log()));
    return log;
  }

  private announce(local: Local, pos: string | null): void {
    const { id, path, params } = local;
    this.post({ t: 'sub', tab: this.tab, id, path, params, pos, tail: this.log(path).tail() });
  }

  /** Says `message` to the other tabs and to this one. */
  private post(message: Message): void {
    if (!this.closed || message.t === 'bye') this.channel.postMessage(message);
    this.receive(message);
  }

  private receive(message: Message): void {
    switch (message.t) {
      case 'sub':
      case 'unsub':
      case 'bye':
        if (this.leading) this.member(message);
        return;
      case 'who':
        for (const local of this.locals.values()) this.announce(local, local.pos);
        return;
      case 'from': {
        const log = this.log(message.path);
        for (const local of this.of(message.path)) local.skip = log.had(message.id, local.pos);
        return;
      }
      case 'ev':
        return this.heard(message.path, message.e);
      case 'pos': {
        this.log(message.path).add(message.id);
        for (const local of this.of(message.path)) {
          if (local.skip) continue;
          local.pos = message.id;
          local.listener.id(message.id);
        }
        return;
      }
      case 'state':
        for (const local of this.of(message.path)) {
          if (message.state === 'closed') this.locals.delete(local.id);
          local.listener.state(message.state);
        }
        return;
      case 'err': {
        const error = new TidingsError(message.status, message.code, message.message);
        for (const local of this.of(message.path)) {
          if (message.to && !message.to.includes(`${this.tab} ${local.id}`)) continue;
          this.locals.delete(local.id);
          local.listener.error(error);
          local.listener.state('closed');
        }
        return;
      }
    }
  }

  private of(path: string): Local[] {
    return [...this.locals.values()].filter((local) => local.path === path);
  }

  /** An event of a shared stream: each subscription of this tab takes it if it is its own. */
  private heard(path: string, e: SseEvent): void {
    if (isControl(e)) {
      // Not a position: the id it carries is the stream's, which may be behind a subscription's.
      for (const local of this.of(path)) local.listener.event({ ...e, id: '' });
      return;
    }
    this.log(path).add(e.id);
    for (const local of this.of(path)) {
      const mine = matches(local, e);
      if (local.skip) {
        // Replayed after a reopen: what it had is skipped, and its position stays where it was
        // until the first update of its own it did not have (the replay has passed it then).
        if (!mine || local.skip.has(e.id)) continue;
        local.skip = null;
      }
      local.pos = e.id;
      if (mine) local.listener.event(e);
      else local.listener.id(e.id);
    }
  }

  // ---- The leader ----

  private lead(): void {
    this.leading = true;
    this.schedule(GATHER_MS);
    this.post({ t: 'who' });
    this.sweeping = setInterval(() => void this.sweep(), SWEEP_MS);
  }

  private stepDown(): void {
    if (!this.leading) return;
    this.leading = false;
    clearTimeout(this.syncing ?? undefined);
    clearInterval(this.sweeping ?? undefined);
    this.syncing = null;
    for (const held of this.held.values()) held.connection.stop();
    this.held.clear();
    this.members.clear();
    this.needs.clear();
    this.resign?.();
  }

  private member(message: Extract<Message, { t: 'sub' | 'unsub' | 'bye' }>): void {
    if (message.t === 'bye') {
      for (const [key, member] of this.members) if (member.tab === message.tab) this.members.delete(key);
    } else if (message.t === 'unsub') {
      this.members.delete(`${message.tab} ${message.id}`);
    } else {
      const { tab, id, path, params, pos, tail } = message;
      this.members.set(`${tab} ${id}`, { tab, id, path, params });
      const log = this.log(path);
      let needs = this.needs.get(path);
      // A stream not held yet starts from this tab's own position at the earliest.
      if (!needs) this.needs.set(path, (needs = this.held.has(path) ? [] : [log.last]));
      needs.push(pos);
      if (tab !== this.tab) log.merge(tail);
    }
    this.schedule();
  }

  /** Drops the subscriptions of tabs that closed without a word (crashed, killed). */
  private async sweep(): Promise<void> {
    const state = await navigator.locks.query();
    // (Pending too: a tab's lock is granted a moment after its first subscription is told.)
    const alive = new Set([...(state.held ?? []), ...(state.pending ?? [])].map((lock) => lock.name));
    let dropped = false;
    for (const [key, member] of this.members) {
      if (!alive.has(`tidings tab ${member.tab}`)) {
        this.members.delete(key);
        dropped = true;
      }
    }
    if (dropped) this.schedule();
  }

  private schedule(ms = 20): void {
    if (this.syncing !== null || !this.leading) return;
    this.syncing = setTimeout(() => {
      this.syncing = null;
      this.sync();
    }, ms);
  }

  /** Makes the held streams match the members: opened, reopened, closed. */
  private sync(): void {
    const paths = new Set([...this.members.values()].map((m) => m.path));
    for (const path of this.held.keys()) paths.add(path);
    for (const path of paths) {
      const members = [...this.members.entries()].filter(([, m]) => m.path === path);
      const held = this.held.get(path);
      const needs = this.needs.get(path) ?? [];
      this.needs.delete(path);
      if (members.length === 0) {
        held?.connection.stop();
        this.held.delete(path);
        continue;
      }
      const params = union(path, members.map(([, m]) => m));
      const key = JSON.stringify(params);
      const log = this.log(path);
      const current = held ? held.connection.lastId : null;
      const start = earliest(log, [current, ...needs]);
      const keys = new Set(members.map(([k]) => k));
      if (held && held.key === key && start === current) {
        held.members = keys;
        // The newcomers learn where the stream stands.
        this.post({ t: 'state', path, state: held.state });
        continue;
      }
      this.post({ t: 'from', path, id: start });
      if (held) {
        held.fresh = new Set([...keys].filter((k) => !held.members.has(k)));
        held.members = keys;
        held.params = params;
        held.key = key;
        held.connection.lastId = start;
        held.connection.restart();
      } else {
        this.open(path, params, key, keys, start);
      }
    }
  }

  private open(path: string, params: Params, key: string, members: Set<string>, start: string | null): void {
    const held = { params, key, state: 'connecting', members, fresh: new Set(members) } as Held;
    const current = () => this.held.get(path) === held;
    this.held.set(path, held);
    held.connection = new Connection(
      {
        ...this.options,
        url: (lastId) => streamUrl(this.options.hub, path, held.params, lastId).toString(),
      },
      {
        event: (e) => current() && this.post({ t: 'ev', path, e }),
        id: (id) => current() && this.post({ t: 'pos', path, id }),
        state: (state) => {
          if (!current()) return;
          held.state = state;
          if (state === 'open') held.fresh.clear();
          if (state === 'closed') {
            this.held.delete(path);
            for (const k of held.members) this.members.delete(k);
          }
          this.post({ t: 'state', path, state });
        },
        error: (error) => {
          if (!current()) return;
          const { status, code, message } = error;
          // Refused for what the last reopen added (a bad selector, too many): those
          // subscriptions get the error, the others go on from where the stream was.
          if (status === 400 && held.fresh.size > 0 && held.fresh.size < held.members.size) {
            const to = [...held.fresh];
            this.held.delete(path);
            for (const k of to) this.members.delete(k);
            this.needs.set(path, [held.connection.lastId]);
            this.post({ t: 'err', path, to, status, code, message });
            this.schedule(0);
            return;
          }
          this.held.delete(path);
          for (const k of held.members) this.members.delete(k);
          this.post({ t: 'err', path, to: null, status, code, message });
        },
      },
      start,
    );
  }
}
