// The event-stream decoder against the cases of the WHATWG standard that a hub's stream can
// hit: fields split across chunks, every line ending, comments, ids without data, bad retries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseDecoder } from '../dist/sse.js';

function decode(chunks, lastId = '') {
  const seen = [];
  const decoder = new SseDecoder(
    {
      event: (e) => seen.push(['event', e.type, e.data, e.id]),
      id: (id) => seen.push(['id', id]),
      retry: (ms) => seen.push(['retry', ms]),
    },
    lastId,
  );
  const bytes = new TextEncoder();
  for (const chunk of chunks) decoder.push(typeof chunk === 'string' ? bytes.encode(chunk) : chunk);
  return seen;
}

test('events, names, multi-line data and ids carried over', () => {
  const seen = decode([':\n\nid: 1\ndata: a\ndata: b\n\nevent: chat\ndata: {"x":1}\n\n']);
  assert.deepEqual(seen, [
    ['event', 'message', 'a\nb', '1'],
    ['event', 'chat', '{"x":1}', '1'],
  ]);
});

test('any split of the bytes, any line ending, gives the same events', () => {
  const text = 'id: x\r\nevent: e\r\ndata: héllo\r\n\r\nid: y\rdata: 2\r\rdata:3\n\n';
  const whole = decode([text]);
  assert.deepEqual(whole, [
    ['event', 'e', 'héllo', 'x'],
    ['event', 'message', '2', 'y'],
    ['event', 'message', '3', 'y'],
  ]);
  const bytes = new TextEncoder().encode(text);
  for (let cut = 1; cut < bytes.length; cut++) {
    assert.deepEqual(decode([bytes.slice(0, cut), bytes.slice(cut)]), whole, `cut at ${cut}`);
  }
});

test('an id without data moves the last id; a retry must be digits; unknown fields are ignored', () => {
  const seen = decode(['id: start\n\nretry: 250\nretry: 1.5\nfoo: bar\ndata\n\n']);
  assert.deepEqual(seen, [
    ['id', 'start'],
    ['retry', 250],
    ['event', 'message', '', 'start'],
  ]);
});

test('an id with NUL is ignored; an incomplete event is not dispatched', () => {
  assert.deepEqual(decode(['id: a\0b\ndata: 1\n\ndata: 2\n'], 'before'), [['event', 'message', '1', 'before']]);
});

test("selector lines are gathered on the event they lead, and reset after it", () => {
  const seen = [];
  const decoder = new SseDecoder({ event: (e) => seen.push(e) });
  decoder.push(
    new TextEncoder().encode('selector: /a/{id}\nselector: *\nid: 1\ndata: x\n\nid: 2\ndata: y\n\n'),
  );
  assert.deepEqual(seen[0].selectors, ['/a/{id}', '*']);
  assert.equal(seen[1].selectors, undefined);
});
