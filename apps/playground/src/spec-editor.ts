/**
 * The Build section's model spec: presets, the registry browser, the schema form and the spec JSON
 * (kept in sync both ways), live parameter counts, and the training settings that go with a spec.
 */
import { buildModel, type LanguageModel, type Module, modelSummary, type NodeSpec, type Registry, type TrainConfig } from '@moelab/core';
import { $, el, fmt } from './dom.js';
import { SpecForm } from './form.js';
import { TrainForm } from './train-form.js';

/** "Start from scratch": the smallest spec, every option at its default. */
const SCRATCH: NodeSpec = { type: 'transformer-lm', vocabSize: 256, dModel: 32, contextLength: 32 };
const SCRATCH_TRAIN: Partial<TrainConfig> = { batchSize: 8, seqLen: 32, steps: 200, evalEvery: 10, evalBatches: 2, lr: 1e-2, warmup: 5 };

export class SpecEditor {
  private current: NodeSpec = SCRATCH;
  private readonly form: SpecForm;
  private readonly train = new TrainForm();
  private readonly specJson = $<HTMLTextAreaElement>('#spec-json');
  private readonly presetSelect = $<HTMLSelectElement>('#preset');
  private summaryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly registry: Registry) {
    this.form = new SpecForm($('#form'), {
      registry,
      onChange: (next) => {
        this.current = next;
        this.writeSpecJson();
        this.scheduleSummary();
      },
    });
    this.specJson.addEventListener('input', () => this.readSpecJson());
    for (const p of registry.presets()) this.presetSelect.append(el('option', { value: p.name }, p.name));
    this.presetSelect.value = registry.hasPreset('moe-micro') ? 'moe-micro' : (registry.presets()[0]?.name ?? '');
    this.presetSelect.addEventListener('change', () => this.showPresetDescription());
    $('#use-preset').addEventListener('click', () => this.usePreset(this.presetSelect.value));
    $('#scratch').addEventListener('click', () => this.set(SCRATCH, SCRATCH_TRAIN));
  }

  /** Fill the registry browser and load the selected preset. */
  start(): void {
    this.renderRegistry();
    this.showPresetDescription();
    this.usePreset(this.presetSelect.value);
  }

  /** A copy of the spec being edited. */
  spec(): NodeSpec {
    return structuredClone(this.current);
  }

  trainConfig(): Partial<TrainConfig> {
    return this.train.value();
  }

  /** Edit `next` with the training settings `train` (a preset's, or a loaded checkpoint's). */
  set(next: NodeSpec, train: Partial<TrainConfig>): void {
    this.current = structuredClone(next);
    this.form.set(this.current);
    this.writeSpecJson();
    this.train.set(train);
    this.scheduleSummary();
  }

  private usePreset(name: string): void {
    const p = this.registry.preset(name);
    this.set(p.spec, p.train);
  }

  private showPresetDescription(): void {
    $('#preset-desc').textContent = this.registry.presets().find((p) => p.name === this.presetSelect.value)?.description ?? '';
  }

  private writeSpecJson(): void {
    this.specJson.value = JSON.stringify(this.current, null, 2);
    $('#spec-error').textContent = '';
  }

  private readSpecJson(): void {
    try {
      const parsed = JSON.parse(this.specJson.value) as NodeSpec;
      if (typeof parsed !== 'string' && (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)))
        throw new Error('the spec must be a model node: an object with a "type" field');
      this.current = parsed;
      $('#spec-error').textContent = '';
      this.form.set(this.current);
      this.scheduleSummary();
    } catch (e) {
      $('#spec-error').textContent = `spec JSON: ${(e as Error).message}`;
    }
  }

  private scheduleSummary(): void {
    clearTimeout(this.summaryTimer);
    this.summaryTimer = setTimeout(() => this.updateSummary(), 150);
  }

  /** Build the spec on the page's plain-JS backend to count parameters (and surface builder errors). */
  private updateSummary(): void {
    const out = $('#summary');
    const err = $('#build-error');
    let model: (Module & LanguageModel) | undefined;
    try {
      const built = buildModel(this.current, this.registry, 0);
      model = built;
      const s = modelSummary(built);
      out.textContent = `${fmt(s.parameters)} parameters · ${fmt(s.activeParameters)} active per token · ${fmt(s.nonEmbeddingParameters)} non-embedding · ${fmt(s.forwardFlopsPerToken)} FLOPs per token (forward)`;
      out.dataset.parameters = String(s.parameters);
      out.dataset.active = String(s.activeParameters);
      err.textContent = '';
    } catch (e) {
      out.textContent = '';
      delete out.dataset.parameters;
      err.textContent = (e as Error).message;
    } finally {
      model?.dispose();
    }
  }

  private renderRegistry(): void {
    const root = $('#registry-kinds');
    root.replaceChildren();
    for (const kind of this.registry.kinds()) {
      const row = el('div', { class: 'field' });
      const sel = el('select', { 'data-kind': kind });
      for (const name of this.registry.names(kind)) sel.append(el('option', { value: name }, name));
      const desc = el('div', { class: 'desc' });
      const show = () => {
        const e = this.registry.get(kind, sel.value);
        desc.textContent = `${e.description}${e.reference ? ` (${e.reference})` : ''}`;
      };
      sel.addEventListener('change', show);
      show();
      row.append(el('label', {}, `${kind} (${this.registry.names(kind).length})`), sel, desc);
      root.append(row);
    }
  }
}
