import * as React from 'react';

import { formatBytes, shortId } from '../format';
import { percent } from '../progress';
import type { ModelRunnerState } from '../state';
import { ProgressBar } from './ProgressBar';

/** A reference box and Pull button; while pulling, total and per-layer progress with Cancel. */
export function PullBox(props: { state: ModelRunnerState }): JSX.Element {
  const { state } = props;
  const [reference, setReference] = React.useState('');
  const pull = state.pull;
  const running = state.pulling;

  const submit = (event: React.FormEvent): void => {
    event.preventDefault();
    const ref = reference.trim();
    if (ref && !running) {
      void state.pullModel(ref);
    }
  };

  const pct = pull ? percent(pull) : null;
  return (
    <section className="jp-ModelRunner-section jp-ModelRunner-pull" aria-label="Pull a model">
      <form className="jp-ModelRunner-pullForm" onSubmit={submit}>
        <input
          className="jp-ModelRunner-input"
          type="text"
          value={reference}
          placeholder="ai/smollm2"
          aria-label="Model to pull"
          spellCheck={false}
          onChange={e => setReference(e.target.value)}
        />
        {running ? (
          <button
            type="button"
            className="jp-ModelRunner-button jp-mod-warn"
            onClick={() => state.cancelPull()}
            aria-label={`Cancel pulling ${pull?.reference}`}
          >
            Cancel
          </button>
        ) : (
          <button type="submit" className="jp-ModelRunner-button jp-mod-accept" disabled={!reference.trim()}>
            Pull
          </button>
        )}
      </form>
      {pull && (
        <div className={`jp-ModelRunner-pullStatus jp-mod-${pull.phase}`} aria-live="polite">
          <div className="jp-ModelRunner-pullHeader">
            <span className="jp-ModelRunner-pullRef">{pull.reference}</span>
            <span className="jp-ModelRunner-pullPercent" data-percent={pct ?? ''}>
              {pct === null ? '' : `${pct} %`}
            </span>
          </div>
          <ProgressBar
            done={pull.pulled}
            total={pull.total}
            complete={pull.phase === 'success'}
            label={`Pulling ${pull.reference}: total`}
          />
          {pull.total > 0 && (
            <div className="jp-ModelRunner-muted">
              {formatBytes(pull.pulled)} of {formatBytes(pull.total)}
            </div>
          )}
          {pull.layers.length > 0 && (
            <ul className="jp-ModelRunner-layers" aria-label="Layers">
              {pull.layers.map(layer => (
                <li key={layer.id} className="jp-ModelRunner-layer">
                  <span className="jp-ModelRunner-layerId" title={layer.id}>
                    {shortId(layer.id)}
                  </span>
                  <ProgressBar done={layer.current} total={layer.size} label={`Layer ${shortId(layer.id)}`} />
                  <span className="jp-ModelRunner-layerBytes">
                    {formatBytes(layer.current)} / {formatBytes(layer.size)}
                  </span>
                </li>
              ))}
            </ul>
          )}
          {pull.warnings.map((w, i) => (
            <div key={i} className="jp-ModelRunner-warning" role="status">
              {w}
            </div>
          ))}
          <div
            className={pull.phase === 'error' ? 'jp-ModelRunner-error' : 'jp-ModelRunner-message'}
            role={pull.phase === 'error' ? 'alert' : undefined}
          >
            {pull.message}
          </div>
          {!running && (
            <button
              type="button"
              className="jp-ModelRunner-link"
              onClick={() => state.clearPull()}
              aria-label="Dismiss the pull report"
            >
              Dismiss
            </button>
          )}
        </div>
      )}
    </section>
  );
}
