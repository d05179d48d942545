import * as React from 'react';

import { formatBytes } from '../format';
import { message, ModelRunnerState } from '../state';
import type { HfCache } from '../types';
import { Name } from './Name';

/**
 * The models already in the Hugging Face cache that an engine here runs, each with a Pull button: pulling one
 * makes it a model of the store under the name shown. Read when the panel opens, after each pull, and on Refresh.
 */
export function HfCacheList(props: { state: ModelRunnerState }): JSX.Element {
  const { state } = props;
  const [cache, setCache] = React.useState<HfCache | null>(null);
  const [error, setError] = React.useState<string | null>(null);

  const refresh = React.useCallback(async (): Promise<void> => {
    try {
      setCache(await state.client.hfCache());
      setError(null);
    } catch (err) {
      setError(message(err));
    }
  }, [state]);

  const pulling = state.pulling;
  React.useEffect(() => {
    if (!pulling) {
      void refresh();
    }
  }, [refresh, pulling]);

  const models = cache?.models ?? [];
  return (
    <section className="jp-ModelRunner-section jp-ModelRunner-hfCache" aria-label="Hugging Face cache">
      <h3 className="jp-ModelRunner-heading">
        Hugging Face cache{cache ? ` (${models.length})` : ''}
        <button
          type="button"
          className="jp-ModelRunner-link"
          aria-label="Refresh the Hugging Face cache list"
          onClick={() => void refresh()}
        >
          Refresh
        </button>
      </h3>
      {error && (
        <div className="jp-ModelRunner-error" role="alert">
          {error}
        </div>
      )}
      {cache && models.length === 0 && !error && (
        <div className="jp-ModelRunner-muted" title={cache.cache}>
          No GGUF or safetensors model in the cache.
        </div>
      )}
      <ul className="jp-ModelRunner-models" aria-label="Models in the Hugging Face cache">
        {models.map(model => (
          <li key={model.name} className="jp-ModelRunner-model jp-ModelRunner-hfModel" data-model={model.name}>
            <div className="jp-ModelRunner-modelName">
              <Name name={model.name} />
            </div>
            <div className="jp-ModelRunner-muted" title={model.files.join('\n')}>
              {[model.format, model.quantization, formatBytes(model.size), model.revision.slice(0, 12)]
                .filter(x => x)
                .join(' · ')}
            </div>
            <div className="jp-ModelRunner-actions">
              <button
                type="button"
                className="jp-ModelRunner-button"
                disabled={pulling}
                aria-label={`Pull ${model.name}`}
                onClick={() => void state.pullModel(model.name)}
              >
                Pull
              </button>
            </div>
          </li>
        ))}
      </ul>
    </section>
  );
}
