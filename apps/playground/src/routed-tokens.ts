/** The routed-tokens view: a validation snippet whose characters are coloured by the expert each was routed to. */
import { expertColor } from './charts.js';
import { el } from './dom.js';
import type { TokenRouting } from './protocol.js';

export interface RoutedSample {
  step: number;
  tokens: number[];
  layers: TokenRouting[];
}

/** Render `sample` into `box` for the layer chosen in `select` (adding options for new layers). */
export function renderRoutedTokens(box: HTMLElement, select: HTMLSelectElement, sample: RoutedSample | undefined): void {
  box.replaceChildren();
  if (!sample) return;
  for (const l of sample.layers) if (![...select.options].some((o) => o.value === l.layer)) select.append(el('option', { value: l.layer }, l.layer));
  const layer = sample.layers.find((l) => l.layer === select.value) ?? sample.layers[0];
  if (!layer) {
    box.textContent = 'this model has no per-token expert assignments (a dense model, or a router that mixes instead of dispatching)';
    return;
  }
  if (select.value !== layer.layer) select.value = layer.layer;
  sample.tokens.forEach((t, i) => {
    const ch = t === 10 ? '↵\n' : t >= 32 && t < 127 ? String.fromCharCode(t) : '·';
    const e = layer.expert[i] ?? -1;
    const span = el('span', { 'data-expert': String(e) }, ch);
    span.style.background = expertColor(e, layer.numExperts, 0.45);
    span.title = e >= 0 ? `token ${i}: expert ${e}` : `token ${i}: no expert`;
    box.append(span);
  });
}
