/**
 * A pull's progress, folded from its stream of events. Pure, so the sidebar, the status bar and the tests
 * all read the same numbers.
 */

import type { LayerProgress, Model, ProgressEvent } from './types';

export type PullPhase = 'running' | 'success' | 'error' | 'cancelled';

export interface PullState {
  reference: string;
  phase: PullPhase;
  /** The latest message from the server (or the error's). */
  message: string;
  /** Bytes of the whole pull, and how many are done; 0 until the first progress event. */
  total: number;
  pulled: number;
  /** Layers in the order they first appeared. */
  layers: LayerProgress[];
  warnings: string[];
  /** The pulled model, once `success` arrives. */
  model: Model | null;
  /** The HTTP status an error carried, if any. */
  status: number | null;
}

export function initialPull(reference: string): PullState {
  return {
    reference,
    phase: 'running',
    message: `Resolving ${reference}…`,
    total: 0,
    pulled: 0,
    layers: [],
    warnings: [],
    model: null,
    status: null
  };
}

/** Whether a parsed NDJSON value is one of the server's progress events. */
export function isProgressEvent(value: unknown): value is ProgressEvent {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const type = (value as { type?: unknown }).type;
  return type === 'progress' || type === 'success' || type === 'warning' || type === 'error';
}

/** The state after one event. Never mutates `state`. */
export function applyEvent(state: PullState, event: ProgressEvent): PullState {
  switch (event.type) {
    case 'progress': {
      let layers = state.layers;
      if (event.layer) {
        const layer = event.layer;
        const index = layers.findIndex(l => l.id === layer.id);
        layers =
          index < 0 ? [...layers, { ...layer }] : layers.map((l, i) => (i === index ? { ...layer } : l));
      }
      const total = event.total ?? state.total;
      // Events may be dropped under backpressure but never reordered; keep the larger count anyway.
      const pulled = Math.max(state.pulled, event.pulled ?? state.pulled);
      return { ...state, message: event.message, total, pulled, layers };
    }
    case 'warning':
      return { ...state, warnings: [...state.warnings, event.message] };
    case 'success': {
      // Everything is here: show full bars even if the last progress event was throttled away.
      const layers = state.layers.map(l => ({ ...l, current: l.size }));
      return {
        ...state,
        phase: 'success',
        message: event.message,
        pulled: state.total,
        layers,
        model: event.model ?? null
      };
    }
    case 'error':
      return { ...state, phase: 'error', message: event.message, status: event.status ?? null };
  }
}

/** Fraction done in [0, 1], or null while the size is unknown. */
export function fraction(done: number, total: number): number | null {
  if (total <= 0) {
    return null;
  }
  return Math.min(1, Math.max(0, done / total));
}

/** Whole percent for display; a finished pull is exactly 100. */
export function percent(state: PullState): number | null {
  if (state.phase === 'success') {
    return 100;
  }
  const f = fraction(state.pulled, state.total);
  return f === null ? null : Math.floor(f * 100);
}
