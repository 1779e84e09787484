import { tf } from '../tf.js';

/** Activation functions by name. `gelu` is the exact (erf) form; `gelu-tanh` the tanh approximation. */
export const ACTIVATIONS = ['relu', 'gelu', 'gelu-tanh', 'silu', 'relu2', 'identity'] as const;
export type Activation = (typeof ACTIVATIONS)[number];

export function activate(x: tf.Tensor, act: Activation): tf.Tensor {
  switch (act) {
    case 'relu':
      return tf.relu(x);
    case 'gelu':
      return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
    case 'gelu-tanh': {
      const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
      return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(inner)));
    }
    case 'silu':
      return tf.mul(x, tf.sigmoid(x));
    case 'relu2':
      return tf.square(tf.relu(x));
    case 'identity':
      return x;
  }
}
