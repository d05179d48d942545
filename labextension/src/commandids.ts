/** Every command the extension registers, in one place. */
export namespace CommandIDs {
  export const open = 'modelrunner:open';
  export const pull = 'modelrunner:pull';
  export const unloadAll = 'modelrunner:unload-all';
  export const copySnippet = 'modelrunner:copy-openai-snippet';
  export const insertChatCell = 'modelrunner:insert-chat-cell';
  export const askAboutImage = 'modelrunner:ask-about-image';
}
