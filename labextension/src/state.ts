/**
 * What the sidebar, the status bar and the commands share: the models, the loaded runners, the pull in
 * progress and the selection. One object, one `changed` signal.
 *
 * The server tells what changes: its event bus (JupyterLab's `serviceManager.events.stream`) carries the
 * engines' `loading` (with a tick a second), `ready`, `unloaded` and `crashed`, and pull summaries, which
 * update the runners, the status bar and the model list as they happen (`events.ts`). A slow poll, and a
 * read when the tab or the panel comes back into view, only make up for events missed while the socket was
 * down, and for changes that have no event (a model deleted from a kernel).
 */

import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { ModelRunnerClient, isAbort } from './client';
import { applyServerEvent, mergeRunners, parseEmission, PullSummary } from './events';
import { applyEvent, initialPull, PullState } from './progress';
import type { Model, Runner } from './types';

/** The fallback poll: events say what changes; this only catches what was missed. */
export const FALLBACK_INTERVAL = 30000;
/** Coming back to the tab re-reads at most this often. */
export const FOCUS_THROTTLE = 2000;
/** Reads that events ask for are gathered for this long (a burst of events, one request). */
export const REFRESH_DELAY = 200;
export const CANCELLED_MESSAGE = 'Cancelled. The downloaded parts are kept: pulling again resumes.';

/** Where the server's events come from: JupyterLab's `Event.IManager.stream` (any signal of emissions). */
export type EmissionSource = ISignal<unknown, unknown>;

export class ModelRunnerState {
  constructor(readonly client: ModelRunnerClient) {
    this._poll = new Poll({
      factory: () => this._tick(),
      frequency: { interval: FALLBACK_INTERVAL, backoff: true, max: 5 * FALLBACK_INTERVAL },
      standby: 'when-hidden',
      name: 'jupyter-modelrunner:fallback'
    });
    if (typeof window !== 'undefined') {
      window.addEventListener('focus', this._onFocus);
      document.addEventListener('visibilitychange', this._onFocus);
    }
  }

  /** Follow the server's events from `source` (JupyterLab's `app.serviceManager.events.stream`). */
  listen(source: EmissionSource): void {
    this._sources.push(source);
    source.connect(this._onEmission, this);
  }

