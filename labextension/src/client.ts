/**
 * The model runner's HTTP API, typed. Free of JupyterLab imports: the plugin gives it a `Fetcher` built on
 * `ServerConnection.makeRequest` (which adds the token and the XSRF header); tests give it a fake.
 */

import { readNdjson } from './ndjson';
import { isProgressEvent } from './progress';
import type {
  DeleteResult,
  HfCache,
  HfSearchResult,
  Model,
  ProgressEvent,
  Runner,
  RunnerStatus,
  UnloadResult
} from './types';

/** Sends one request to `path` below the runner's root (`{base_url}modelrunner/`). */
export type Fetcher = (path: string, init: RequestInit) => Promise<Response>;

/** A failed request, carrying the server's own message (never a bare status). */
export class ModelRunnerError extends Error {
  constructor(
    message: string,
    readonly status: number | null = null
  ) {
    super(message);
    this.name = 'ModelRunnerError';
  }
}

/** The message the server put in an error body: JSON `{message}` (or `{error: {message}}`), one NDJSON event, or text. */
export function errorMessage(body: string, status: number, statusText = ''): string {
  const text = body.trim();
  for (const candidate of [text, text.split('\n')[0]]) {
    try {
      const data: unknown = JSON.parse(candidate);
      if (typeof data === 'object' && data !== null) {
        const record = data as { message?: unknown; error?: { message?: unknown } | unknown };
        if (typeof record.message === 'string' && record.message) {
          return record.message;
        }
        const nested = record.error as { message?: unknown } | undefined;
        if (nested && typeof nested.message === 'string') {
          return nested.message;
        }
      }
    } catch {
      // not JSON: fall through to the text itself
    }
  }
  if (text && !text.startsWith('<')) {
    return text.slice(0, 500);
  }
  return `${status} ${statusText || 'error'}`.trim();
}

function quote(name: string): string {
  // Model names contain `/` and `:` that the route keeps as they are; encode everything else.
  return name
    .split('/')
    .map(part => encodeURIComponent(part).replace(/%3A/gi, ':'))
    .join('/');
}

export class ModelRunnerClient {
  constructor(private readonly _fetch: Fetcher) {}

  private async _request(path: string, init: RequestInit = {}): Promise<Response> {
    let response: Response;
    try {
      response = await this._fetch(path, init);
    } catch (err) {
      // ServerConnection wraps every fetch failure, an abort included, in a NetworkError: ask the signal.
      if (isAbort(err) || init.signal?.aborted) {
        throw abortError();
      }
      throw new ModelRunnerError(`Could not reach the Jupyter server: ${describe(err)}`);
    }
    if (!response.ok) {
      const body = await response.text().catch(() => '');
      throw new ModelRunnerError(errorMessage(body, response.status, response.statusText), response.status);
    }
    return response;
  }

  private async _json<T>(path: string, init: RequestInit = {}): Promise<T> {
    const response = await this._request(path, init);
    return (await response.json()) as T;
  }

  private _post(body: unknown): RequestInit {
    return { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } };
  }

  listModels(): Promise<Model[]> {
    return this._json<Model[]>('models');
  }

  getModel(name: string): Promise<Model> {
    return this._json<Model>(`models/${quote(name)}`);
  }

  /** Remove a tag, or (with `force`) a model and every tag that shares it. */
  deleteModel(name: string, force = false): Promise<DeleteResult> {
    return this._json<DeleteResult>(`models/${quote(name)}${force ? '?force=true' : ''}`, { method: 'DELETE' });
  }

  tagModel(name: string, target: string): Promise<Model> {
    return this._json<Model>(`models/${quote(name)}/tag`, this._post({ target }));
  }

  /**
   * Pull `reference`, calling `onEvent` for every event as it streams in. Resolves with the last event
   * (`success`); an `error` event, an HTTP error or a stream that ends without either rejects with a
   * `ModelRunnerError`. Aborting `signal` closes the request, which cancels the pull on the server (it
   * keeps the partial files, so the next pull resumes) and rejects with the AbortError.
   */
  pull(reference: string, onEvent: (event: ProgressEvent) => void, signal?: AbortSignal): Promise<ProgressEvent> {
    return this._stream('models/create', { ...this._post({ from: reference }), signal }, onEvent);
  }

  /** Push a stored model (to `target`, or its own name), with progress like `pull`. */
  push(
    name: string,
    onEvent: (event: ProgressEvent) => void,
    target?: string,
    signal?: AbortSignal
  ): Promise<ProgressEvent> {
    const body = target ? { target } : {};
    return this._stream(`models/${quote(name)}/push`, { ...this._post(body), signal }, onEvent);
  }

  private async _stream(
    path: string,
    init: RequestInit,
    onEvent: (event: ProgressEvent) => void
  ): Promise<ProgressEvent> {
    const response = await this._request(path, init);
    let last: ProgressEvent | null = null;
    const handle = (value: unknown): void => {
      if (!isProgressEvent(value)) {
        return; // a newer server may add event types; this client ignores what it does not know
      }
      last = value;
      onEvent(value);
    };
    if (response.body) {
      try {
        await readNdjson(response.body, handle);
      } catch (err) {
        if (isAbort(err) || init.signal?.aborted) {
          throw abortError();
        }
        if (err instanceof Error && err.name === 'NdjsonError') {
          throw new ModelRunnerError(err.message);
        }
        throw new ModelRunnerError(`The connection broke during the transfer: ${describe(err)}`);
      }
    } else {
      // No streaming body (an old fetch polyfill): parse it whole.
      const text = await response.text();
      text.split('\n').forEach(line => line.trim() && handle(JSON.parse(line)));
    }
    const end = last as ProgressEvent | null;
    if (end === null) {
      throw new ModelRunnerError('The server ended the stream without a result.');
    }
    if (end.type === 'error') {
      throw new ModelRunnerError(end.message, end.status ?? null);
    }
    if (end.type !== 'success') {
      throw new ModelRunnerError(`The stream ended early: ${end.message}`);
    }
    return end;
  }

  ps(): Promise<Runner[]> {
    return this._json<Runner[]>('engines/ps');
  }

  unload(models: string[]): Promise<UnloadResult> {
    return this._json<UnloadResult>('engines/unload', this._post({ models }));
  }

  unloadAll(): Promise<UnloadResult> {
    return this._json<UnloadResult>('engines/unload', this._post({ all: true }));
  }

  /** The engine's last `lines` lines of output for `model` (its last run's, when it is not loaded). */
  async logs(model: string, lines = 50): Promise<string> {
    const query = `model=${encodeURIComponent(model)}&lines=${lines}`;
    return (await this._request(`engines/logs?${query}`)).text();
  }

  status(): Promise<RunnerStatus> {
    return this._json<RunnerStatus>('engines/status');
  }

  /** What the runner's Hugging Face cache holds that an engine here runs. */
  hfCache(): Promise<HfCache> {
    return this._json<HfCache>('huggingface/cache');
  }

  /** The Hub's GGUF and safetensors models matching `query`, most downloaded first. */
  async hfSearch(query: string, limit = 8, signal?: AbortSignal): Promise<HfSearchResult[]> {
    const params = `q=${encodeURIComponent(query)}&limit=${limit}`;
    return (await this._json<{ models: HfSearchResult[] }>(`huggingface/search?${params}`, { signal })).models;
  }
}

export function abortError(): Error {
  const err = new Error('The request was cancelled.');
  err.name = 'AbortError';
  return err;
}

export function isAbort(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'AbortError';
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
