/**
 * The commands (palette, sidebar buttons): open, pull, unload all, copy the OpenAI snippet, insert a
 * `%%chat` cell. A command that fails throws with the server's message; the palette shows it in a dialog,
 * the sidebar inline.
 */

import type { JupyterFrontEnd } from '@jupyterlab/application';
import { Clipboard, ICommandPalette, InputDialog, showErrorMessage } from '@jupyterlab/apputils';
import type { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import type { INotebookTracker } from '@jupyterlab/notebook';

import { CommandIDs } from './commandids';
import { familiar, modelName } from './format';
import { insertChatCell } from './notebook';
import type { ModelRunnerSidebar } from './sidebar';
import { openaiSnippet } from './snippets';
import { message, ModelRunnerState } from './state';
import { isImagePath, seesImages, visionModel } from './vision';

export const PALETTE_CATEGORY = 'Model Runner';

export interface CommandContext {
  app: JupyterFrontEnd;
  state: ModelRunnerState;
  sidebar: ModelRunnerSidebar;
  tracker: INotebookTracker | null;
  /** The file browser, whose selected images "Ask a vision model about this image" takes. */
  fileBrowser: IDefaultFileBrowser | null;
  /** The OpenAI endpoint's absolute URL (for the snippet's comment). */
  endpoint: string;
}

/** The model a command acts on: its `model` argument, else the sidebar's selection. */
function targetModel(state: ModelRunnerState, args: { model?: unknown }): string {
  if (typeof args.model === 'string' && args.model) {
    return args.model;
  }
  const selected = state.selected;
  if (!selected) {
    throw new Error('Select a model in the Model Runner panel first.');
  }
  return familiar(modelName(selected));
}

export function registerCommands(ctx: CommandContext, palette: ICommandPalette | null): void {
  const { app, state, sidebar } = ctx;
  const open = (): void => app.shell.activateById(sidebar.id);

  app.commands.addCommand(CommandIDs.open, {
    label: 'Open sidebar',
    caption: 'Show the Model Runner panel: models, pulls and loaded engines',
    execute: open
  });

  app.commands.addCommand(CommandIDs.pull, {
    label: 'Pull model…',
    caption: 'Download a model from an OCI registry into the local store',
    execute: async args => {
      let reference = typeof args.model === 'string' ? args.model : '';
      if (!reference) {
        const answer = await InputDialog.getText({
          title: 'Pull a model',
          label: 'Model reference (e.g. ai/smollm2, hf.co/org/repo)',
          placeholder: 'ai/smollm2'
        });
        reference = (answer.button.accept && answer.value?.trim()) || '';
      }
      if (!reference) {
        return;
      }
      open();
      if (state.pulling) {
        await showErrorMessage('Model Runner', `Already pulling ${state.pull?.reference}; cancel it first.`);
        return;
      }
      await state.pullModel(reference); // progress and the outcome show in the panel
    }
  });

  app.commands.addCommand(CommandIDs.unloadAll, {
    label: 'Unload all',
    caption: 'Stop every loaded model now',
    execute: async () => {
      try {
        await state.unload('all');
      } catch (err) {
        await showErrorMessage('Model Runner: unload failed', message(err));
      }
    }
  });

  app.commands.addCommand(CommandIDs.copySnippet, {
    label: 'Copy OpenAI snippet for the selected model',
    caption: 'Python that chats with the model through the OpenAI-compatible endpoint',
    isEnabled: args => typeof args.model === 'string' || state.selected !== null,
    execute: args => {
      Clipboard.copyToSystem(openaiSnippet(targetModel(state, args), ctx.endpoint));
    }
  });

  app.commands.addCommand(CommandIDs.insertChatCell, {
    label: 'Insert %%chat cell for the selected model',
    caption: 'Add a %%chat cell (and %load_ext jupyter_modelrunner if needed) to the notebook',
    isEnabled: args => ctx.tracker !== null && (typeof args.model === 'string' || state.selected !== null),
    execute: async args => {
      if (!ctx.tracker) {
        throw new Error('The notebook plugin is not available.');
      }
      await insertChatCell(app, ctx.tracker, targetModel(state, args));
    }
  });

  /** The image files selected in the file browser (server paths). */
  const selectedImages = (): string[] => {
    const items = ctx.fileBrowser ? Array.from(ctx.fileBrowser.selectedItems()) : [];
    return items.filter(item => item.type !== 'directory' && isImagePath(item.path)).map(item => item.path);
  };

  app.commands.addCommand(CommandIDs.askAboutImage, {
    label: 'Ask a Vision Model About This Image',
    caption: 'Insert a %%chat cell with --image for the selected image files, for a model that can see them',
    isVisible: () => ctx.tracker !== null && selectedImages().length > 0,
    execute: async args => {
      if (!ctx.tracker) {
        throw new Error('The notebook plugin is not available.');
      }
      const images = Array.isArray(args.images) ? (args.images as string[]) : selectedImages();
      let model = typeof args.model === 'string' ? args.model : '';
      try {
        if (!model) {
          if (!state.models.some(seesImages)) {
            await state.refreshModels(); // packaged or pulled by another client since the panel last read the list
          }
          model = familiar(modelName(visionModel(state.models, state.selected)));
        }
        await insertChatCell(app, ctx.tracker, model, images);
      } catch (err) {
        // From a context menu nothing else would show it: say what to do where the user clicked.
        await showErrorMessage('Model Runner: ask about an image', message(err));
      }
    }
  });
  app.contextMenu.addItem({
    command: CommandIDs.askAboutImage,
    selector: '.jp-DirListing-item[data-isdir="false"]',
    rank: 60
  });

  if (palette) {
    for (const command of [CommandIDs.pull, CommandIDs.unloadAll, CommandIDs.open]) {
      palette.addItem({ command, category: PALETTE_CATEGORY });
    }
  }
}
