import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';
import * as React from 'react';

import { CommandIDs } from '../commandids';
import { familiar, formatBytes, modelName, shortId } from '../format';
import { message, ModelRunnerState } from '../state';
import type { Model } from '../types';
import { Name } from './Name';

/** Ask, then delete: one tag alone, or (forced) every tag that shares the model. */
async function confirmDelete(state: ModelRunnerState, model: Model): Promise<string | null> {
  const shared = model.tags.length > 1;
  const name = modelName(model);
  const body = shared
    ? `${model.tags.map(familiar).join(', ')} are one model (${shortId(model.id)}). Deleting removes all ` +
      `${model.tags.length} names and frees ${formatBytes(model.size)}.`
    : `This removes ${familiar(name)} from the store and frees ${formatBytes(model.size)}. ` +
      'A loaded engine for it is stopped first.';
  const result = await showDialog({
    title: `Delete ${familiar(name)}?`,
    body,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete', ariaLabel: `Delete ${familiar(name)}` })]
  });
  if (!result.button.accept) {
    return null;
  }
  const deleted = await state.client.deleteModel(shared ? model.id : name, shared);
  await state.refreshModels();
  await state.refreshRunners().catch(() => undefined);
  return deleted.deleted
    ? `Deleted ${familiar(name)}, freed ${formatBytes(deleted.freed_bytes)}.`
    : `Removed the name ${deleted.untagged.map(familiar).join(', ')}.`;
}

function ModelRow(props: {
  model: Model;
  selected: boolean;
  onSelect: () => void;
  onKeyNav: (event: React.KeyboardEvent<HTMLLIElement>) => void;
}): JSX.Element {
  const { model } = props;
  const name = familiar(modelName(model));
  const config = model.config ?? {};
  const facts = [config.format, config.parameters, config.quantization, formatBytes(model.size)].filter(
    (x): x is string => typeof x === 'string' && x !== ''
  );
  return (
    <li
      className={`jp-ModelRunner-model${props.selected ? ' jp-mod-selected' : ''}`}
      role="option"
      aria-selected={props.selected}
      tabIndex={0}
      data-model={name}
      onClick={props.onSelect}
      onKeyDown={event => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          props.onSelect();
        } else {
          props.onKeyNav(event);
        }
      }}
    >
      <div className="jp-ModelRunner-modelName">
        <Name name={name} />
      </div>
      {model.tags.length > 1 && (
        <div className="jp-ModelRunner-tags">
          {model.tags.slice(1).map(tag => (
            <span key={tag} className="jp-ModelRunner-tag">
              {familiar(tag)}
            </span>
          ))}
        </div>
      )}
      <div className="jp-ModelRunner-muted">{facts.join(' · ')}</div>
      {model.engine ? (
        <div className="jp-ModelRunner-engine" title={model.engine.reason}>
          {model.engine.engine} on {model.engine.device}
        </div>
      ) : (
        <div className="jp-ModelRunner-engine jp-mod-unavailable" title={model.engine_error ?? ''}>
          no engine can run it here
        </div>
      )}
    </li>
  );
}

/** The selected model's details and actions. */
function ModelActions(props: { state: ModelRunnerState; model: Model; commands: CommandRegistry }): JSX.Element {
  const { state, model, commands } = props;
  const name = familiar(modelName(model));
  const [notice, setNotice] = React.useState<string | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  React.useEffect(() => {
    setNotice(null);
    setError(null);
  }, [model.id]);

  const run = async (action: () => Promise<string | null>): Promise<void> => {
    setNotice(null);
    setError(null);
    try {
      const done = await action();
      if (done) {
        setNotice(done);
      }
    } catch (err) {
      setError(message(err));
    }
  };

  return (
    <div className="jp-ModelRunner-details" aria-label={`Actions for ${name}`}>
      <div className="jp-ModelRunner-muted">
        {shortId(model.id)}
        {model.config.architecture ? ` · ${model.config.architecture}` : ''}
        {model.config.context_size ? ` · context ${model.config.context_size}` : ''}
      </div>
      <div className={model.engine ? 'jp-ModelRunner-reason' : 'jp-ModelRunner-error'}>
        {model.engine ? model.engine.reason : model.engine_error}
      </div>
      <div className="jp-ModelRunner-actions">
        <button
          type="button"
          className="jp-ModelRunner-button"
          onClick={() =>
            void run(async () => {
              await commands.execute(CommandIDs.copySnippet, { model: name });
              return 'Copied the OpenAI snippet to the clipboard.';
            })
          }
        >
          Copy OpenAI snippet
        </button>
        <button
          type="button"
          className="jp-ModelRunner-button"
          onClick={() =>
            void run(async () => {
              await commands.execute(CommandIDs.insertChatCell, { model: name });
              return `Inserted a %%chat ${name} cell.`;
            })
          }
        >
          Insert %%chat cell
        </button>
        <button
          type="button"
          className="jp-ModelRunner-button jp-mod-warn"
          aria-label={`Delete ${name}`}
          onClick={() => void run(() => confirmDelete(state, model))}
        >
          Delete
        </button>
      </div>
      {notice && (
        <div className="jp-ModelRunner-message" role="status">
          {notice}
        </div>
      )}
      {error && (
        <div className="jp-ModelRunner-error" role="alert">
          {error}
        </div>
      )}
    </div>
  );
}

/** The local models, selectable with the mouse or the keyboard (arrows, Enter). */
export function ModelList(props: { state: ModelRunnerState; commands: CommandRegistry }): JSX.Element {
  const { state, commands } = props;
  const listRef = React.useRef<HTMLUListElement>(null);
  const selected = state.selected;

  const keyNav = (event: React.KeyboardEvent<HTMLLIElement>): void => {
    if (event.key !== 'ArrowDown' && event.key !== 'ArrowUp') {
      return;
    }
    event.preventDefault();
    const items = Array.from(listRef.current?.querySelectorAll<HTMLLIElement>('[role="option"]') ?? []);
    const index = items.indexOf(event.currentTarget);
    items[Math.max(0, Math.min(items.length - 1, index + (event.key === 'ArrowDown' ? 1 : -1)))]?.focus();
  };

  return (
    <section className="jp-ModelRunner-section" aria-label="Local models">
      <h3 className="jp-ModelRunner-heading">
        Models{state.modelsLoaded ? ` (${state.models.length})` : ''}
        <button
          type="button"
          className="jp-ModelRunner-link"
          aria-label="Refresh the model list"
          onClick={() => void state.refreshModels()}
        >
          Refresh
        </button>
      </h3>
      {state.modelsError && (
        <div className="jp-ModelRunner-error" role="alert">
          {state.modelsError}
        </div>
      )}
      {state.modelsLoaded && state.models.length === 0 && !state.modelsError && (
        <div className="jp-ModelRunner-muted">No models yet: pull one above.</div>
      )}
      <ul className="jp-ModelRunner-models" role="listbox" aria-label="Models in the store" ref={listRef}>
        {state.models.map(model => (
          <ModelRow
            key={model.id}
            model={model}
            selected={model.id === state.selectedId}
            onSelect={() => state.select(model.id === state.selectedId ? null : model.id)}
            onKeyNav={keyNav}
          />
        ))}
      </ul>
      {selected && <ModelActions state={state} model={selected} commands={commands} />}
    </section>
  );
}
