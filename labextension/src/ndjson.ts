/**
 * Newline-delimited JSON, read as it arrives. Pure (no JupyterLab imports), so Jest tests it directly.
 *
 * A network chunk may end in the middle of a line, or in the middle of a multi-byte UTF-8 character;
 * the parser keeps the unfinished tail until the rest arrives.
 */

/** Thrown for a line that is not JSON: the stream is not what the server promised. */
export class NdjsonError extends Error {
  constructor(readonly line: string) {
    super(`The server sent a line that is not JSON: ${line.slice(0, 200)}`);
    this.name = 'NdjsonError';
  }
}

/** Splits text into lines and parses each complete line. */
export class NdjsonParser {
  private _buffer = '';

  /** Add text; returns the values of the lines it completed. */
  push(text: string): unknown[] {
    this._buffer += text;
    const lines = this._buffer.split('\n');
    this._buffer = lines.pop() ?? '';
    return parseLines(lines);
  }

  /** The end of the stream: a last line without a newline still counts. */
  flush(): unknown[] {
    const rest = this._buffer;
    this._buffer = '';
    return parseLines([rest]);
  }
}

function parseLines(lines: string[]): unknown[] {
  const values: unknown[] = [];
  for (const raw of lines) {
    const line = raw.trim();
    if (!line) {
      continue;
    }
    try {
      values.push(JSON.parse(line));
    } catch {
      throw new NdjsonError(line);
    }
  }
  return values;
}

/**
 * Read a byte stream to its end, calling `onValue` for every JSON line as soon as it is complete.
 * Cancelling the request (its AbortSignal) makes `read()` reject, which ends this with that error.
 */
export async function readNdjson(
  body: ReadableStream<Uint8Array>,
  onValue: (value: unknown) => void
): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new NdjsonParser();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      parser.push(decoder.decode(value, { stream: true })).forEach(onValue);
    }
    parser.push(decoder.decode()).forEach(onValue);
    parser.flush().forEach(onValue);
  } finally {
    reader.releaseLock();
  }
}
