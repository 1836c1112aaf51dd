/**
 * React hooks over the browser client: a component subscribes while it is mounted, and its
 * stream closes when it unmounts (or when what it asks for changes).
 *
 * ```jsx
 * import { Tidings } from '@tidings/client';
 * import { TidingsProvider, useTopic, useSessionEvent } from '@tidings/client/react';
 *
 * const tidings = new Tidings();
 * const Stock = ({ id }) => {
 *   const { last, state } = useTopic(`https://example.com/books/${id}`, { rewind: 1 });
 *   return <span title={state}>{last ? last.json().stock : '…'}</span>;
 * };
 * root.render(<TidingsProvider client={tidings}><Stock id="1" /></TidingsProvider>);
 * ```
 */
import { createContext, createElement, useContext, useEffect, useRef, useState, type ReactNode } from 'react';
import type { ConnectionState, SubscribeOptions, Subscription, Tidings, TidingsError, Update } from './index.js';

const Client = createContext<Tidings | null>(null);

/** Gives the components below it the client their hooks use. */
export function TidingsProvider({ client, children }: { client: Tidings; children?: ReactNode }) {
  return createElement(Client.Provider, { value: client }, children);
}

/** What a hook gives back, re-rendered as it changes. */
export interface Subscribed {
  /** The newest update (or session event) received, `null` before the first. */
  last: Update | null;
  state: ConnectionState;
  /** The error that closed the subscription, if one did. */
  error: TidingsError | null;
}

/** What the hooks take besides their selectors or event names. */
export interface HookOptions extends SubscribeOptions {
  /** Called with every update, in order (the hook re-renders with the newest only). */
  onUpdate?: (update: Update) => void;
  /** The client, when there is no {@link TidingsProvider} above. */
  client?: Tidings;
}

function useSubscribed(
  open: (client: Tidings) => Subscription,
  key: string,
  options: HookOptions,
): Subscribed {
  const provided = useContext(Client);
  const client = options.client ?? provided;
  if (!client) throw new Error('@tidings/client/react: no client — wrap the tree in <TidingsProvider client={…}> or pass { client }');
  const [seen, setSeen] = useState<Subscribed>({ last: null, state: 'connecting', error: null });
  // The newest handler, without reopening the stream when it changes.
  const onUpdate = useRef(options.onUpdate);
  onUpdate.current = options.onUpdate;
  const opener = useRef(open);
  opener.current = open;
  useEffect(() => {
    const subscription = opener.current(client);
    setSeen({ last: null, state: subscription.state, error: null });
    const offs = [
      subscription.on('update', (update) => {
        onUpdate.current?.(update);
        setSeen((s) => ({ ...s, last: update }));
      }),
      subscription.on('state', (state) => setSeen((s) => ({ ...s, state }))),
      subscription.on('error', (error) => setSeen((s) => ({ ...s, error }))),
    ];
    return () => {
      for (const off of offs) off();
      subscription.close();
    };
  }, [client, key]);
  return seen;
}

/** Subscribes to Mercure selectors while mounted (see {@link Tidings.subscribe}). */
export function useTopic(selectors: string | string[], options: HookOptions = {}): Subscribed {
  const list = typeof selectors === 'string' ? [selectors] : selectors;
  const key = JSON.stringify(['topic', list, options.rewind ?? null, options.key ?? null]);
  return useSubscribed((client) => client.subscribe(list, options), key, options);
}

/** Subscribes to the caller's session events with these names while mounted (every name when none). */
export function useSessionEvent(eventNames: string | string[] = [], options: HookOptions = {}): Subscribed {
  const list = typeof eventNames === 'string' ? [eventNames] : eventNames;
  const key = JSON.stringify(['session', list, options.rewind ?? null, options.key ?? null]);
  return useSubscribed((client) => client.session(list, options), key, options);
}
