/**
 * The content hash that names a base model in an adapter checkpoint: SHA-256 over every parameter and
 * buffer of the base, in name order, each as its name, shape and little-endian float32 bytes. Two bases
 * with the same weights under the same names hash alike whatever their file or training history; one
 * changed bit gives another hash. Adapter modules (the `adapter` child) are left out.
 */
import type { Module } from '@moelab/core';
import { sha256 } from '@noble/hashes/sha2';

const ADAPTER_PREFIX = 'adapter.';

/** `sha256:<hex>` of the base weights of `model` (see the file header). */
export function baseContentHash(model: Module): string {
  const h = sha256.create();
  const enc = new TextEncoder();
  const entries = model
    .stateDict()
    .filter(([name]) => !name.startsWith(ADAPTER_PREFIX))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [name, v] of entries) {
    h.update(enc.encode(`${name}\u0000${v.dtype}\u0000${v.shape.join(',')}\u0000`));
    const data = v.dataSync();
    const bytes =
      data instanceof Float32Array || data instanceof Int32Array
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : Float32Array.from(data as ArrayLike<number>);
    h.update(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes.buffer));
  }
  let hex = '';
  for (const b of h.digest()) hex += b.toString(16).padStart(2, '0');
  return `sha256:${hex}`;
}
