import { Signal } from '@lumino/signaling';

import { ModelRunnerClient } from '../src/client';
import {
  applyServerEvent,
  EVENT_SCHEMA_ID,
  LiveState,
  mergeRunners,
  parseEmission,
  ServerEvent
} from '../src/events';
import { ModelRunnerState, REFRESH_DELAY } from '../src/state';
import type { Model, Runner } from '../src/types';
import { fakeFetcher } from './helpers';

const HEX = '0123456789abcdef'.repeat(4);
const SHORT = HEX.slice(0, 12);
const MODEL: Model = {
  id: `sha256:${HEX}`,
  tags: ['ai/tiny:latest'],
  created: 1700000000,
  config: { format: 'gguf' },
  engine: { engine: 'llama.cpp', device: 'cpu', reason: 'gguf model → llama.cpp' },
  engine_error: null
};
const NOW = 1_800_000_000;
const EMPTY: LiveState = { runners: [], pulls: [], crash: null };

const loading = { action: 'loading', model: SHORT, engine: 'llama.cpp', reason: 'gguf model → llama.cpp' } as const;
const tick = (elapsed: number, log: string) =>
  ({ action: 'loading', model: SHORT, engine: 'llama.cpp', elapsed, log, mode: 'completion',
     model_id: MODEL.id, model_name: 'ai/tiny:latest' }) as const;
const ready = {
  action: 'ready', model: SHORT, engine: 'llama.cpp', model_id: MODEL.id, model_name: 'ai/tiny:latest',
  mode: 'completion', device: 'cpu', reason: 'gguf model → llama.cpp', context_size: 4096, slots: 8,
  memory: 1048576, keep_alive: '10m', implementation: 'llama-server'
} as const;
const unloaded = { action: 'unloaded', model: SHORT, engine: 'llama.cpp', why: 'unloaded' } as const;

function fold(events: ServerEvent[], models: Model[] = [MODEL], start: LiveState = EMPTY) {
  let state = start;
  let models_ = false;
  for (const event of events) {
    const next = applyServerEvent(state, event, { models, now: NOW });
    state = next.state;
    models_ = models_ || next.refresh.models;
  }
  return { state, refreshModels: models_ };
}

