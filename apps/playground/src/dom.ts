/** DOM helpers shared by the page's modules. */

/** The element matching `sel` under `root`; throws naming the selector when the page lacks it. */
export function $<T extends HTMLElement = HTMLElement>(sel: string, root: ParentNode = document): T {
  const e = root.querySelector(sel);
  if (!e) throw new Error(`missing element ${sel}`);
  return e as T;
}

/** A new element with attributes and optional text. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

/** 1234567 -> "1,234,567". */
export const fmt = (n: number): string => n.toLocaleString('en-US');

/** Offer `blob` as a download named `name`. */
export function download(name: string, blob: Blob): void {
  const a = el('a', { download: name });
  a.href = URL.createObjectURL(blob);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}
