/**
 * The model runner's events on the Jupyter server's event bus (`jupyter_modelrunner/events.py`, schema
 * `event_schemas/engine/v1.yaml`), and what they do to the sidebar's view of the runners and pulls. Pure:
 * the state applies them, the tests fold them.
 */

import { modelName, shortId } from './format';
import type { Model, Runner } from './types';

/** The schema's `$id`: JupyterLab's event stream carries it as each emission's `schema_id`. */
export const EVENT_SCHEMA_ID = 'https://events.jupyter.org/jupyter_modelrunner/engine/v1';

export type EngineAction = 'loading' | 'ready' | 'unloaded' | 'crashed' | 'sleeping' | 'waking';

/** An engine's lifecycle: `loading` (then a tick a second with `elapsed` and `log`), `ready`, `unloaded`, `crashed`. */
export interface EngineEvent {
  action: EngineAction;
  /** The model's short id (12 hex digits). */
  model: string;
  engine: string;
  model_id?: string;
  model_name?: string;
  mode?: string;
  reason?: string;
  /** Seconds since the engine started (`loading` ticks). */
  elapsed?: number;
  /** The engine's last output line (`loading` ticks). */
  log?: string;
  device?: string;
  context_size?: number | null;
  context_source?: string | null;
  slots?: number | null;
  memory?: number;
  /** Seconds it stays loaded after a request (negative: until unloaded), as `engines/ps` gives it. */
  keep_alive?: Runner['keep_alive'];
  /** When it unloads if nothing uses it (Unix seconds); null while in use or kept for good. */
  expires_at?: number | null;
  implementation?: string;
  why?: string;
  exit_code?: number | null;
}

export type PullStage = 'started' | 'progress' | 'succeeded' | 'failed' | 'cancelled';

/** A pull's summary: when it starts, at most once a second while it runs, and how it ended. */
export interface PullSummary {
  action: 'pull';
  /** The reference as it was asked for. */
  model: string;
  state: PullStage;
  fraction: number | null;
  model_id?: string;
  model_name?: string;
  message?: string;
}

/** A model added (packaged), tagged, untagged or removed by any client: the list is read again. */
export interface StoreChange {
  action: 'models';
  /** Its first tag, or its id when it has none left. */
  model: string;
  change: 'added' | 'tagged' | 'untagged' | 'removed';
  model_id?: string;
}

export type ServerEvent = EngineEvent | PullSummary | StoreChange;

const ENGINE_ACTIONS: readonly string[] = ['loading', 'ready', 'unloaded', 'crashed', 'sleeping', 'waking'];

/** Our event in one emission of JupyterLab's event stream (`{schema_id, ...data}`), or null for any other. */
export function parseEmission(emission: unknown): ServerEvent | null {
  if (typeof emission !== 'object' || emission === null) {
    return null;
  }
  const { schema_id: schemaId, ...data } = emission as { schema_id?: unknown; [key: string]: unknown };
  if (schemaId !== EVENT_SCHEMA_ID || typeof data.model !== 'string') {
    return null;
  }
  if (data.action === 'pull') {
    return typeof data.state === 'string' ? (data as unknown as PullSummary) : null;
  }
  if (data.action === 'models') {
    return typeof data.change === 'string' ? (data as unknown as StoreChange) : null;
  }
  if (typeof data.action === 'string' && ENGINE_ACTIONS.includes(data.action) && typeof data.engine === 'string') {
    return data as unknown as EngineEvent;
  }
  return null;
}

/** What the sidebar knows from events between two reads of `engines/ps`. */
export interface LiveState {
  runners: Runner[];
  /** Pulls that run elsewhere (a kernel, another tab, the sidebar's own) as their summaries tell, by reference. */
  pulls: PullSummary[];
  /** The last engine that exited on its own, said for the runners view; null once anything else happens to it. */
  crash: string | null;
}

/** What an event leaves unknown, to read from the server once. */
export interface Refresh {
  models: boolean;
}

/** Whether `runner` is the one `event` is about: same engine and model, and same mode when both say. */
export function isRunnerOf(runner: Runner, event: EngineEvent): boolean {
  return (
    runner.backend_name === event.engine &&
    shortId(runner.model_id) === event.model &&
    (!event.mode || !runner.mode || runner.mode === event.mode)
  );
}

/**
 * The state after one event, and what to re-read. Never mutates `state`.
 *
 * `models` names a model the event names only by short id; `now` (Unix seconds) dates a new row.
 */
