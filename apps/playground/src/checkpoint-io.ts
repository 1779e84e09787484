/** A run's checkpoint files on the page side: the two downloads of a save, the uploads of a load. */
import { download } from './dom.js';

/** Offer config.json and model.safetensors (the CLI's moelab-checkpoint-v1 pair) as downloads. */
export function downloadCheckpoint(configJson: string, weights: ArrayBuffer): void {
  download('config.json', new Blob([configJson], { type: 'application/json' }));
  download('model.safetensors', new Blob([weights], { type: 'application/octet-stream' }));
}

/** The chosen files' names and bytes (transferred to the worker, which parses them). */
export function readUploads(files: FileList): Promise<{ name: string; bytes: ArrayBuffer }[]> {
  return Promise.all([...files].map(async (f) => ({ name: f.name, bytes: await f.arrayBuffer() })));
}
