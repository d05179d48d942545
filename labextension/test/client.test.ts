import { errorMessage, ModelRunnerClient, ModelRunnerError } from '../src/client';
import type { ProgressEvent } from '../src/types';
import { byteChunks, fakeFetcher, ndjson, streamOf } from './helpers';

const MODEL = {
  id: 'sha256:0123456789abcdef',
  tags: ['ai/tiny:latest'],
  created: 1700000000,
  size: 524288,
  config: { format: 'gguf', quantization: 'F32' },
  engine: { engine: 'llama.cpp', device: 'cpu', reason: 'gguf model → llama.cpp' },
  engine_error: null
};

const json = (data: unknown, status = 200) =>
  new Response(JSON.stringify(data), { status, headers: { 'Content-Type': 'application/json' } });

const stream = (chunks: (string | Uint8Array)[], status = 200) =>
  new Response(streamOf(chunks), { status, headers: { 'Content-Type': 'application/x-ndjson' } });

describe('ModelRunnerClient', () => {
  it('lists models with a GET on models', async () => {
    const { fetcher, calls } = fakeFetcher(() => json([MODEL]));
    const models = await new ModelRunnerClient(fetcher).listModels();
    expect(models[0].engine?.engine).toBe('llama.cpp');
    expect(calls).toHaveLength(1);
    expect(calls[0].path).toBe('models');
    expect(calls[0].init.method ?? 'GET').toBe('GET');
  });

  it('deletes by name, with ?force=true only when asked', async () => {
    const { fetcher, calls } = fakeFetcher(() => json({ untagged: ['ai/tiny:latest'], deleted: MODEL.id, freed_bytes: 1 }));
    const client = new ModelRunnerClient(fetcher);
    await client.deleteModel('ai/tiny:latest');
    await client.deleteModel('sha256:0123', true);
    expect(calls.map(c => [c.init.method, c.path])).toEqual([
      ['DELETE', 'models/ai/tiny:latest'],
      ['DELETE', 'models/sha256:0123?force=true']
    ]);
  });

  it("raises the server's message and status on an error answer", async () => {
    const body = { message: 'Model ai/nope not found. Pull it: jupyter modelrunner pull ai/nope', error: {} };
    const { fetcher } = fakeFetcher(() => json(body, 404));
    const err = await new ModelRunnerClient(fetcher).getModel('ai/nope').catch(e => e);
    expect(err).toBeInstanceOf(ModelRunnerError);
    expect(err.message).toBe(body.message);
    expect(err.status).toBe(404);
  });

  it('says the server is unreachable when the request itself fails', async () => {
    const { fetcher } = fakeFetcher(() => {
      throw new TypeError('Failed to fetch');
    });
    await expect(new ModelRunnerClient(fetcher).ps()).rejects.toThrow('Could not reach the Jupyter server: Failed to fetch');
  });

  it('posts unload requests for some models or all of them', async () => {
    const { fetcher, calls } = fakeFetcher(() => json({ unloaded_runners: 1, models: ['ai/tiny'] }));
    const client = new ModelRunnerClient(fetcher);
    await client.unload(['ai/tiny']);
    await client.unloadAll();
    expect(calls.map(c => [c.path, c.init.method, JSON.parse(String(c.init.body))])).toEqual([
      ['engines/unload', 'POST', { models: ['ai/tiny'] }],
      ['engines/unload', 'POST', { all: true }]
    ]);
  });

  it('asks for the last lines of a log as text', async () => {
    const { fetcher, calls } = fakeFetcher(() => new Response('line 1\nline 2'));
    expect(await new ModelRunnerClient(fetcher).logs('ai/tiny:latest', 20)).toBe('line 1\nline 2');
    expect(calls[0].path).toBe('engines/logs?model=ai%2Ftiny%3Alatest&lines=20');
  });
});

