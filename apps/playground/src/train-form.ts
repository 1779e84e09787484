/** The training settings of the Build section: one text field per TrainConfig number, checked on change. */
import { defaultTrainConfig, type TrainConfig } from '@moelab/core';
import { $, el } from './dom.js';

const TRAIN_FIELDS: (keyof TrainConfig)[] = ['steps', 'batchSize', 'seqLen', 'lr', 'warmup', 'weightDecay', 'clip', 'evalEvery', 'evalBatches', 'seed'];
/** Fields that take any non-negative number; the others take non-negative integers. */
const REAL_FIELDS = new Set<keyof TrainConfig>(['lr', 'weightDecay', 'clip']);

export class TrainForm {
  private overrides: Partial<TrainConfig> = {};

  /** Replace the settings (a preset's or a checkpoint's) and re-render the fields. */
  set(overrides: Partial<TrainConfig>): void {
    this.overrides = { ...overrides };
    this.render();
  }

  /** The defaults with the user's and the preset's values on top. */
  value(): Partial<TrainConfig> {
    return { ...defaultTrainConfig, ...this.overrides };
  }

  private render(): void {
    const root = $('#train-form');
    root.replaceChildren();
    const cfg = this.value();
    for (const key of TRAIN_FIELDS) {
      const row = el('div', { class: 'field' });
      const input = el('input', { type: 'text', id: `train-${key}`, inputmode: 'decimal' });
      input.value = String(cfg[key]);
      const err = el('div', { class: 'error' });
      input.addEventListener('change', () => {
        const n = Number(input.value);
        const isInt = !REAL_FIELDS.has(key);
        if (!Number.isFinite(n) || n < 0 || (isInt && !Number.isInteger(n))) {
          err.textContent = `${key} must be a ${isInt ? 'non-negative integer' : 'non-negative number'} (got ${JSON.stringify(input.value)})`;
          return;
        }
        err.textContent = '';
        this.overrides = { ...this.overrides, [key]: n };
      });
      row.append(el('label', {}, key), input, el('span'), err);
      root.append(row);
    }
  }
}
