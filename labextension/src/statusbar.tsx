/**
 * The status-bar item: the loaded model(s) and engine at a glance, a spinner while one loads or a pull
 * runs; clicking it (or Enter on it) opens the sidebar.
 */

import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { useRunnerState } from './components/hooks';
import { familiar } from './format';
import { percent } from './progress';
import type { ModelRunnerState } from './state';
import { modelRunnerIcon } from './icons';

/** The item's text and tooltip for a state: a pure function of it, used by the component. */
export function statusText(state: ModelRunnerState): { text: string; title: string; busy: boolean } {
  const runners = state.runners;
  const loading = runners.filter(r => r.loading || r.state === 'loading');
  const details = runners.map(r => `${familiar(r.model_name)}: ${r.backend_name} on ${r.device || '…'} (${r.state})`);
  const title = details.length ? details.join('\n') : 'No model loaded';
  if (state.pulling && state.pull) {
    const pct = percent(state.pull);
    return {
      text: `Pulling ${familiar(state.pull.reference)}${pct === null ? '…' : ` ${pct}%`}`,
      title: `${state.pull.message}\n${title}`,
      busy: true
    };
  }
  if (loading.length) {
    // The engine's progress comes from the server's `loading` ticks, once a second, without polling.
    const r = loading[0];
    const elapsed = r.elapsed ? ` ${Math.round(r.elapsed)} s` : '';
    return {
      text: `Loading ${familiar(r.model_name)} (${r.backend_name})…${elapsed}`,
      title: r.log ? `${title}\n${r.backend_name}: ${r.log}` : title,
      busy: true
    };
  }
  // A pull another client runs (a kernel's `%model pull`), as the server's summaries report it.
  const remote = state.remotePulls.find(p => p.model !== state.pull?.reference);
  if (remote) {
    const pct = remote.fraction === null ? '…' : ` ${Math.floor(remote.fraction * 100)}%`;
    return {
      text: `Pulling ${familiar(remote.model)}${pct}`,
      title: `${remote.model}, pulled by another client\n${title}`,
      busy: true
    };
  }
  if (runners.length === 1) {
    return { text: `${familiar(runners[0].model_name)} · ${runners[0].backend_name}`, title, busy: false };
  }
  if (runners.length > 1) {
    const engines = Array.from(new Set(runners.map(r => r.backend_name))).join(', ');
    return { text: `${runners.length} models · ${engines}`, title, busy: false };
  }
  return { text: 'No model loaded', title, busy: false };
}

function StatusItem(props: { state: ModelRunnerState; onOpen: () => void }): JSX.Element {
  useRunnerState(props.state);
  const { text, title, busy } = statusText(props.state);
  return (
    <div
      className="jp-ModelRunner-status"
      role="button"
      tabIndex={0}
      title={`${title}\n(click to open the Model Runner panel)`}
      aria-label={`Model Runner: ${text}. Open the Model Runner panel`}
      aria-busy={busy}
      onClick={props.onOpen}
      onKeyDown={event => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          props.onOpen();
        }
      }}
    >
      {busy ? (
        <span className="jp-ModelRunner-spinner" aria-hidden="true" />
      ) : (
        <modelRunnerIcon.react tag="span" className="jp-ModelRunner-statusIcon" />
      )}
      <span className="jp-ModelRunner-statusText">{text}</span>
    </div>
  );
}

export class ModelRunnerStatus extends ReactWidget {
  constructor(
    private readonly _state: ModelRunnerState,
    private readonly _onOpen: () => void
  ) {
    super();
    this.addClass('jp-ModelRunner-statusItem');
  }

  protected render(): JSX.Element {
    return <StatusItem state={this._state} onOpen={this._onOpen} />;
  }
}
