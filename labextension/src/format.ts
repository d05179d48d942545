/**
 * How numbers, durations and names read in the panel. Pure functions, tested with Jest.
 */

import type { Model, Runner } from './types';

/** Binary units, as `jupyter modelrunner ls` prints them: `93.81 MiB`. */
export function formatBytes(size: number | undefined | null): string {
  if (size === undefined || size === null || !Number.isFinite(size)) {
    return '—';
  }
  let value = size;
  for (const unit of ['B', 'KiB', 'MiB', 'GiB']) {
    if (Math.abs(value) < 1024) {
      return unit === 'B' ? `${Math.round(value)} B` : `${value.toFixed(2)} ${unit}`;
    }
    value /= 1024;
  }
  return `${value.toFixed(2)} TiB`;
}

const UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, '': 1 };

/**
 * A runner's keep_alive in seconds: -1 for never, null when unknown. The server sends seconds (negative: never);
 * older ones sent text (`5m`, `30s`, `1.5s`, `never`, `default`).
 */
export function keepAliveSeconds(keepAlive: string | number): number | null {
  if (typeof keepAlive === 'number') {
    return Number.isFinite(keepAlive) ? (keepAlive < 0 ? -1 : keepAlive) : null;
  }
  const text = keepAlive.trim().toLowerCase();
  if (text === 'never' || text === '-1') {
    return -1;
  }
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/.exec(text);
  if (!match) {
    return null;
  }
  return parseFloat(match[1]) * UNITS[match[2] ?? ''];
}

/** `4:05`, `1:02:03`: a countdown's remaining time. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${rest}` : `${m}:${rest}`;
}

/**
 * What the keep-alive means for this runner right now: loading, in use, kept loaded, or the time left
 * before the scheduler unloads it (its `expires_at`, else `last_used + keep_alive`, from the server;
 * `nowSeconds` is this browser's clock, so a skewed clock skews the countdown, never the unload).
 */
export function keepAliveText(runner: Runner, nowSeconds: number): string {
  if (runner.loading || runner.state === 'loading') {
    return 'loading…';
  }
  if (runner.in_use) {
    return runner.requests > 1 ? `in use (${runner.requests} requests)` : 'in use';
  }
  const keep = keepAliveSeconds(runner.keep_alive);
  if (keep === null) {
    return `keep-alive ${runner.keep_alive}`;
  }
  if (keep < 0) {
    return 'kept loaded';
  }
  const left = (typeof runner.expires_at === 'number' ? runner.expires_at : runner.last_used + keep) - nowSeconds;
  return left > 0 ? `unloads in ${formatDuration(left)}` : 'unloading…';
}

/** The name users know a model by: its first tag, or its short id when untagged. */
export function modelName(model: Model): string {
  return model.tags[0] ?? shortId(model.id);
}

/** The 12 hex characters Docker shows for an id. */
export function shortId(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}

/** A familiar name: Docker Hub's `docker.io/` prefix and `:latest` are implied. */
export function familiar(name: string): string {
  return name.replace(/^(docker\.io|index\.docker\.io)\//, '');
}

/** A long name cut into pieces after each `/` and before each `:`, where a narrow panel may wrap it. */
export function nameParts(name: string): string[] {
  return name.split(/(?<=\/)|(?=:)/);
}

/** `494M`, `1.2K`, `7`: a count as the Hub shows it. */
export function formatCount(count: number | null | undefined): string {
  if (count === null || count === undefined) {
    return '';
  }
  for (const [unit, size] of [['B', 1e9], ['M', 1e6], ['K', 1e3]] as const) {
    if (count >= size) {
      const value = count / size;
      return `${value < 10 ? value.toFixed(1) : value.toFixed(0)}${unit}`;
    }
  }
  return String(count);
}

/**
 * What to ask the Hub's search for, from what is typed in the pull box: the repository part of an `hf.co/…`,
 * `huggingface.co/…` or `hf://…` reference (no tag); null when too short to be worth a request.
 */
export function hubQuery(typed: string): string | null {
  const query = typed
    .trim()
    .replace(/^(hf:\/\/|(https?:\/\/)?(hf\.co|huggingface\.co)\/)/i, '')
    .replace(/:[^/]*$/, '');
  return query.length >= 2 ? query : null;
}
