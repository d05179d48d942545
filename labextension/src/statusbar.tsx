/**
 * The status-bar item: the loaded model(s) and engine at a glance, a spinner while one loads or a pull
 * runs; clicking it (or Enter on it) opens the sidebar.
 */

import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { useRunnerState } from './components/hooks';
import type { ModelRunnerState } from './state';
import { statusText } from './statustext';
import { modelRunnerIcon } from './icons';

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
