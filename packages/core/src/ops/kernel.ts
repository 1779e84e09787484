import { tf } from '../tf.js';

/**
 * Whether the active backend registers the kernel `name`. Core's fused ops (MoE dispatch/combine,
 * causal attention, RoPE) call a backend's own kernel when it has one and otherwise run a generic
 * version built from stock tfjs ops.
 */
export function hasKernel(name: string): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}