export function applyServerEvent(
  state: LiveState,
  event: ServerEvent,
  context: { models: readonly Model[]; now: number }
): { state: LiveState; refresh: Refresh } {
  if (event.action === 'models') {
    return { state, refresh: { models: true } };
  }
  if (event.action === 'pull') {
    const pulls = state.pulls.filter(p => p.model !== event.model);
    const running = event.state === 'started' || event.state === 'progress';
    return {
      state: { ...state, pulls: running ? [...pulls, event] : pulls },
      refresh: { models: event.state === 'succeeded' }
    };
  }
  const rest = state.runners.filter(r => !isRunnerOf(r, event));
  const existing = state.runners.find(r => isRunnerOf(r, event)) ?? null;
  const known = context.models.find(m => shortId(m.id) === event.model) ?? null;
  switch (event.action) {
    case 'loading': {
      const row: Runner = {
        ...(existing ?? placeholder(event, known, context.now)),
        state: 'loading',
        loading: true,
        ...(event.reason !== undefined ? { reason: event.reason } : {}),
        elapsed: event.elapsed ?? 0,
        log: event.log ?? existing?.log ?? ''
      };
      return {
        state: { ...state, runners: replace(state.runners, existing, row), crash: null },
        refresh: { models: !existing && !known && !event.model_name }
      };
    }
    case 'ready': {
      const base = existing ?? placeholder(event, known, context.now);
      const row: Runner = {
        ...base,
        model_id: event.model_id ?? base.model_id,
        model_name: event.model_name ?? base.model_name,
        mode: event.mode ?? base.mode,
        device: event.device ?? base.device,
        reason: event.reason ?? base.reason,
        state: 'ready',
        loading: false,
        // A request waits for every load; its end has no event, so the keep-alive counts from now.
        in_use: false,
        requests: 0,
        last_used: context.now,
        keep_alive: event.keep_alive ?? base.keep_alive,
        ...(event.expires_at !== undefined ? { expires_at: event.expires_at } : {}),
        memory: event.memory ?? base.memory,
        context_size: event.context_size ?? null,
        slots: event.slots ?? null,
        elapsed: undefined,
        log: undefined
      };
      return {
        state: { ...state, runners: replace(state.runners, existing, row), crash: null },
        refresh: { models: false }
      };
    }
    case 'sleeping':
    case 'waking': {
      // A GPU engine idle with its weights in RAM (vLLM's sleep mode), or on its way back: the row stays.
      if (!existing) {
        return { state, refresh: { models: false } };
      }
      const row: Runner = { ...existing, state: event.action, loading: event.action === 'waking', vram: 0 };
      return { state: { ...state, runners: replace(state.runners, existing, row) }, refresh: { models: false } };
    }
    case 'unloaded':
      return { state: { ...state, runners: rest, crash: null }, refresh: { models: false } };
    case 'crashed': {
      const name = event.model_name ?? existing?.model_name ?? (known ? modelName(known) : event.model);
      const code = event.exit_code === null || event.exit_code === undefined ? '' : ` (exit code ${event.exit_code})`;
      return {
        state: {
          ...state,
          runners: rest,
          crash: `${event.engine} for ${name} exited unexpectedly${code}; the next request starts it again.`
        },
        refresh: { models: false }
      };
    }
  }
}

/**
 * `engines/ps` read while events kept coming: the server's rows, with what only the loading ticks say (elapsed
 * time, last log line) carried over to the rows that still load.
 */
export function mergeRunners(previous: readonly Runner[], fetched: readonly Runner[]): Runner[] {
  return fetched.map(row => {
    const before = previous.find(
      r => r.backend_name === row.backend_name && r.model_id === row.model_id && r.mode === row.mode
    );
    const loading = row.loading || row.state === 'loading';
    return loading && before && before.elapsed !== undefined ? { ...row, elapsed: before.elapsed, log: before.log } : row;
  });
}

/** A row for a runner the sidebar learns of from an event before `engines/ps` lists it. */
function placeholder(event: EngineEvent, model: Model | null, now: number): Runner {
  return {
    backend_name: event.engine,
    model_name: event.model_name ?? (model ? modelName(model) : event.model),
    model_id: event.model_id ?? model?.id ?? event.model,
    mode: event.mode ?? '', // the first `loading` event does not say yet
    device: event.device ?? '',
    reason: event.reason ?? '',
    state: 'loading',
    loading: true,
    in_use: true,
    requests: 0,
    last_used: now,
    keep_alive: event.keep_alive ?? '',
    memory: event.memory ?? 0
  };
}

function replace(runners: readonly Runner[], existing: Runner | null, row: Runner): Runner[] {
  return existing ? runners.map(r => (r === existing ? row : r)) : [...runners, row];
}
