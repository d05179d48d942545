import * as React from 'react';

import { formatBytes, formatCount, hubQuery, shortId } from '../format';
import { percent } from '../progress';
import { message, type ModelRunnerState } from '../state';
import type { HfSearchResult } from '../types';
import { ProgressBar } from './ProgressBar';

/** How long typing must pause before the Hub is asked for suggestions. */
export const SUGGEST_DELAY_MS = 350;

/**
 * The Hub's models matching what is typed, asked once typing pauses (one request at a time: a newer query aborts
 * the one in flight). Nothing is asked while a pull runs or when the text is too short.
 */
function useHubSuggestions(
  state: ModelRunnerState,
  typed: string,
  enabled: boolean
): { suggestions: HfSearchResult[]; problem: string | null } {
  const [suggestions, setSuggestions] = React.useState<HfSearchResult[]>([]);
  const [problem, setProblem] = React.useState<string | null>(null);
  React.useEffect(() => {
    const query = enabled ? hubQuery(typed) : null;
    if (query === null) {
      setSuggestions([]);
      setProblem(null);
      return;
    }
    const controller = new AbortController();
    const timer = window.setTimeout(() => {
      state.client.hfSearch(query, 8, controller.signal).then(
        found => {
          setSuggestions(found);
          setProblem(null);
        },
        err => {
          if (!controller.signal.aborted) {
            setSuggestions([]);
            setProblem(message(err));
          }
        }
      );
    }, SUGGEST_DELAY_MS);
    return () => {
      window.clearTimeout(timer);
      controller.abort();
    };
  }, [state, typed, enabled]);
  return { suggestions, problem };
}

/** A reference box and Pull button; while pulling, total and per-layer progress with Cancel. */
export function PullBox(props: { state: ModelRunnerState }): JSX.Element {
  const { state } = props;
  const [reference, setReference] = React.useState('');
  const pull = state.pull;
  const running = state.pulling;
  const [picked, setPicked] = React.useState<string | null>(null);
  const { suggestions, problem } = useHubSuggestions(state, reference, !running && picked !== reference);

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
          aria-controls="jp-ModelRunner-suggestions"
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
      {suggestions.length > 0 && (
        <ul
          id="jp-ModelRunner-suggestions"
          className="jp-ModelRunner-suggestions"
          role="listbox"
          aria-label="Models on the Hugging Face Hub"
        >
          {suggestions.map(found => (
            <li key={found.name} role="option" aria-selected={false} data-model={found.name}>
              <button
                type="button"
                className="jp-ModelRunner-suggestion"
                title={`${found.repo} on the Hugging Face Hub`}
                onClick={() => {
                  setPicked(found.name);
                  setReference(found.name);
                }}
              >
                <span className="jp-ModelRunner-suggestionName">{found.name}</span>
                <span className="jp-ModelRunner-muted">
                  {[
                    found.format,
                    found.parameters ? `${formatCount(found.parameters)} parameters` : '',
                    `${formatCount(found.downloads)} downloads`,
                    `${formatCount(found.likes)} likes`,
                    found.size ? formatBytes(found.size) : ''
                  ]
                    .filter(x => x)
                    .join(' · ')}
                </span>
              </button>
            </li>
          ))}
        </ul>
      )}
      {problem && reference.trim() && (
        <div className="jp-ModelRunner-muted jp-ModelRunner-suggestProblem">Hub search: {problem}</div>
      )}
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
