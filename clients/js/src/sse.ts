/**
 * A decoder of `text/event-stream` (the WHATWG HTML standard's "event stream interpretation").
 *
 * Written here rather than taken from a package: the client must read streams with `fetch` (to
 * send an `Authorization` header, and to see the status of a refused reconnection — both out of
 * `EventSource`'s reach), the package has no runtime dependencies, and the format is short.
 */

/** One event as the stream delivered it. */
export interface SseEvent {
  /** The `event:` field, `message` when absent. */
  type: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /** The last event id after this event (the stream's, carried over from earlier events). */
  id: string;
  /**
   * The `selector:` lines: which of the stream's selectors the update matched (Tidings, on a
   * stream opened with `withSelectors=1`); absent otherwise.
   */
  selectors?: string[];
}

/** What the decoder tells of each block it completes. */
export interface SseSink {
  /** A complete event with data. */
  event(event: SseEvent): void;
  /** A block that set the last event id without data (Tidings' "where the stream starts"). */
  id?(id: string): void;
  /** A valid `retry:` field: the reconnection delay in milliseconds. */
  retry?(ms: number): void;
}

/** Feeds bytes in, calls the sink for each block completed; keeps what is left over. */
export class SseDecoder {
  private readonly text = new TextDecoder();
  private pending = '';
  /** The stream's last event id, carried across events as `EventSource` does. */
  lastId: string;
  private data: string[] = [];
  private type = '';
  private selectors: string[] = [];
  private idSet = false;
  /** A CR ended the previous chunk: an LF opening the next one belongs to it. */
  private crAtEnd = false;

  constructor(private readonly sink: SseSink, lastId = '') {
    this.lastId = lastId;
  }

  /** Decodes one chunk of the body. */
  push(chunk: Uint8Array): void {
    let text = this.text.decode(chunk, { stream: true });
    if (this.crAtEnd && text.startsWith('\n')) text = text.slice(1);
    this.crAtEnd = text.endsWith('\r');
    let buffer = this.pending + text;
    let start = 0;
    for (;;) {
      const cr = buffer.indexOf('\r', start);
      const lf = buffer.indexOf('\n', start);
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
      if (end === -1) break;
      this.line(buffer.slice(start, end));
      start = end + (buffer[end] === '\r' && buffer[end + 1] === '\n' ? 2 : 1);
    }
    this.pending = buffer.slice(start);
    buffer = '';
  }

  private line(line: string): void {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.type = value;
        break;
      case 'selector':
        this.selectors.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) {
          this.lastId = value;
          this.idSet = true;
        }
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.sink.retry?.(Number(value));
        break;
      default:
      // Unknown fields are ignored, as the standard says.
    }
  }

  private dispatch(): void {
    const { data, type, idSet, selectors } = this;
    this.data = [];
    this.type = '';
    this.selectors = [];
    this.idSet = false;
    if (data.length === 0) {
      if (idSet) this.sink.id?.(this.lastId);
      return;
    }
    const event: SseEvent = { type: type || 'message', data: data.join('\n'), id: this.lastId };
    if (selectors.length > 0) event.selectors = selectors;
    this.sink.event(event);
  }
}
