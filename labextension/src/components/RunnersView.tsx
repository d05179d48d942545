import * as React from 'react';

import { familiar, formatBytes, keepAliveText } from '../format';
import { message, ModelRunnerState } from '../state';
import type { Runner } from '../types';
import { useNow } from './hooks';
import { Name } from './Name';

const LOG_LINES = 40;

function RunnerRow(props: { state: ModelRunnerState; runner: Runner; now: number }): JSX.Element {
  const { state, runner, now } = props;
  const name = familiar(runner.model_name);
  const [logs, setLogs] = React.useState<string | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [busy, setBusy] = React.useState(false);
  const loading = runner.loading || runner.state === 'loading';

  const showLogs = async (): Promise<void> => {
    setError(null);
    try {
      setLogs((await state.client.logs(runner.model_name, LOG_LINES)) || '(no output yet)');
    } catch (err) {
      setError(message(err));
    }
  };

  const unload = async (): Promise<void> => {
    setBusy(true);
    setError(null);
    try {
      await state.unload([runner.model_id]);
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <li className="jp-ModelRunner-runner" data-model={name} aria-label={`${name} on ${runner.backend_name}`}>
      <div className="jp-ModelRunner-runnerHeader">
        {loading && <span className="jp-ModelRunner-spinner" aria-hidden="true" />}
        <Name className="jp-ModelRunner-modelName" name={name} />
        <span className={`jp-ModelRunner-state jp-mod-${runner.state}`}>{runner.state}</span>
      </div>
      <div className="jp-ModelRunner-muted" title={runner.reason}>
        {runner.backend_name}
        {runner.device ? ` on ${runner.device}` : ''}
        {runner.memory ? ` · ${formatBytes(runner.memory)}` : ''}
        {runner.mode && runner.mode !== 'completion' ? ` · ${runner.mode}` : ''}
      </div>
      <div className="jp-ModelRunner-keepAlive">
        {keepAliveText(runner, now)}
        {loading && runner.elapsed ? ` ${Math.round(runner.elapsed)} s` : ''}
      </div>
      {loading && runner.log && (
        <div className="jp-ModelRunner-muted jp-ModelRunner-lastLog" title={runner.log}>
          {runner.log}
        </div>
      )}
      {runner.mode !== 'standby' && (
      <div className="jp-ModelRunner-actions">
        <button
          type="button"
          className="jp-ModelRunner-button"
          aria-expanded={logs !== null}
          aria-label={`${logs === null ? 'Show' : 'Hide'} the log of ${name}`}
          onClick={() => (logs === null ? void showLogs() : setLogs(null))}
        >
          {logs === null ? 'Logs' : 'Hide logs'}
        </button>
        {logs !== null && (
          <button
            type="button"
            className="jp-ModelRunner-button"
            aria-label={`Reload the log of ${name}`}
            onClick={() => void showLogs()}
          >
            Reload
          </button>
        )}
        <button
          type="button"
          className="jp-ModelRunner-button jp-mod-warn"
          disabled={busy}
          aria-label={`Unload ${name}`}
          onClick={() => void unload()}
        >
          Unload
        </button>
      </div>
      )}
      {error && (
        <div className="jp-ModelRunner-error" role="alert">
          {error}
        </div>
      )}
      {logs !== null && (
        <pre className="jp-ModelRunner-logs" aria-label={`Last ${LOG_LINES} lines of the log of ${name}`} tabIndex={0}>
          {logs}
        </pre>
      )}
    </li>
  );
}

/** What is loaded now: engine, device, memory, use and the keep-alive countdown; unload and logs. */
export function RunnersView(props: { state: ModelRunnerState }): JSX.Element {
  const { state } = props;
  const now = useNow();
  const [error, setError] = React.useState<string | null>(null);
  return (
    <section className="jp-ModelRunner-section" aria-label="Loaded models">
      <h3 className="jp-ModelRunner-heading">
        Running{state.runners.length ? ` (${state.runners.length})` : ''}
        {state.runners.length > 1 && (
          <button
            type="button"
            className="jp-ModelRunner-link"
            aria-label="Unload every model"
            onClick={() => {
              setError(null);
              state.unload('all').catch(err => setError(message(err)));
            }}
          >
            Unload all
          </button>
        )}
      </h3>
      {(state.runnersError || error) && (
        <div className="jp-ModelRunner-error" role="alert">
          {error ?? state.runnersError}
        </div>
      )}
      {state.crash && (
        <div className="jp-ModelRunner-error" role="status">
          {state.crash}
        </div>
      )}
      {state.runners.length === 0 && !state.runnersError && (
        <div className="jp-ModelRunner-muted">Nothing loaded. A chat request loads its model.</div>
      )}
      <ul className="jp-ModelRunner-runners">
        {state.runners.map(runner => (
          <RunnerRow key={`${runner.backend_name}/${runner.model_id}/${runner.mode}`} state={state} runner={runner} now={now} />
        ))}
      </ul>
    </section>
  );
}
