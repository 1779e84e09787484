/**
 * The Build section's data choice: the bundled Brown Corpus slice (fetched once) or the user's own
 * UTF-8 text file, chosen or dropped (its last 10% is validation, see data.ts).
 */
import { splitText, type TextData } from './data.js';
import { $, el, fmt } from './dom.js';

export class DataSource {
  private brown?: TextData;
  private ownFile?: TextData;
  /** Texts added by other sections (the Fine-tune section's fine-tuning text), in the order added. */
  private readonly extra: TextData[] = [];

  /** Wires the file input and the drop zone. */
  constructor() {
    $<HTMLInputElement>('#data-file').addEventListener('change', (e) => {
      const f = (e.target as HTMLInputElement).files?.[0];
      if (f) void this.useTextFile(f);
    });
    const drop = $('#data-drop');
    drop.addEventListener('dragover', (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      const f = e.dataTransfer?.files?.[0];
      if (f) void this.useTextFile(f);
    });
  }

  /** The bundled corpus slice (public/corpus, written at build time). */
  async loadBrown(): Promise<TextData> {
    if (this.brown) return this.brown;
    const [train, val] = await Promise.all(
      ['corpus/brown-train.txt', 'corpus/brown-val.txt'].map(async (p) => {
        const r = await fetch(p);
        if (!r.ok) throw new Error(`could not load the bundled corpus (${p}: HTTP ${r.status})`);
        return r.text();
      }),
    );
    this.brown = { name: 'brown (bundled slice)', train: train!, val: val! };
    return this.brown;
  }

  /** Loads the bundled corpus in the background and reports it (or why not) under the data choice. */
  preload(): void {
    this.loadBrown()
      .then((b) => {
        $('#data-status').textContent = `${b.name}: ${fmt(b.train.length)} train + ${fmt(b.val.length)} validation characters`;
      })
      .catch((e) => {
        $('#data-error').textContent = (e as Error).message;
      });
  }

  /** The data the radio buttons select. */
  async current(): Promise<TextData> {
    const mode = document.querySelector<HTMLInputElement>('input[name=data]:checked')?.value;
    if (mode === 'file') {
      if (!this.ownFile) throw new Error('choose or drop a text file first (or pick the bundled corpus)');
      return this.ownFile;
    }
    return this.loadBrown();
  }

  /**
   * Every text the page has: the bundled corpus (when it loaded), the Build section's file and the
   * texts other sections added. Names are unique (a re-added file replaces the earlier one).
   */
  async texts(): Promise<TextData[]> {
    const out: TextData[] = [];
    try {
      out.push(await this.loadBrown());
    } catch {
      // Shown under the data choice already (preload).
    }
    if (this.ownFile) out.push(this.ownFile);
    for (const t of this.extra) if (!out.some((o) => o.name === t.name)) out.push(t);
    return out;
  }

  /** Read and split a text file for another section (its last 10% is validation) and keep it in `texts()`. */
  async addTextFile(file: File): Promise<TextData> {
    const data = await readTextFile(file);
    const at = this.extra.findIndex((t) => t.name === data.name);
    if (at >= 0) this.extra.splice(at, 1);
    this.extra.push(data);
    return data;
  }

  private async useTextFile(file: File): Promise<void> {
    const status = $('#data-status');
    const err = $('#data-error');
    err.textContent = '';
    try {
      this.ownFile = await readTextFile(file);
      $<HTMLInputElement>('input[name=data][value=file]').checked = true;
      status.textContent = `${file.name}: ${fmt(this.ownFile.train.length)} train + ${fmt(this.ownFile.val.length)} validation characters`;
    } catch (e) {
      this.ownFile = undefined;
      err.textContent = (e as Error).message;
    }
  }
}

/** A chosen or dropped file as training text (UTF-8 only; see splitText for the split and the checks). */
export async function readTextFile(file: File): Promise<TextData> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new Error(`${file.name}: not UTF-8 text`);
  }
  return splitText(file.name, text);
}

/**
 * Fill a choice list with the page's texts: a text the person chose stays chosen while it exists;
 * otherwise `texts[fallback]` (so a newly added text becomes the default until a choice is made).
 */
export function fillTextSelect(select: HTMLSelectElement, texts: TextData[], fallback: number): void {
  if (!select.dataset.watched) {
    select.dataset.watched = 'true';
    select.addEventListener('change', () => {
      select.dataset.chosen = 'true';
    });
  }
  const keep = select.dataset.chosen ? select.value : '';
  select.replaceChildren(...texts.map((t) => el('option', { value: t.name }, t.name)));
  const names = texts.map((t) => t.name);
  select.value = names.includes(keep) ? keep : (names[fallback] ?? names[0] ?? '');
}
