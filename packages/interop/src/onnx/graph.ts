/**
 * A small builder for one ONNX graph: nodes with generated unique output names, float32 / int64
 * initializers (deduplicated by name, so a weight used by several scheduled layers is stored once),
 * and the shorthand ops the exporter composes (linear layers, norms, activations).
 */
import { ATTR, ONNX_FLOAT, ONNX_INT64, type OnnxAttribute, type OnnxInlineTensor, type OnnxNode, type OnnxTensor } from './proto.js';

/** An attribute value: `{ f }` float, `{ i }` int, `{ ints }`, `{ floats }`, `{ s }` string, `{ t }` tensor. */
export type Attr = { f: number } | { i: number } | { ints: number[] } | { floats: number[] } | { s: string } | { t: OnnxTensor };

function attribute(name: string, a: Attr): OnnxAttribute {
  if ('f' in a) return { name, type: ATTR.FLOAT, f: a.f };
  if ('i' in a) return { name, type: ATTR.INT, i: a.i };
  if ('ints' in a) return { name, type: ATTR.INTS, ints: a.ints };
  if ('floats' in a) return { name, type: ATTR.FLOATS, floats: a.floats };
  if ('s' in a) return { name, type: ATTR.STRING, s: new TextEncoder().encode(a.s) };
  return { name, type: ATTR.TENSOR, t: a.t };
}

function bytesOf(a: Float32Array | BigInt64Array): Uint8Array {
  // ONNX raw_data is little-endian, the byte order of every platform JavaScript runs on in practice.
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}

export function floatTensor(name: string, dims: number[], data: Float32Array): OnnxInlineTensor {
  return { name, dims, dataType: ONNX_FLOAT, rawData: bytesOf(data) };
}

export function int64Tensor(name: string, dims: number[], data: number[]): OnnxInlineTensor {
  return { name, dims, dataType: ONNX_INT64, rawData: bytesOf(BigInt64Array.from(data, (v) => BigInt(v))) };
}

export class OnnxGraph {
  readonly nodes: OnnxNode[] = [];
  readonly initializers = new Map<string, OnnxInlineTensor>();
  private counter = 0;
  private readonly constants = new Map<string, string>();

  /** A fresh value name from a hint. */
  fresh(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  /** Add a node; returns its output names (`outputs` of them, named after `hint`). */
  node(opType: string, inputs: string[], attrs: Record<string, Attr> = {}, outputs = 1, hint = opType): string[] {
    const out = Array.from({ length: outputs }, () => this.fresh(hint));
    this.nodes.push({
      name: this.fresh(`n_${opType}`),
      opType,
      input: inputs,
      output: out,
      attribute: Object.entries(attrs).map(([n, a]) => attribute(n, a)),
    });
    return out;
  }

  /** One-output shorthand of {@link node}. */
  op(opType: string, inputs: string[], attrs: Record<string, Attr> = {}, hint = opType): string {
    return this.node(opType, inputs, attrs, 1, hint)[0]!;
  }

  /** A float32 initializer (stored once per name). */
  float(name: string, dims: number[], data: () => Float32Array): string {
    if (!this.initializers.has(name)) this.initializers.set(name, floatTensor(name, dims, data()));
    return name;
  }

  /** A float32 constant (a scalar for one value), shared by every use. */
  f32(values: number | number[], dims?: number[]): string {
    const arr = typeof values === 'number' ? [values] : values;
    const shape = dims ?? (typeof values === 'number' ? [] : [arr.length]);
    const key = `f/${shape}/${arr}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.fresh('const_f');
      this.initializers.set(name, floatTensor(name, shape, Float32Array.from(arr)));
      this.constants.set(key, name);
    }
    return name;
  }

  /** An int64 constant: a 1-D tensor of `values`, or a scalar with `scalar`. */
  i64(values: number[] | number): string {
    const scalar = typeof values === 'number';
    const arr = scalar ? [values] : values;
    const key = `i/${scalar}/${arr}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.fresh('const_i');
      this.initializers.set(name, int64Tensor(name, scalar ? [] : [arr.length], arr));
      this.constants.set(key, name);
    }
    return name;
  }

  // ---- shorthand ops -------------------------------------------------------------------------

  add(a: string, b: string): string {
    return this.op('Add', [a, b]);
  }
  sub(a: string, b: string): string {
    return this.op('Sub', [a, b]);
  }
  mul(a: string, b: string): string {
    return this.op('Mul', [a, b]);
  }
  div(a: string, b: string): string {
    return this.op('Div', [a, b]);
  }
  matmul(a: string, b: string): string {
    return this.op('MatMul', [a, b]);
  }
  reshape(x: string, shape: number[]): string {
    return this.op('Reshape', [x, this.i64(shape)]);
  }
  transpose(x: string, perm: number[]): string {
    return this.op('Transpose', [x], { perm: { ints: perm } });
  }
  unsqueeze(x: string, axes: number[]): string {
    return this.op('Unsqueeze', [x, this.i64(axes)]);
  }
  /** x[..., start:end] along `axis` (static bounds). */
  slice(x: string, axis: number, start: number, end: number): string {
    return this.op('Slice', [x, this.i64([start]), this.i64([end]), this.i64([axis])]);
  }
  concat(xs: string[], axis: number): string {
    return this.op('Concat', xs, { axis: { i: axis } });
  }
  gather(x: string, indices: string, axis = 0): string {
    return this.op('Gather', [x, indices], { axis: { i: axis } });
  }
  sigmoid(x: string): string {
    return this.op('Sigmoid', [x]);
  }
  /** softmax over the last axis. */
  softmax(x: string): string {
    return this.op('Softmax', [x], { axis: { i: -1 } });
  }
  /** Sum over `axes` (opset 13+: the axes are an input). */
  reduceSum(x: string, axes: number[], keepdims: boolean): string {
    return this.op('ReduceSum', [x, this.i64(axes)], { keepdims: { i: keepdims ? 1 : 0 } });
  }
  /** Mean over `axes` (an attribute up to opset 17). */
  reduceMean(x: string, axes: number[], keepdims: boolean): string {
    return this.op('ReduceMean', [x], { axes: { ints: axes }, keepdims: { i: keepdims ? 1 : 0 } });
  }
  /** A float32 tensor of zeros with the (1-D int64) shape `shape`. */
  zeros(shape: string): string {
    return this.fill(shape, 0);
  }
  /** A float32 tensor filled with `value`, of the (1-D int64) shape `shape`. */
  fill(shape: string, value: number): string {
    return this.op('ConstantOfShape', [shape], { value: { t: floatTensor('value', [1], Float32Array.of(value)) } });
  }
}
