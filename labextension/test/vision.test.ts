import type { Model } from '../src/types';
import { isImagePath, visionModel } from '../src/vision';

function model(id: string, created: number, multimodal?: boolean): Model {
  return { id, tags: [`ai/${id}:latest`], created, config: {}, multimodal, engine: null, engine_error: null };
}

describe('vision', () => {
  it('recognises the picture files an engine reads', () => {
    expect(isImagePath('data/Cat.PNG')).toBe(true);
    expect(isImagePath('photo.jpeg')).toBe(true);
    expect(isImagePath('notes.ipynb')).toBe(false);
    expect(isImagePath('png')).toBe(false);
  });

  it('asks the selected model when it sees images, else the newest one that does', () => {
    const text = model('text', 30);
    const oldEyes = model('old-eyes', 10, true);
    const newEyes = model('new-eyes', 20, true);
    expect(visionModel([text, oldEyes, newEyes], oldEyes)).toBe(oldEyes);
    expect(visionModel([text, oldEyes, newEyes], text)).toBe(newEyes);
    expect(visionModel([text, oldEyes, newEyes], null)).toBe(newEyes);
  });

  it('says how to get a vision model when there is none', () => {
    expect(() => visionModel([model('text', 1)], null)).toThrow(/--mmproj/);
  });
});
