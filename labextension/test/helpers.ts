/** A byte stream delivering `chunks` one by one, as a slow network would. */
export function streamOf(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (i < chunks.length) {
        const chunk = chunks[i++];
        controller.enqueue(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
      } else {
        controller.close();
      }
    }
  });
}

/** Split `text` into byte chunks of `size` (may cut a UTF-8 character in two). */
export function byteChunks(text: string, size: number): Uint8Array[] {
  const bytes = new TextEncoder().encode(text);
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) {
    out.push(bytes.slice(i, i + size));
  }
  return out;
}

export interface Call {
  path: string;
  init: RequestInit;
}

/** A Fetcher answering from `respond`, recording every call. */
export function fakeFetcher(respond: (path: string, init: RequestInit) => Response | Promise<Response>) {
  const calls: Call[] = [];
  const fetcher = async (path: string, init: RequestInit): Promise<Response> => {
    calls.push({ path, init });
    return respond(path, init);
  };
  return { fetcher, calls };
}

export const ndjson = (...events: object[]): string => events.map(e => JSON.stringify(e) + '\n').join('');
