/**
 * What the sidebar, the status bar and the commands share: the models, the loaded runners, the pull in
 * progress and the selection. One object, one `changed` signal, one poll.
 */

import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { ModelRunnerClient, isAbort } from './client';
import { applyEvent, initialPull, PullState } from './progress';
import type { Model, Runner } from './types';

/** The runners view refreshes this often while the panel is visible… */
export const VISIBLE_INTERVAL = 3000;
/** …and the status bar this often otherwise. */
export const BACKGROUND_INTERVAL = 10000;
export const CANCELLED_MESSAGE = 'Cancelled. The downloaded parts are kept: pulling again resumes.';
/** While a model loads, the status bar follows it this closely. */
export const LOADING_INTERVAL = 1000;
/** While visible, the model list is re-read every this many runner refreshes (a kernel may pull too). */
const MODELS_EVERY = 5;

export class ModelRunnerState {
  constructor(readonly client: ModelRunnerClient) {
    this._poll = new Poll({
      factory: () => this._tick(),
      frequency: { interval: BACKGROUND_INTERVAL, backoff: true, max: 60000 },
      standby: 'when-hidden',
      name: 'jupyter-modelrunner:runners'
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  models: Model[] = [];
  modelsLoaded = false;
  modelsError: string | null = null;
  runners: Runner[] = [];
  runnersError: string | null = null;
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

  /** Poll fast while the panel shows the runners; slowly for the status bar otherwise. */
  setVisible(visible: boolean): void {
    this._visible = visible;
    this._setInterval();
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
    try {
      this.runners = await this.client.ps();
      this.runnersError = null;
      this._setInterval();
    } catch (err) {
      this.runnersError = message(err);
      this._emit();
      throw err;
    }
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
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    this._ticks += 1;
    if (this._visible && this._ticks % MODELS_EVERY === 0) {
      void this.refreshModels();
    }
    await this.refreshRunners();
  }

  /** Poll fast while a model loads (its end shows at once), at the visible or background pace otherwise. */
  private _setInterval(): void {
    const interval = this.loading ? LOADING_INTERVAL : this._visible ? VISIBLE_INTERVAL : BACKGROUND_INTERVAL;
    if (this._poll.frequency.interval !== interval) {
      this._poll.frequency = { interval, backoff: true, max: 60000 };
    }
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _poll: Poll;
  private _visible = false;
  private _ticks = 0;
  private _controller: AbortController | null = null;
}

export function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
