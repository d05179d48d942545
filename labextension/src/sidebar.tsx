/**
 * The Models sidebar: pull box (with the Hub's suggestions), local models with their actions, the Hugging Face
 * cache's models, and the runners view, in one panel.
 */

import { ReactWidget } from '@jupyterlab/ui-components';
import type { CommandRegistry } from '@lumino/commands';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { HfCacheList } from './components/HfCacheList';
import { useRunnerState } from './components/hooks';
import { ModelList } from './components/ModelList';
import { PullBox } from './components/PullBox';
import { RunnersView } from './components/RunnersView';
import { modelRunnerIcon } from './icons';
import type { ModelRunnerState } from './state';

export const SIDEBAR_ID = 'jupyter-modelrunner-sidebar';

function Panel(props: { state: ModelRunnerState; commands: CommandRegistry }): JSX.Element {
  useRunnerState(props.state);
  return (
    <div className="jp-ModelRunner-panel">
      <header className="jp-ModelRunner-title">
        <h2>Model Runner</h2>
      </header>
      <PullBox state={props.state} />
      <ModelList state={props.state} commands={props.commands} />
      <HfCacheList state={props.state} />
      <RunnersView state={props.state} />
    </div>
  );
}

export class ModelRunnerSidebar extends ReactWidget {
  constructor(
    private readonly _state: ModelRunnerState,
    private readonly _commands: CommandRegistry
  ) {
    super();
    this.id = SIDEBAR_ID;
    this.addClass('jp-ModelRunner-sidebar');
    this.title.icon = modelRunnerIcon;
    this.title.caption = 'Model Runner';
  }

  /** Focus the pull box (the Pull command opens the panel there). */
  focusPull(): void {
    this.node.querySelector<HTMLInputElement>('.jp-ModelRunner-input')?.focus();
  }

  protected render(): JSX.Element {
    return <Panel state={this._state} commands={this._commands} />;
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._state.setVisible(true);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._state.setVisible(false);
  }
}
