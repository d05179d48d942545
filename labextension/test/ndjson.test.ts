import { NdjsonError, NdjsonParser, readNdjson } from '../src/ndjson';
import { byteChunks, ndjson, streamOf } from './helpers';

const EVENTS = [
  { type: 'progress', message: 'Downloaded: 1 B of 3 B', total: 3, pulled: 1 },
  { type: 'warning', message: 'résumé ✓ 模型' },
  { type: 'success', message: 'Pulled ai/tiny:latest' }
];
const TEXT = ndjson(...EVENTS);

describe('NdjsonParser', () => {
  it('yields each line once, wherever the text is cut', () => {
    for (let cut = 0; cut <= TEXT.length; cut++) {
      const parser = new NdjsonParser();
      const values = [...parser.push(TEXT.slice(0, cut)), ...parser.push(TEXT.slice(cut)), ...parser.flush()];
      expect(values).toEqual(EVENTS);
    }
  });

  it('keeps an unfinished line until its newline arrives', () => {
    const parser = new NdjsonParser();
    expect(parser.push('{"type": "pro')).toEqual([]);
    expect(parser.push('gress", "message": "x"}')).toEqual([]);
    expect(parser.push('\n')).toEqual([{ type: 'progress', message: 'x' }]);
  });

  it('counts a last line without a newline, and skips blank lines and CRLF', () => {
    const parser = new NdjsonParser();
    expect(parser.push('{"a": 1}\r\n\n  \n{"b": 2}')).toEqual([{ a: 1 }]);
    expect(parser.flush()).toEqual([{ b: 2 }]);
  });

  it('rejects a line that is not JSON, quoting it', () => {
    const parser = new NdjsonParser();
    expect(() => parser.push('<html>Bad Gateway</html>\n')).toThrow(NdjsonError);
    expect(() => new NdjsonParser().push('oops\n')).toThrow(/not JSON: oops/);
  });
});

describe('readNdjson', () => {
  it('decodes UTF-8 characters split across network chunks', async () => {
    for (const size of [1, 2, 3, 7, 64]) {
      const seen: unknown[] = [];
      await readNdjson(streamOf(byteChunks(TEXT, size)), v => seen.push(v));
      expect(seen).toEqual(EVENTS);
    }
  });

  it('delivers each event as soon as its line is complete', async () => {
    const seen: unknown[] = [];
    const chunks = [ndjson(EVENTS[0]).slice(0, 10), ndjson(EVENTS[0]).slice(10) + '{"type":', '"success"}'];
    const stream = streamOf(chunks);
    await readNdjson(stream, v => seen.push(v));
    expect(seen).toEqual([EVENTS[0], { type: 'success' }]);
  });
});