describe('server events', () => {
  it('keeps only our schema from the event stream', () => {
    expect(parseEmission({ schema_id: EVENT_SCHEMA_ID, ...unloaded })).toEqual(unloaded);
    expect(parseEmission({ schema_id: 'https://events.jupyter.org/jupyter_server/kernel_actions/v1', action: 'start', msg: '' })).toBeNull();
    expect(parseEmission({ schema_id: EVENT_SCHEMA_ID, action: 'exploded', model: SHORT, engine: 'x' })).toBeNull();
    expect(parseEmission({ schema_id: EVENT_SCHEMA_ID, action: 'ready', engine: 'x' })).toBeNull();
    expect(parseEmission('not an object')).toBeNull();
  });

  it('shows a loading row at once, named from the model list, with the ticks of its progress', () => {
    const { state, refreshModels } = fold([loading, tick(1, 'load_tensors: loading'), tick(2, 'server listening')]);
    expect(refreshModels).toBe(false);
    expect(state.runners).toHaveLength(1);
    const [row] = state.runners;
    expect(row).toMatchObject({
      backend_name: 'llama.cpp', model_name: 'ai/tiny:latest', model_id: MODEL.id, state: 'loading', loading: true,
      elapsed: 2, log: 'server listening', reason: 'gguf model → llama.cpp'
    });
  });

  it('asks for the model list when a model it does not know starts loading', () => {
    const { state, refreshModels } = fold([loading], []);
    expect(refreshModels).toBe(true);
    expect(state.runners[0].model_name).toBe(SHORT);
  });

  it('fills the row from `ready`: device, memory, context, slots, and a keep-alive counting from now', () => {
    const { state } = fold([loading, tick(1, 'x'), ready]);
    expect(state.runners).toHaveLength(1);
    expect(state.runners[0]).toMatchObject({
      state: 'ready', loading: false, device: 'cpu', memory: 1048576, context_size: 4096, slots: 8,
      keep_alive: '10m', last_used: NOW, in_use: false, mode: 'completion'
    });
    expect(state.runners[0].elapsed).toBeUndefined();
  });

  it('adds a ready runner it never saw loading (the page opened mid-load)', () => {
    const { state } = fold([ready]);
    expect(state.runners.map(r => r.model_name)).toEqual(['ai/tiny:latest']);
  });

  it('removes the row on `unloaded`, and on `crashed` says so', () => {
    const other: Runner = { ...fold([ready]).state.runners[0], backend_name: 'vllm' };
    const start = { ...EMPTY, runners: [...fold([ready]).state.runners, other] };
    expect(fold([unloaded], [MODEL], start).state.runners).toEqual([other]);

    const crashed = fold([{ action: 'crashed', model: SHORT, engine: 'llama.cpp', exit_code: -9 }], [MODEL], start);
    expect(crashed.state.runners).toEqual([other]);
    expect(crashed.state.crash).toBe(
      'llama.cpp for ai/tiny:latest exited unexpectedly (exit code -9); the next request starts it again.'
    );
    expect(fold([loading], [MODEL], crashed.state).state.crash).toBeNull();
  });

  it('shows a GPU engine that sleeps, and wakes, without dropping its row', () => {
    const sleeping = { action: 'sleeping', model: SHORT, engine: 'llama.cpp', why: 'idle (keep_alive)' } as const;
    const waking = { action: 'waking', model: SHORT, engine: 'llama.cpp' } as const;
    const asleep = fold([loading, ready, sleeping]).state.runners;
    expect(asleep.map(r => [r.state, r.loading, r.vram])).toEqual([['sleeping', false, 0]]);
    expect(fold([loading, ready, sleeping, waking]).state.runners[0].state).toBe('waking');
    expect(fold([loading, ready, sleeping, waking, ready]).state.runners[0].state).toBe('ready');
    expect(fold([sleeping]).state.runners).toEqual([]);  // nothing to show for a row never seen
  });

  it('tells runners of one model apart by mode when the event says', () => {
    const completion = fold([ready]).state.runners[0];
    const embedding = { ...completion, mode: 'embedding' };
    const start = { ...EMPTY, runners: [completion, embedding] };
    const { state } = fold([{ ...unloaded, mode: 'embedding' }], [MODEL], start);
    expect(state.runners).toEqual([completion]);
  });

  it('follows pulls from their summaries and re-reads the models when one succeeds', () => {
    const started = { action: 'pull', model: 'ai/big', state: 'started', fraction: null } as const;
    const progress = { ...started, state: 'progress', fraction: 0.25 } as const;
    const running = fold([started, progress]);
    expect(running.state.pulls).toEqual([progress]);
    expect(running.refreshModels).toBe(false);
    const done = fold([{ ...progress, state: 'succeeded', fraction: 1 }], [MODEL], running.state);
    expect(done.state.pulls).toEqual([]);
    expect(done.refreshModels).toBe(true);
    const failed = fold([{ ...progress, state: 'failed', fraction: 0.25, message: 'no' }], [MODEL], running.state);
    expect(failed.state.pulls).toEqual([]);
    expect(failed.refreshModels).toBe(false);
  });

  it('re-reads the models when any client packages, tags or removes one, and changes nothing else', () => {
    const removed = { action: 'models', model: 'ai/tiny:latest', change: 'removed', model_id: MODEL.id } as const;
    expect(parseEmission({ schema_id: EVENT_SCHEMA_ID, ...removed })).toEqual(removed);
    expect(parseEmission({ schema_id: EVENT_SCHEMA_ID, action: 'models', model: 'x' })).toBeNull();
    const loaded = fold([loading]).state;
    const after = fold([removed], [MODEL], loaded);
    expect(after.refreshModels).toBe(true);
    expect(after.state).toEqual(loaded);
  });

  it('keeps the loading progress across a read of engines/ps', () => {
    const loadingRow = fold([loading, tick(3, 'warming up')]).state.runners[0];
    const fetched: Runner = { ...loadingRow, elapsed: undefined, log: undefined, device: 'cpu', memory: 5 };
    expect(mergeRunners([loadingRow], [fetched])[0]).toMatchObject({ elapsed: 3, log: 'warming up', memory: 5 });
    const readyRow = { ...fetched, state: 'ready', loading: false };
    expect(mergeRunners([loadingRow], [readyRow])[0].elapsed).toBeUndefined();
  });
});

