import { chatCell, endpointUrl, loadsExtension, openaiSnippet } from '../src/snippets';

describe('snippets', () => {
  it('puts the magic on the first line of the chat cell', () => {
    expect(chatCell('ai/tiny:latest')).toBe('%%chat ai/tiny:latest\nHello!');
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
