/**
 * The checkpoint a section works on (Fine-tune, Compress): the model of run A or B as trained so far
 * (exported from its worker, no download), or uploaded checkpoint files (config.json +
 * model.safetensors, the CLI's format; parsed in the job worker, never run).
 */
import { readUploads } from './checkpoint-io.js';
import { el, fmt } from './dom.js';
import type { JobFile } from './job-protocol.js';
import type { RunPanel } from './run-panel.js';

export interface PickedModel {
  /** `runA@40`, or the uploaded files' names. */
  name: string;
  files: JobFile[];
}

export class ModelSource {
  current?: PickedModel;
  private readonly line: HTMLElement;

  /** Renders the buttons and the file input into `root`; `onError` shows a message in the section. */
  constructor(
    root: HTMLElement,
    prefix: string,
    runs: RunPanel[],
    private readonly onError: (message: string) => void,
  ) {
    const row = el('div', { class: 'row' });
    for (const run of runs) {
      const b = el('button', { type: 'button', class: `${prefix}-use-${run.name.toLowerCase()}` }, `Use run ${run.name}'s model`);
      b.addEventListener('click', () => void this.useRun(run));
      row.append(b);
    }
    const input = el('input', { type: 'file', multiple: '', accept: '.json,.safetensors', class: `${prefix}-file` });
    input.addEventListener('change', () => void this.useFiles(input.files));
    const label = el('label', {}, 'or checkpoint files ');
    label.append(input);
    row.append(label);
    this.line = el('div', { class: `meta ${prefix}-model` }, 'no model chosen yet');
    root.append(row, this.line);
  }

  /** The chosen model's files, copied (a job transfers its copy to the worker). */
  take(): PickedModel {
    if (!this.current) throw new Error("choose a model first: a run's model or checkpoint files");
    return { name: this.current.name, files: this.current.files.map((f) => ({ name: f.name, bytes: f.bytes.slice(0) })) };
  }

  private set(p: PickedModel): void {
    this.current = p;
    const bytes = p.files.reduce((n, f) => n + f.bytes.byteLength, 0);
    this.line.textContent = `model: ${p.name} (${fmt(bytes)} bytes of checkpoint)`;
  }

  private async useRun(run: RunPanel): Promise<void> {
    try {
      const ex = await run.exportModel();
      this.set({
        name: `run${run.name}@${ex.step}`,
        files: [
          { name: 'config.json', bytes: new TextEncoder().encode(ex.configJson).buffer as ArrayBuffer },
          { name: 'model.safetensors', bytes: ex.weights },
        ],
      });
    } catch (e) {
      this.onError((e as Error).message);
    }
  }

  private async useFiles(files: FileList | null): Promise<void> {
    if (!files || files.length === 0) return;
    try {
      const list = await readUploads(files);
      this.set({ name: list.map((f) => f.name).join(' + '), files: list });
    } catch (e) {
      this.onError((e as Error).message);
    }
  }
}
