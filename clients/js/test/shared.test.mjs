// The position rules of the shared stream (src/shared.ts): which ids a subscription already had
// when the leader reopens from an earlier position, which position is the earliest, and what a
// tab learns of another's newer ids. (The tabs themselves are tested in Chromium:
// tests/browser/client.test.mjs.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Log, earliest } from '../dist/shared.js';

const logOf = (...ids) => {
  const log = new Log();
  for (const id of ids) log.add(id);
  return log;
};

test('a reopen from an earlier position: the ids after it up to the subscription\'s were had', () => {
  const log = logOf('a', 'b', 'c', 'd', 'e');
  assert.deepEqual([...log.had('b', 'd')], ['c', 'd']);
  assert.equal(log.had('d', 'd'), null, 'at the start itself: nothing to skip');
  assert.equal(log.had('e', 'c'), null, 'behind the start: nothing to skip');
  assert.equal(log.had(null, 'c'), null, 'a fresh stream replays nothing');
  assert.equal(log.had('b', 'zz'), null, 'a position this tab never heard (a reloaded tab): it takes all');
  assert.deepEqual([...log.had('older-than-the-log', 'c')], ['a', 'b', 'c'], 'a start older than the log: all it heard');
});

test('the earliest position: the first heard, one never heard counts as older, none is a fresh start', () => {
  const log = logOf('a', 'b', 'c');
  assert.equal(earliest(log, ['c', 'b', null]), 'b');
  assert.equal(earliest(log, ['c', 'from-a-reload']), 'from-a-reload');
  assert.equal(earliest(log, [null, null]), null);
});

test('a replayed id keeps its place; the log forgets its oldest half past its size', () => {
  const log = logOf('a', 'b', 'c');
  log.add('b');
  assert.equal(log.last, 'b');
  assert.ok(log.at('b') < log.at('c'));
  const big = new Log();
  for (let n = 0; n <= 20_000; n++) big.add(`${n}`);
  assert.equal(big.at('0'), undefined);
  assert.ok(big.at('10000') < big.at('20000'));
  assert.deepEqual([...big.had('19997', '20000')], ['19998', '19999', '20000']);
});

test('a tab learns the ids another heard after the last one they share, and keeps its position', () => {
  const log = logOf('a', 'b');
  log.merge(['a', 'b', 'c', 'd']);
  assert.equal(log.last, 'b');
  assert.ok(log.at('b') < log.at('d'));
  assert.equal(earliest(log, ['d', 'b']), 'b', 'a tab ahead is not taken for one behind');
  const empty = new Log();
  empty.merge(['x', 'y']);
  assert.ok(empty.at('x') < empty.at('y'), 'a new tab adopts the order it is told');
  const other = logOf('p');
  other.merge(['x', 'y']);
  assert.equal(other.at('x'), undefined, 'nothing in common: nothing learned');
});