  /** Apply one emission of the server's event bus; other schemas' events are ignored. */
  handleEmission(emission: unknown): void {
    const event = parseEmission(emission);
    if (!event) {
      return;
    }
    if (event.action !== 'pull') {
      this._runnerEvents += 1;
    }
    const { state, refresh } = applyServerEvent(
      { runners: this.runners, pulls: this.remotePulls, crash: this.crash },
      event,
      { models: this.models, now: Date.now() / 1000 }
    );
    this.runners = state.runners;
    this.remotePulls = state.pulls;
    this.crash = state.crash;
    if (refresh.models) {
      this._later('models');
    }
    this._emit();
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  models: Model[] = [];
  modelsLoaded = false;
  modelsError: string | null = null;
  runners: Runner[] = [];
  runnersError: string | null = null;
  /** The last engine that exited on its own, as the runners view says it. */
  crash: string | null = null;
  /** Pulls the server reports (a kernel's, another tab's, this one's), while they run. */
  remotePulls: PullSummary[] = [];
  pull: PullState | null = null;
  selectedId: string | null = null;

  get selected(): Model | null {
    return this.models.find(m => m.id === this.selectedId) ?? null;
  }

  get pulling(): boolean {
    return this.pull?.phase === 'running';
  }

  get loading(): boolean {
    return this.runners.some(r => r.loading || r.state === 'loading');
  }

  select(id: string | null): void {
    if (id !== this.selectedId) {
      this.selectedId = id;
      this._emit();
    }
  }

  /** The panel shows or hides: read both lists once when it shows (the poll may have slept while hidden). */
  setVisible(visible: boolean): void {
    this._visible = visible;
    if (visible) {
      void this.refreshModels();
      void this._poll.refresh();
    }
  }

  async refreshModels(): Promise<void> {
    try {
      const models = await this.client.listModels();
      models.sort((a, b) => (a.tags[0] ?? a.id).localeCompare(b.tags[0] ?? b.id));
      this.models = models;
      this.modelsError = null;
      if (this.selectedId && !models.some(m => m.id === this.selectedId)) {
        this.selectedId = null;
      }
    } catch (err) {
      this.modelsError = message(err);
    }
    this.modelsLoaded = true;
    this._emit();
  }

  async refreshRunners(): Promise<void> {
    const events = this._runnerEvents;
    let runners: Runner[];
    try {
      runners = await this.client.ps();
      this.runnersError = null;
    } catch (err) {
      this.runnersError = message(err);
      this._emit();
      throw err;
    }
    if (events !== this._runnerEvents) {
      // Events arrived while the request was out: the answer may predate them. Ask again.
      this._later('runners');
      return;
    }
    this.runners = mergeRunners(this.runners, runners);
    this._emit();
  }

  /**
   * Pull `reference`, updating `pull` with every event. Resolves when the pull ends, whatever the outcome
   * (the outcome is in `pull.phase` and `pull.message`); a second pull while one runs is refused.
   */
  async pullModel(reference: string): Promise<void> {
    if (this.pulling) {
      throw new Error(`Already pulling ${this.pull?.reference}; cancel it first.`);
    }
    const controller = new AbortController();
    this._controller = controller;
    this.pull = initialPull(reference);
    this._emit();
    try {
      await this.client.pull(
        reference,
        event => {
          if (this.pull && this._controller === controller) {
            this.pull = applyEvent(this.pull, event);
            this._emit();
          }
        },
        controller.signal
      );
    } catch (err) {
      if (this.pull && this._controller === controller) {
        // The server stops at its next checkpoint (it checks every few MiB), keeping what it downloaded.
        this.pull = isAbort(err)
          ? { ...this.pull, phase: 'cancelled', message: CANCELLED_MESSAGE }
          : { ...this.pull, phase: 'error', message: message(err) };
      }
    } finally {
      if (this._controller === controller) {
        this._controller = null;
      }
    }
    const pulled = this.pull?.model;
    await this.refreshModels();
    if (pulled) {
      this.select(pulled.id);
    }
    this._emit();
  }

  cancelPull(): void {
    this._controller?.abort();
  }

  /** Forget a finished pull's report. */
  clearPull(): void {
    if (!this.pulling) {
      this.pull = null;
      this._emit();
    }
  }

  async unload(models: string[] | 'all'): Promise<string[]> {
    try {
      const result = models === 'all' ? await this.client.unloadAll() : await this.client.unload(models);
      return result.models;
    } finally {
      await this.refreshRunners().catch(() => undefined);
    }
  }

  dispose(): void {
    this._controller?.abort();
    void this._poll.stop(); // clears its pending timer, which dispose() alone leaves running
    this._poll.dispose();
    for (const source of this._sources) {
      source.disconnect(this._onEmission, this);
    }
    this._sources = [];
    for (const timer of Object.values(this._timers)) {
      clearTimeout(timer);
    }
    if (typeof window !== 'undefined') {
      window.removeEventListener('focus', this._onFocus);
      document.removeEventListener('visibilitychange', this._onFocus);
    }
    Signal.clearData(this);
  }

  private _onEmission(_: unknown, emission: unknown): void {
    this.handleEmission(emission);
  }

  private async _tick(): Promise<void> {
    if (this._visible) {
      void this.refreshModels();
    }
    await this.refreshRunners();
  }

  /** Back to the tab: events may have been missed while the browser throttled it; read once. */
  private _onFocus = (): void => {
    if (typeof document !== 'undefined' && document.visibilityState === 'hidden') {
      return;
    }
    const now = Date.now();
    if (now - this._lastFocus >= FOCUS_THROTTLE) {
      this._lastFocus = now;
      void this._poll.refresh();
    }
  };

  /** Read `what` soon, once for a burst of requests. */
  private _later(what: 'models' | 'runners'): void {
    if (this._timers[what] !== undefined) {
      return;
    }
    this._timers[what] = setTimeout(() => {
      delete this._timers[what];
      if (what === 'models') {
        void this.refreshModels();
      } else {
        void this.refreshRunners().catch(() => undefined);
      }
    }, REFRESH_DELAY);
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _poll: Poll;
  private _visible = false;
  private _sources: EmissionSource[] = [];
  private _runnerEvents = 0;
  private _lastFocus = 0;
  private _timers: Partial<Record<'models' | 'runners', ReturnType<typeof setTimeout>>> = {};
  private _controller: AbortController | null = null;
}

export function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