describe('ModelRunnerClient.pull', () => {
  const progress = (pulled: number): ProgressEvent => ({
    type: 'progress',
    message: `Downloaded: ${pulled} B of 300 B`,
    mode: 'pull',
    total: 300,
    pulled,
    layer: { id: 'sha256:aaa', size: 300, current: pulled }
  });
  const success: ProgressEvent = { type: 'success', message: 'Pulled ai/tiny:latest', model: MODEL };

  it('posts {from}, streams every event in order, and resolves with success', async () => {
    const body = ndjson(progress(100), progress(300), success);
    const { fetcher, calls } = fakeFetcher(() => stream(byteChunks(body, 17)));
    const seen: ProgressEvent[] = [];
    const end = await new ModelRunnerClient(fetcher).pull('ai/tiny', e => seen.push(e));
    expect(calls[0].path).toBe('models/create');
    expect(calls[0].init.method).toBe('POST');
    expect(JSON.parse(String(calls[0].init.body))).toEqual({ from: 'ai/tiny' });
    expect(seen).toEqual([progress(100), progress(300), success]);
    expect(end).toEqual(success);
  });

  it('rejects with the message of an error event that ends the stream', async () => {
    const body = ndjson(progress(100), { type: 'error', message: 'registry went away', status: 503 });
    const { fetcher } = fakeFetcher(() => stream([body]));
    const seen: ProgressEvent[] = [];
    const err = await new ModelRunnerClient(fetcher).pull('ai/tiny', e => seen.push(e)).catch(e => e);
    expect(err).toBeInstanceOf(ModelRunnerError);
    expect(err.message).toBe('registry went away');
    expect(err.status).toBe(503);
    expect(seen.map(e => e.type)).toEqual(['progress', 'error']);
  });

  it('rejects at once with the one error line of an HTTP error status', async () => {
    const line = ndjson({ type: 'error', mode: 'pull', message: 'Invalid reference "A B": spaces', status: 400 });
    const { fetcher } = fakeFetcher(() => new Response(line, { status: 400 }));
    const seen: ProgressEvent[] = [];
    const err = await new ModelRunnerClient(fetcher).pull('A B', e => seen.push(e)).catch(e => e);
    expect(err.message).toBe('Invalid reference "A B": spaces');
    expect(err.status).toBe(400);
    expect(seen).toEqual([]);
  });

  it('rejects when the stream ends without a result', async () => {
    const { fetcher } = fakeFetcher(() => stream([ndjson(progress(100))]));
    await expect(new ModelRunnerClient(fetcher).pull('ai/tiny', () => undefined)).rejects.toThrow(
      'The stream ended early: Downloaded: 100 B of 300 B'
    );
  });

  it('ignores event types it does not know', async () => {
    const { fetcher } = fakeFetcher(() => stream([ndjson({ type: 'heartbeat' }, success)]));
    const seen: ProgressEvent[] = [];
    await new ModelRunnerClient(fetcher).pull('ai/tiny', e => seen.push(e));
    expect(seen).toEqual([success]);
  });

  it('rejects with an AbortError when cancelled mid-stream', async () => {
    const { fetcher } = fakeFetcher((_path, init) => {
      // A body that sends one event, then waits until the request is aborted (as fetch does).
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(ndjson(progress(100))));
          init.signal?.addEventListener('abort', () => controller.error(new DOMException('aborted', 'AbortError')));
        }
      });
      return new Response(body);
    });
    const controller = new AbortController();
    const seen: ProgressEvent[] = [];
    const pulling = new ModelRunnerClient(fetcher).pull(
      'ai/tiny',
      e => {
        seen.push(e);
        controller.abort();
      },
      controller.signal
    );
    const err = await pulling.catch(e => e);
    expect(err.name).toBe('AbortError');
    expect(seen).toHaveLength(1);
  });

  it('turns a wrapped network error of an aborted request into an AbortError', async () => {
    const controller = new AbortController();
    controller.abort();
    const { fetcher } = fakeFetcher(() => {
      throw new TypeError('The user aborted a request.'); // what ServerConnection.NetworkError looks like
    });
    const err = await new ModelRunnerClient(fetcher).pull('ai/tiny', () => undefined, controller.signal).catch(e => e);
    expect(err.name).toBe('AbortError');
  });
});

describe('errorMessage', () => {
  it('reads {message}, OpenAI {error: {message}}, an NDJSON line, or plain text', () => {
    expect(errorMessage('{"message": "a"}', 400)).toBe('a');
    expect(errorMessage('{"error": {"message": "b"}}', 400)).toBe('b');
    expect(errorMessage('{"type": "error", "message": "c"}\n', 400)).toBe('c');
    expect(errorMessage('plain words', 500)).toBe('plain words');
    expect(errorMessage('<html>proxy</html>', 502, 'Bad Gateway')).toBe('502 Bad Gateway');
    expect(errorMessage('', 403, 'Forbidden')).toBe('403 Forbidden');
  });

  it('asks the Hugging Face cache and search, the query as a parameter only', async () => {
    const { fetcher, calls } = fakeFetcher(path =>
      path.startsWith('huggingface/cache')
        ? json({ cache: '/hf/hub', models: [] })
        : json({ models: [{ name: 'hf.co/org/tiny', repo: 'Org/Tiny', format: 'gguf', downloads: 3, likes: 1 }] })
    );
    const client = new ModelRunnerClient(fetcher);
    expect((await client.hfCache()).models).toEqual([]);
    const found = await client.hfSearch('../x?y=1#z&limit=1', 5);
    expect(found[0].repo).toBe('Org/Tiny');
    expect(calls.map(c => c.path)).toEqual([
      'huggingface/cache',
      'huggingface/search?q=..%2Fx%3Fy%3D1%23z%26limit%3D1&limit=5'
    ]);
  });
});
