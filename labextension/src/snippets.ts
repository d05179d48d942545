/**
 * Text the panel puts on the clipboard or into a notebook. Pure, so tests pin the exact text.
 */

/** The line that loads the `%%chat` magic. */
export const LOAD_EXT = '%load_ext jupyter_modelrunner';

/**
 * Python that chats with `model` through the OpenAI-compatible endpoint. In a kernel this server started,
 * `jupyter_modelrunner.base_url()` / `api_key()` find the endpoint and token; `endpoint` is shown for
 * clients elsewhere, which authenticate with the Jupyter token as their API key.
 */
export function openaiSnippet(model: string, endpoint: string): string {
  return [
    'import jupyter_modelrunner',
    'from openai import OpenAI',
    '',
    `# Outside this server's kernels: OpenAI(base_url="${endpoint}", api_key="<your Jupyter token>")`,
    'client = OpenAI(base_url=jupyter_modelrunner.base_url(), api_key=jupyter_modelrunner.api_key())',
    'response = client.chat.completions.create(',
    `    model=${JSON.stringify(model)},`,
    '    messages=[{"role": "user", "content": "Hello!"}],',
    ')',
    'print(response.choices[0].message.content)'
  ].join('\n');
}

/** An argument as Python's `shlex.split` (the magic's parser) reads it back: quoted only when it must be. */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'"'"'`)}'`;
}

/**
 * A `%%chat` cell: the magic must be the cell's first line, so the extension loads in a cell of its own.
 * `images` (paths as the kernel sees them, or URLs) become `--image` options, and the default prompt asks about them.
 */
export function chatCell(model: string, prompt?: string, images: string[] = []): string {
  const options = images.map(image => ` --image ${shellQuote(image)}`).join('');
  const question = prompt ?? (images.length ? 'What is in this image?' : 'Hello!');
  return `%%chat ${model}${options}\n${question}`;
}

/**
 * A server path (`data/cat.png`) as the kernel of the notebook at `notebookPath` (`notes/a.ipynb`) finds it:
 * `../data/cat.png`. Kernels run in their notebook's folder, so a relative path keeps the cell portable.
 */
export function relativeToNotebook(notebookPath: string, filePath: string): string {
  const from = notebookPath.split('/').filter(Boolean).slice(0, -1);
  const to = filePath.split('/').filter(Boolean);
  let common = 0;
  while (common < from.length && common < to.length - 1 && from[common] === to[common]) {
    common++;
  }
  return [...from.slice(common).map(() => '..'), ...to.slice(common)].join('/');
}

/** Whether a notebook's cells already load the extension (then only the `%%chat` cell is inserted). */
export function loadsExtension(sources: string[]): boolean {
  return sources.some(source =>
    source.split('\n').some(line => /^\s*%load_ext\s+jupyter_modelrunner\s*$/.test(line))
  );
}

/** The OpenAI endpoint's absolute URL, for a Jupyter server at `baseUrl` (e.g. `http://host:8888/lab-user/`). */
export function endpointUrl(baseUrl: string): string {
  return `${baseUrl.replace(/\/?$/, '/')}modelrunner/engines/v1`;
}
