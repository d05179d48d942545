import { applyEvent, fraction, initialPull, isProgressEvent, percent, PullState } from '../src/progress';
import type { ProgressEvent } from '../src/types';

const layer = (id: string, size: number, current: number) => ({ id, size, current });

function fold(events: ProgressEvent[]): PullState {
  return events.reduce(applyEvent, initialPull('ai/tiny'));
}

describe('pull progress', () => {
  it('tracks the total and every layer, in first-seen order', () => {
    const state = fold([
      { type: 'progress', message: 'a', total: 300, pulled: 50, layer: layer('sha256:aaa', 100, 50) },
      { type: 'progress', message: 'b', total: 300, pulled: 150, layer: layer('sha256:bbb', 200, 100) },
      { type: 'progress', message: 'c', total: 300, pulled: 200, layer: layer('sha256:aaa', 100, 100) }
    ]);
    expect(state.phase).toBe('running');
    expect(state.message).toBe('c');
    expect(state.pulled).toBe(200);
    expect(state.layers).toEqual([layer('sha256:aaa', 100, 100), layer('sha256:bbb', 200, 100)]);
    expect(percent(state)).toBe(66);
  });

  it('reaches 100 % on success even when the last progress event was throttled away', () => {
    const model = { id: 'sha256:abc', tags: ['ai/tiny:latest'], created: 0, config: {}, engine: null, engine_error: null };
    const state = fold([
      { type: 'progress', message: 'a', total: 300, pulled: 290, layer: layer('sha256:aaa', 300, 290) },
      { type: 'success', message: 'Pulled ai/tiny:latest (abc), downloaded 300 B', model }
    ]);
    expect(state.phase).toBe('success');
    expect(percent(state)).toBe(100);
    expect(state.layers[0].current).toBe(300);
    expect(state.model?.id).toBe('sha256:abc');
  });

  it('ends in the error state with the server message and status', () => {
    const state = fold([
      { type: 'progress', message: 'a', total: 300, pulled: 10 },
      { type: 'error', message: 'digest mismatch for sha256:aaa', status: 502 }
    ]);
    expect(state.phase).toBe('error');
    expect(state.message).toBe('digest mismatch for sha256:aaa');
    expect(state.status).toBe(502);
    expect(percent(state)).toBe(3);
  });

  it('collects warnings without changing the numbers', () => {
    const state = fold([{ type: 'warning', message: 'no license' }]);
    expect(state.warnings).toEqual(['no license']);
    expect(percent(state)).toBeNull();
  });

  it('never counts backwards when events arrive out of step', () => {
    const state = fold([
      { type: 'progress', message: 'a', total: 100, pulled: 60 },
      { type: 'progress', message: 'b', total: 100, pulled: 40 }
    ]);
    expect(state.pulled).toBe(60);
  });

  it('does not mutate the state it is given', () => {
    const before = initialPull('ai/tiny');
    const copy = JSON.parse(JSON.stringify(before));
    applyEvent(before, { type: 'progress', message: 'x', total: 1, pulled: 1, layer: layer('l', 1, 1) });
    expect(before).toEqual(copy);
  });

  it('recognises only the four event types', () => {
    expect(isProgressEvent({ type: 'progress', message: '' })).toBe(true);
    expect(isProgressEvent({ type: 'error', message: '' })).toBe(true);
    expect(isProgressEvent({ type: 'heartbeat' })).toBe(false);
    expect(isProgressEvent(null)).toBe(false);
    expect(isProgressEvent('progress')).toBe(false);
  });

  it('has no fraction while the size is unknown', () => {
    expect(fraction(5, 0)).toBeNull();
    expect(fraction(150, 100)).toBe(1);
  });
});
