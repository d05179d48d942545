/**
 * Putting a `%%chat` cell into a notebook: the active one, or a new one when none is open.
 */

import type { JupyterFrontEnd } from '@jupyterlab/application';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { chatCell, LOAD_EXT, loadsExtension, relativeToNotebook } from './snippets';

async function targetNotebook(app: JupyterFrontEnd, tracker: INotebookTracker): Promise<NotebookPanel> {
  const current = tracker.currentWidget;
  if (current) {
    app.shell.activateById(current.id);
    return current;
  }
  const created: unknown = await app.commands.execute('notebook:create-new', { kernelName: 'python3' });
  if (!(created instanceof NotebookPanel)) {
    throw new Error('Open a notebook first: there is none to insert the cell into.');
  }
  return created;
}

function insertBelow(panel: NotebookPanel, source: string): void {
  const notebook = panel.content;
  const active = notebook.activeCell;
  // An empty active cell (a fresh notebook's) is reused instead of leaving a blank cell above.
  if (active && active.model.type === 'code' && active.model.sharedModel.getSource().trim() === '') {
    active.model.sharedModel.setSource(source);
    return;
  }
  NotebookActions.insertBelow(notebook);
  notebook.activeCell?.model.sharedModel.setSource(source);
}

/**
 * Insert `%%chat MODEL` / `Hello!` below the active cell. A cell magic must be its cell's first line, so
 * when no cell of the notebook loads the extension yet, a `%load_ext jupyter_modelrunner` cell goes
 * first. `images` are server paths (the file browser's), written relative to the notebook as `--image` options.
 * Returns the notebook, with the `%%chat` cell active.
 */
export async function insertChatCell(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  model: string,
  images: string[] = []
): Promise<NotebookPanel> {
  const panel = await targetNotebook(app, tracker);
  await panel.context.ready;
  const sources = panel.content.widgets.map(cell => cell.model.sharedModel.getSource());
  if (!loadsExtension(sources)) {
    insertBelow(panel, LOAD_EXT);
  }
  const paths = images.map(image => relativeToNotebook(panel.context.path, image));
  insertBelow(panel, chatCell(model, undefined, paths));
  panel.content.mode = 'command';
  panel.content.activate();
  return panel;
}
