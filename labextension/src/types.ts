/**
 * The shapes of the model runner's HTTP API (jupyter_modelrunner/api/), as the server sends them.
 */

/** The engine that would run a model here, and why (`engines/select.py`). */
export interface EngineChoice {
  engine: string;
  device: string;
  reason: string;
}

/** The model's config blob, as in Docker's model artifact format. */
export interface ModelConfig {
  format?: string;
  quantization?: string;
  parameters?: string;
  architecture?: string;
  size?: string;
  context_size?: number | null;
  [key: string]: unknown;
}

/** One stored model: `GET models` returns a list of these. */
export interface Model {
  id: string;
  tags: string[];
  created: number;
  size?: number;
  bundle?: string;
  config: ModelConfig;
  /** Whether it carries a multimodal projector, so chats may show it images. */
  multimodal?: boolean;
  engine: EngineChoice | null;
  engine_error: string | null;
}

/** One layer's progress in a pull or push. */
export interface LayerProgress {
  id: string;
  size: number;
  current: number;
}

/** One line of the NDJSON stream of `models/create` and `models/{name}/push`. */
export type ProgressEvent =
  | {
      type: 'progress';
      message: string;
      mode?: string;
      total?: number;
      pulled?: number;
      layer?: LayerProgress;
    }
  | { type: 'warning'; message: string; mode?: string }
  | { type: 'success'; message: string; mode?: string; model?: Model; digest?: string }
  | { type: 'error'; message: string; mode?: string; status?: number };

/** One loaded model: `GET engines/ps` (`Runner.status()` in scheduler.py). */
export interface Runner {
  backend_name: string;
  model_name: string;
  model_id: string;
  /** `completion`, `embedding`, or `standby` (an engine interpreter waiting for the next model to load). */
  mode: string;
  device: string;
  reason: string;
  /** loading, ready, sleeping (a GPU engine idle with its weights in RAM), waking, standby. */
  state: string;
  loading: boolean;
  in_use: boolean;
  requests: number;
  /** Unix seconds. */
  last_used: number;
  /** Seconds it stays loaded after a request, negative for never (older servers: `5m`, `30s`, `never`, `default`). */
  keep_alive: number | string;
  /** When it unloads if nothing uses it (Unix seconds); null while in use or kept for good. */
  expires_at?: number | null;
  /** Bytes of RAM (a sleeping engine's offloaded weights included), and of GPU memory (none while it sleeps). */
  memory: number;
  vram?: number;
  pid?: number;
  /** Tokens of context one request may use, as the engine reports it, and how many requests it serves at once. */
  context_size?: number | null;
  slots?: number | null;
  /** While it loads, from the server's events: seconds since the engine started, and its last output line. */
  elapsed?: number;
  log?: string;
}

/** `POST engines/unload`. */
export interface UnloadResult {
  unloaded_runners: number;
  models: string[];
}

/** `DELETE models/{name}`. */
export interface DeleteResult {
  untagged: string[];
  deleted: string | null;
  freed_bytes: number;
}

export interface EngineAvailability {
  engine: string;
  available: boolean;
  reason: string;
  device: string;
  version?: string | null;
}

/** `GET engines/status`. */
export interface RunnerStatus {
  hardware: unknown;
  engines: EngineAvailability[];
  version: string;
  memory_budget?: number;
}

/** A model in the Hugging Face cache an engine here runs (`GET huggingface/cache`), named as `pull` takes it. */
export interface HfCachedModel {
  name: string;
  repo: string;
  revision: string;
  commit?: string;
  format: 'gguf' | 'safetensors';
  quantization: string | null;
  files: string[];
  size: number;
  engine?: string;
  mmproj?: string | null;
}

/** `GET huggingface/cache`: where the cache is, and its runnable models. */
export interface HfCache {
  cache?: string;
  models: HfCachedModel[];
}

/** A model on the Hub an engine here runs (`GET huggingface/search`), most downloaded first. */
export interface HfSearchResult {
  name: string;
  repo: string;
  format: 'gguf' | 'safetensors';
  downloads: number;
  likes: number;
  size?: number | null;
  parameters?: number | null;
}
