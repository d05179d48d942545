/**
 * Images and the models that can see them: which files a `%%chat --image` cell can take, and which model answers.
 * Pure, so the choice is tested without a browser.
 */

import type { Model } from './types';

/** The picture formats llama-server's and vLLM's image loaders read (by file name). */
const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.gif', '.webp', '.bmp'];

export function isImagePath(path: string): boolean {
  const lower = path.toLowerCase();
  return IMAGE_EXTENSIONS.some(extension => lower.endsWith(extension));
}

/** Whether the model can take images: a GGUF with its multimodal projector (`package --mmproj`, or pulled). */
export function seesImages(model: Model): boolean {
  return model.multimodal === true;
}

/**
 * The model to ask about an image: the sidebar's selection when it can see images, else the newest model that can.
 * Throws with what to do when no model in the store can.
 */
export function visionModel(models: Model[], selected: Model | null): Model {
  if (selected && seesImages(selected)) {
    return selected;
  }
  const candidates = models.filter(seesImages).sort((a, b) => b.created - a.created);
  if (candidates.length === 0) {
    throw new Error(
      'No model here can see images. Pull a vision model, or package one with its projector: ' +
        '`jupyter modelrunner package --gguf model.gguf --mmproj mmproj.gguf NAME`.'
    );
  }
  return candidates[0];
}