describe('ModelRunnerState on the event stream', () => {
  const json = (data: unknown) => new Response(JSON.stringify(data), { headers: { 'Content-Type': 'application/json' } });
  const settle = () => new Promise(resolve => setTimeout(resolve, REFRESH_DELAY + 50));

  /** A state listening to `source`, once its fallback poll's first read (at start) is done; `calls` then empty. */
  async function started(respond: (path: string) => Response | Promise<Response>) {
    const { fetcher, calls } = fakeFetcher(respond);
    const state = new ModelRunnerState(new ModelRunnerClient(fetcher));
    const source = new Signal<object, unknown>({});
    state.listen(source);
    await settle();
    expect(calls.map(c => c.path)).toEqual(['engines/ps']);
    calls.length = 0;
    return { state, source, calls };
  }

  it('updates the runners from events, without a request, and reads the models after a pull', async () => {
    const { state, source, calls } = await started(path => json(path === 'models' ? [MODEL] : []));
    let changes = 0;
    state.changed.connect(() => (changes += 1));
    try {
      state.models = [MODEL];
      source.emit({ schema_id: EVENT_SCHEMA_ID, ...loading });
      source.emit({ schema_id: EVENT_SCHEMA_ID, ...tick(1, 'x') });
      expect(state.loading).toBe(true);
      expect(state.runners[0].elapsed).toBe(1);
      source.emit({ schema_id: EVENT_SCHEMA_ID, ...ready });
      expect(state.loading).toBe(false);
      source.emit({ schema_id: 'https://events.jupyter.org/jupyter_server/contents_service/v1', action: 'save' });
      source.emit({ schema_id: EVENT_SCHEMA_ID, ...unloaded });
      expect(state.runners).toEqual([]);
      expect(changes).toBe(4);
      expect(calls).toHaveLength(0);

      source.emit({ schema_id: EVENT_SCHEMA_ID, action: 'pull', model: 'ai/tiny', state: 'succeeded', fraction: 1 });
      source.emit({ schema_id: EVENT_SCHEMA_ID, action: 'pull', model: 'ai/tiny', state: 'succeeded', fraction: 1 });
      await settle();
      expect(calls.map(c => c.path)).toEqual(['models']);
    } finally {
      state.dispose();
    }
    source.emit({ schema_id: EVENT_SCHEMA_ID, ...ready });
    expect(state.runners).toEqual([]);
  });

  it('drops a read of engines/ps that events overtook, and reads again', async () => {
    let answer: (value: Response) => void = () => undefined;
    let holdNext = false;
    const { state, source, calls } = await started(() => {
      if (!holdNext) {
        return json([]);
      }
      holdNext = false;
      return new Promise<Response>(resolve => (answer = resolve));
    });
    holdNext = true;
    try {
      const stale = state.refreshRunners();
      source.emit({ schema_id: EVENT_SCHEMA_ID, ...unloaded });
      answer(json([fold([ready]).state.runners[0]])); // listed before the unload
      await stale;
      expect(state.runners).toEqual([]);
      await settle();
      expect(calls.map(c => c.path)).toEqual(['engines/ps', 'engines/ps']);
      expect(state.runners).toEqual([]);
    } finally {
      state.dispose();
    }
  });
});
