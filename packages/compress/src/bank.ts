/**
 * The `mlp` / `glu` expert banks as weight-level methods see them (merging alignment, MoE-Pruner):
 *
 *   f_e(x) = act(x W1[e]) W2[e]                    W1 [E, d, h], W2 [E, h, d]
 *   f_e(x) = (act(x W1[e]) ⊙ (x W3[e])) W2[e]      with W3 [E, d, h] (gated)
 *
 * Any other bank is refused by name: the methods here read and write these matrices directly.
 */
import { type Activation, activate, MoelabError, tf } from '@moelab/core';

export interface MlpBank {
  w1: tf.Variable;
  w2: tf.Variable;
  w3?: tf.Variable;
  options?: { activation?: Activation };
}

/** The bank as an mlp / glu bank, or a one-line error naming the layer and what `purpose` needs. */
export function asMlpBank(experts: unknown, path: string, purpose: string): MlpBank {
  const b = experts as Partial<MlpBank>;
  const ok = (v: unknown): v is tf.Variable => v instanceof tf.Variable && v.shape.length === 3;
  if (!ok(b.w1) || !ok(b.w2) || (b.w3 !== undefined && !ok(b.w3)))
    throw new MoelabError(
      `${purpose} needs an mlp / glu expert bank (w1 [E, d, h], w2 [E, h, d], w3); this layer's bank is ${(experts as object).constructor.name}`,
      path,
    );
  return b as MlpBank;
}

/**
 * The hidden activations (the input of W2) of assignment rows: row n is act(xs[n] W1[ex[n]]) (⊙ xs[n] W3[ex[n]]).
 * One matmul per expert present in `ex`. Returns [N, h].
 */
export function mlpHidden(bank: MlpBank, xs: tf.Tensor2D, ex: Int32Array, path: string): tf.Tensor2D {
  const activation = bank.options?.activation;
  if (!activation) throw new MoelabError('the expert bank does not name its activation, so its hidden units cannot be recomputed', path);
  return tf.tidy(() => {
    const N = ex.length;
    const h = bank.w1.shape[2]!;
    const byExpert = new Map<number, number[]>();
    ex.forEach((e, n) => {
      const rows = byExpert.get(e);
      if (rows) rows.push(n);
      else byExpert.set(e, [n]);
    });
    const parts: tf.Tensor2D[] = [];
    const order: number[] = [];
    for (const [e, rows] of byExpert) {
      const xe = tf.gather(xs, tf.tensor1d(rows, 'int32'));
      const pick = (w: tf.Variable) => tf.reshape(tf.slice(w, [e, 0, 0], [1, -1, -1]), [w.shape[1]!, w.shape[2]!]) as tf.Tensor2D;
      let he = activate(tf.matMul(xe, pick(bank.w1)), activation);
      if (bank.w3) he = tf.mul(he, tf.matMul(xe, pick(bank.w3)));
      parts.push(he as tf.Tensor2D);
      order.push(...rows);
    }
    if (parts.length === 0) return tf.zeros([0, h]) as tf.Tensor2D;
    const stacked = tf.concat(parts, 0);
    const inverse = new Int32Array(N);
    order.forEach((n, i) => {
      inverse[n] = i;
    });
    return tf.gather(stacked, tf.tensor1d(inverse, 'int32')) as tf.Tensor2D;
  });
}
