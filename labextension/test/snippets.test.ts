import {
  chatCell,
  endpointUrl,
  loadsExtension,
  openaiSnippet,
  relativeToNotebook,
  shellQuote
} from '../src/snippets';

describe('snippets', () => {
  it('puts the magic on the first line of the chat cell', () => {
    expect(chatCell('ai/tiny:latest')).toBe('%%chat ai/tiny:latest\nHello!');
  });

  it('asks about images with --image options the magic reads back', () => {
    expect(chatCell('ai/see', undefined, ['cat.png', 'my photos/dog.jpg'])).toBe(
      "%%chat ai/see --image cat.png --image 'my photos/dog.jpg'\nWhat is in this image?"
    );
    expect(chatCell('ai/see', 'Count the cats.', ['../data/cats.webp'])).toBe(
      '%%chat ai/see --image ../data/cats.webp\nCount the cats.'
    );
    // As Python's shlex.split reads it: a quote inside a quoted argument is closed, escaped and reopened.
    expect(shellQuote("it's.png")).toBe(`'it'"'"'s.png'`);
  });

  it('writes image paths as the kernel, in the notebook folder, finds them', () => {
    expect(relativeToNotebook('a.ipynb', 'cat.png')).toBe('cat.png');
    expect(relativeToNotebook('notes/a.ipynb', 'notes/img/cat.png')).toBe('img/cat.png');
    expect(relativeToNotebook('notes/a.ipynb', 'data/cat.png')).toBe('../data/cat.png');
    expect(relativeToNotebook('x/y/a.ipynb', 'x/cat.png')).toBe('../cat.png');
    expect(relativeToNotebook('a.ipynb', 'data/cat.png')).toBe('data/cat.png');
  });

  it('knows whether a notebook already loads the extension', () => {
    expect(loadsExtension(['import os', '%load_ext jupyter_modelrunner\n'])).toBe(true);
    expect(loadsExtension(['# %load_ext jupyter_modelrunner'])).toBe(false);
    expect(loadsExtension([])).toBe(false);
  });

  it('builds the endpoint below the base URL', () => {
    expect(endpointUrl('http://h:8888/user/a/')).toBe('http://h:8888/user/a/modelrunner/engines/v1');
    expect(endpointUrl('http://h:8888')).toBe('http://h:8888/modelrunner/engines/v1');
  });

  it('writes an OpenAI snippet for the model that runs in a kernel as is', () => {
    const text = openaiSnippet('ai/tiny', 'http://h/modelrunner/engines/v1');
    expect(text).toContain('OpenAI(base_url=jupyter_modelrunner.base_url(), api_key=jupyter_modelrunner.api_key())');
    expect(text).toContain('model="ai/tiny"');
    expect(text).toContain('http://h/modelrunner/engines/v1');
  });
});
