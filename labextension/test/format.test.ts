import {
  familiar,
  formatBytes,
  formatCount,
  formatDuration,
  hubQuery,
  keepAliveSeconds,
  keepAliveText,
  modelName,
  nameParts,
  shortId
} from '../src/format';
import type { ModelRunnerState } from '../src/state';
import { statusText } from '../src/statustext';
import type { Runner } from '../src/types';

const runner = (over: Partial<Runner> = {}): Runner => ({
  backend_name: 'llama.cpp',
  model_name: 'ai/tiny:latest',
  model_id: 'sha256:abc',
  mode: 'completion',
  device: 'cpu',
  reason: 'gguf',
  state: 'ready',
  loading: false,
  in_use: false,
  requests: 0,
  last_used: 1000,
  keep_alive: '5m',
  memory: 1024,
  ...over
});

describe('format', () => {
  it('prints sizes in binary units like the CLI', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(98362432)).toBe('93.81 MiB');
    expect(formatBytes(undefined)).toBe('—');
  });

  it('reads keep_alive as the server writes it', () => {
    expect(keepAliveSeconds('5m')).toBe(300);
    expect(keepAliveSeconds('1.5s')).toBe(1.5);
    expect(keepAliveSeconds('never')).toBe(-1);
    expect(keepAliveSeconds('default')).toBeNull();
    expect(keepAliveSeconds(600)).toBe(600);
    expect(keepAliveSeconds(-1)).toBe(-1);
  });

  it('counts down to the unload from last_used + keep_alive', () => {
    expect(keepAliveText(runner(), 1000 + 55)).toBe('unloads in 4:05');
    expect(keepAliveText(runner(), 1000 + 301)).toBe('unloading…');
    expect(keepAliveText(runner({ keep_alive: 'never' }), 5000)).toBe('kept loaded');
    expect(keepAliveText(runner({ keep_alive: 300, expires_at: 1000 + 600 }), 1000 + 55)).toBe('unloads in 9:05');
    expect(keepAliveText(runner({ keep_alive: -1 }), 5000)).toBe('kept loaded');
    expect(keepAliveText(runner({ in_use: true, requests: 2 }), 1000)).toBe('in use (2 requests)');
    expect(keepAliveText(runner({ loading: true, state: 'loading' }), 1000)).toBe('loading…');
  });

  it('formats durations with hours when needed', () => {
    expect(formatDuration(59.2)).toBe('1:00');
    expect(formatDuration(3723)).toBe('1:02:03');
  });

  it('names models as users know them', () => {
    const model = { id: 'sha256:0123456789abcdef', tags: [], created: 0, config: {}, engine: null, engine_error: null };
    expect(modelName(model)).toBe('0123456789ab');
    expect(shortId('sha256:0123456789abcdef')).toBe('0123456789ab');
    expect(familiar('docker.io/ai/smollm2:latest')).toBe('ai/smollm2:latest');
  });
});

describe('nameParts', () => {
  it('cuts after slashes and before colons, losing nothing', () => {
    expect(nameParts('127.0.0.1:5000/ai/tiny:latest')).toEqual(['127.0.0.1', ':5000/', 'ai/', 'tiny', ':latest']);
    expect(nameParts('tiny')).toEqual(['tiny']);
  });
});

describe('status bar', () => {
  const runner = (overrides: Partial<Runner>): Runner => ({
    backend_name: 'vllm', model_name: 'ai/smollm2-vllm:latest', model_id: 'sha256:1', mode: 'completion',
    device: 'cuda', reason: '', state: 'ready', loading: false, in_use: false, requests: 0, last_used: 0,
    keep_alive: 300, memory: 1, ...overrides
  });
  const state = (runners: Runner[]) =>
    ({ runners, pulling: false, pull: null, remotePulls: [] }) as unknown as ModelRunnerState;

  it('names a sleeping model as sleeping, and never counts the standby interpreter as a model', () => {
    expect(statusText(state([runner({ state: 'sleeping' })])).text).toBe('ai/smollm2-vllm:latest · vllm (sleeping)');
    const standby = runner({ model_name: '(standby)', mode: 'standby', state: 'standby', model_id: '' });
    expect(statusText(state([standby])).text).toBe('No model loaded');
    expect(statusText(state([runner({}), standby])).text).toBe('ai/smollm2-vllm:latest · vllm');
  });
});

describe('Hugging Face helpers', () => {
  it('counts as the Hub shows them', () => {
    expect([formatCount(7), formatCount(1234), formatCount(494_032_768), formatCount(12_500_000_000)]).toEqual([
      '7',
      '1.2K',
      '494M',
      '13B'
    ]);
    expect(formatCount(null)).toBe('');
  });

  it('searches the repository part of what is typed', () => {
    expect(hubQuery('hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M')).toBe('Qwen/Qwen2.5-0.5B-Instruct-GGUF');
    expect(hubQuery('https://huggingface.co/org/tiny')).toBe('org/tiny');
    expect(hubQuery('hf://org/tiny')).toBe('org/tiny');
    expect(hubQuery('  qwen ')).toBe('qwen');
    expect(hubQuery('q')).toBeNull();
    expect(hubQuery('hf.co/')).toBeNull();
  });
});
