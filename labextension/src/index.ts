/**
 * The plugin: builds the shared state on a `ServerConnection` client and the server's event stream, adds the
 * sidebar to the left area, the item to the status bar, and the commands to the palette.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';

import { Fetcher, ModelRunnerClient } from './client';
import { registerCommands } from './commands';
import { ModelRunnerSidebar } from './sidebar';
import { endpointUrl } from './snippets';
import { ModelRunnerState } from './state';
import { ModelRunnerStatus } from './statusbar';

/** Where the server extension mounts its routes, below Jupyter's base URL. */
const ROUTE_PREFIX = 'modelrunner/';

/** A `Fetcher` through Jupyter's own connection: base URL, token and XSRF header as every Jupyter API. */
export function serverFetcher(settings: ServerConnection.ISettings): Fetcher {
  return (path, init) =>
    ServerConnection.makeRequest(`${settings.baseUrl}${ROUTE_PREFIX}${path}`, init, settings);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-modelrunner:plugin',
  description: 'Models sidebar, runners view and status-bar item for jupyter-modelrunner.',
  autoStart: true,
  requires: [],
  optional: [ICommandPalette, IStatusBar, INotebookTracker, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    tracker: INotebookTracker | null,
    fileBrowser: IDefaultFileBrowser | null
  ): void => {
    const settings = ServerConnection.makeSettings();
    const state = new ModelRunnerState(new ModelRunnerClient(serverFetcher(settings)));
    const sidebar = new ModelRunnerSidebar(state, app.commands);
    app.shell.add(sidebar, 'left', { rank: 600 });

    registerCommands(
      { app, state, sidebar, tracker, fileBrowser, endpoint: endpointUrl(settings.baseUrl) },
      palette
    );

    if (statusBar) {
      const item = new ModelRunnerStatus(state, () => app.shell.activateById(sidebar.id));
      statusBar.registerStatusItem('jupyter-modelrunner:status', { item, align: 'left', rank: 5 });
    }
    // Subscribed before the first reads (the poll's first tick reads the runners), so nothing falls in between.
    state.listen(app.serviceManager.events.stream);
    void state.refreshModels();
  }
};

export default plugin;
