/**
 * Quantized checkpoints: which parameters to quantize (targets), the safetensors layout they are
 * stored in, and loading them back (packed on a backend with the `MoelabMoePacked` kernel,
 * dequantized to float everywhere else). Layout of `model.safetensors` (docs/compression.md#quantization):
 *
 *   <param>.qcodes  I32 [batch, din, ceil(dout * bits / 32)]   codes, LSB first per row
 *   <param>.qscale  F32 [batch, G, dout]                         step s per group and channel
 *   <param>.qzero   F32 [batch, G, dout]                         zero point z: W^ = s (u - z)
 *   __metadata__["moelab.quantization"] = JSON {"version": 1, "tensors": {<param>: {"bits",
 *     "group", "scheme", "shape"}}}
 *
 * and every other parameter as a float tensor under its own name, as in any checkpoint.
 */
import {
  closeMatches,
  hasKernel,
  type LoadReport,
  loadState,
  type Module,
  MOE_PACKED_KERNEL,
  MoelabError,
  type PackedBits,
  packedGroups,
  packedRowWords,
  type SafeTensor,
  type SafeTensorsFile,
  type TensorToWrite,
} from '@moelab/core';
import { installPackedBank, packedLayout, routedExpertBanks } from './packed.js';
import {
  checkBits,
  checkGroup,
  dequantizeTensor,
  matrixView,
  type PackedTensor,
  packedBytes,
  QUANT_SCHEMES,
  type QuantOptions,
  type QuantScheme,
  quantizeTensor,
} from './quantize.js';

export const QUANT_METADATA_KEY = 'moelab.quantization';
export const QUANT_FORMAT_VERSION = 1;
const SUFFIXES = ['qcodes', 'qscale', 'qzero'] as const;

export interface QuantizedTensorInfo {
  bits: PackedBits;
  group: number;
  scheme: QuantScheme;
  shape: number[];
}
export interface QuantMetadata {
  version: number;
  tensors: Record<string, QuantizedTensorInfo>;
}

/** `*` matches within one dot-separated segment, `**` across segments; a comma separates globs. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^.]*';
    else if (c === '?') re += '[^.]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/**
 * The parameters a quantization touches: with `targets` (globs over parameter paths), every matrix
 * (rank >= 2) they match; without, the weights of every routed expert bank (the `experts` of each
 * MoE layer; never the router, attention, embeddings, norms or shared experts). A glob that matches
 * no matrix is an error naming close parameter paths.
 */
export function selectTargets(model: Module, targets?: readonly string[]): string[] {
  const params = model.namedParameters();
  const matrices = params.filter(([, v]) => v.rank >= 2).map(([n]) => n);
  if (!targets || targets.length === 0) {
    const out: string[] = [];
    for (const { path } of routedExpertBanks(model))
      for (const n of matrices) if (n.startsWith(`${path}.`) && !n.slice(path.length + 1).includes('.')) out.push(n);
    if (out.length === 0)
      throw new MoelabError(
        'the model has no routed expert weights to quantize (no moe layer with an expert bank); name the parameters with targets',
        'targets',
      );
    return out;
  }
  const chosen = new Set<string>();
  for (const glob of targets) {
    const re = globToRegExp(glob);
    const hit = matrices.filter((n) => re.test(n));
    if (hit.length === 0) {
      const vectorHit = params.some(([n, v]) => v.rank < 2 && re.test(n));
      const near = closeMatches(glob, matrices);
      throw new MoelabError(
        `target "${glob}" matches no ${vectorHit ? 'matrix (only vectors, which are never quantized)' : 'parameter'}${near.length ? `; close: ${near.join(', ')}` : ''}`,
        'targets',
      );
    }
    for (const n of hit) chosen.add(n);
  }
  return matrices.filter((n) => chosen.has(n));
}

export interface QuantizeModelOptions extends Partial<QuantOptions> {
  /** Globs over parameter paths (default: routed experts only). */
  targets?: readonly string[];
}

export interface QuantizedModel {
  /** Quantized parameters by path. */
  packed: Map<string, PackedTensor>;
  /** Every other parameter and buffer, as float tensors. */
  float: Map<string, TensorToWrite>;
  options: QuantOptions;
}

/** Resolve defaults and check the options (bits 4, channel-wise, symmetric by default). */
export function quantOptions(o: Partial<QuantOptions> = {}): QuantOptions {
  const scheme = o.scheme ?? 'symmetric';
  if (!(QUANT_SCHEMES as readonly string[]).includes(scheme))
    throw new MoelabError(`scheme must be one of ${QUANT_SCHEMES.join(', ')} (got ${JSON.stringify(scheme)})`, 'scheme');
  return { bits: checkBits(o.bits ?? 4, 'bits'), group: checkGroup(o.group ?? 0, 'group'), scheme };
}

/** Quantize the target parameters of a (float) model; the model is not changed. */
export function quantizeModel(model: Module, opts: QuantizeModelOptions = {}): QuantizedModel {
  const options = quantOptions(opts);
  const targets = new Set(selectTargets(model, opts.targets));
  const packed = new Map<string, PackedTensor>();
  const float = new Map<string, TensorToWrite>();
  for (const [name, v] of model.stateDict()) {
    const data = v.dataSync() as Float32Array;
    if (targets.has(name)) packed.set(name, quantizeTensor(data, v.shape, options));
    else float.set(name, { shape: v.shape.slice(), data });
  }
  return { packed, float, options };
}

/** The tensors and metadata of `model.safetensors` for a quantized model. */
export function quantizedTensors(q: Pick<QuantizedModel, 'packed' | 'float'>): { tensors: Map<string, TensorToWrite>; metadata: Record<string, string> } {
  const tensors = new Map(q.float);
  const meta: QuantMetadata = { version: QUANT_FORMAT_VERSION, tensors: {} };
  for (const [name, p] of q.packed) {
    const G = packedGroups(p.din, p.group);
    tensors.set(`${name}.qcodes`, { dtype: 'I32', shape: [p.batch, p.din, packedRowWords(p.dout, p.bits)], data: p.codes });
    tensors.set(`${name}.qscale`, { shape: [p.batch, G, p.dout], data: p.scale });
    tensors.set(`${name}.qzero`, { shape: [p.batch, G, p.dout], data: p.zero });
    meta.tensors[name] = { bits: p.bits, group: p.group, scheme: p.scheme, shape: p.shape };
  }
  return { tensors, metadata: { [QUANT_METADATA_KEY]: JSON.stringify(meta) } };
}

/** Whether a safetensors file holds quantized parameters. */
export function isQuantized(file: Pick<SafeTensorsFile, 'metadata'>): boolean {
  return file.metadata[QUANT_METADATA_KEY] !== undefined;
}

/**
 * The quantized parameters of a file, checked against the metadata (every listed parameter has its
 * three tensors with the shapes its bits, group and shape imply), and the remaining float tensors.
 */
export function readQuantized(file: SafeTensorsFile, source = 'model.safetensors'): { packed: Map<string, PackedTensor>; float: Map<string, SafeTensor> } {
  const raw = file.metadata[QUANT_METADATA_KEY];
  const float = new Map(file.tensors);
  const packed = new Map<string, PackedTensor>();
  if (raw === undefined) {
    const stray = [...file.tensors.keys()].find((n) => SUFFIXES.some((s) => n.endsWith(`.${s}`)));
    if (stray) throw new MoelabError(`tensor "${stray}" is quantized but the file has no "${QUANT_METADATA_KEY}" metadata`, source);
    return { packed, float };
  }
  let meta: QuantMetadata;
  try {
    meta = JSON.parse(raw) as QuantMetadata;
  } catch (e) {
    throw new MoelabError(`metadata "${QUANT_METADATA_KEY}" is not valid JSON (${(e as Error).message})`, source);
  }
  if (meta.version !== QUANT_FORMAT_VERSION)
    throw new MoelabError(
      `quantization format version ${JSON.stringify(meta.version)} is not supported (this moelab reads version ${QUANT_FORMAT_VERSION})`,
      source,
    );
  for (const [name, info] of Object.entries(meta.tensors ?? {})) {
    const where = `${source}: quantized tensor "${name}"`;
    const bits = checkBits(info.bits, where);
    const group = checkGroup(info.group, where);
    if (!(QUANT_SCHEMES as readonly string[]).includes(info.scheme)) throw new MoelabError(`unknown scheme ${JSON.stringify(info.scheme)}`, where);
    if (!Array.isArray(info.shape) || !info.shape.every((n) => Number.isInteger(n) && n > 0))
      throw new MoelabError(`shape must be a list of positive integers (got ${JSON.stringify(info.shape)})`, where);
    const { batch, din, dout, transposed } = matrixView(info.shape);
    const G = packedGroups(din, group);
    const want: Record<(typeof SUFFIXES)[number], number[]> = {
      qcodes: [batch, din, packedRowWords(dout, bits)],
      qscale: [batch, G, dout],
      qzero: [batch, G, dout],
    };
    const got = {} as Record<(typeof SUFFIXES)[number], SafeTensor>;
    for (const s of SUFFIXES) {
      const t = file.tensors.get(`${name}.${s}`);
      if (!t) throw new MoelabError(`tensor "${name}.${s}" is missing`, where);
      const ok = t.shape.length === want[s].length && t.shape.every((n, i) => n === want[s][i]);
      if (!ok) throw new MoelabError(`tensor "${name}.${s}" has shape [${t.shape.join(', ')}], expected [${want[s].join(', ')}]`, where);
      if ((s === 'qcodes') !== (t.dtype === 'I32'))
        throw new MoelabError(`tensor "${name}.${s}" must be ${s === 'qcodes' ? 'I32' : 'F32'} (got ${t.dtype})`, where);
      got[s] = t;
      float.delete(`${name}.${s}`);
    }
    packed.set(name, {
      shape: info.shape.slice(),
      transposed,
      batch,
      din,
      dout,
      bits,
      group: G === 1 ? 0 : group,
      scheme: info.scheme,
      codes: got.qcodes.data as Int32Array,
      scale: got.qscale.data as Float32Array,
      zero: got.qzero.data as Float32Array,
    });
  }
  return { packed, float };
}

export interface QuantizedLoadReport extends LoadReport {
  /** Paths of the expert banks that run packed. */
  packedBanks: string[];
  /** Quantized parameters loaded as dequantized float weights. */
  dequantized: string[];
}

/**
 * Load a checkpoint's tensors into a freshly built model. Quantized parameters of routed expert
 * banks run packed when `packed` is on (default: when the backend has the `MoelabMoePacked` kernel)
 * and the bank qualifies (packed.ts); every other quantized parameter is dequantized to float.
 * Strict like `loadState`: missing, unexpected or mis-shaped tensors are one error.
 */
export function loadQuantizedState(model: Module, file: SafeTensorsFile, opts: { packed?: boolean; source?: string } = {}): QuantizedLoadReport {
  const source = opts.source ?? 'model.safetensors';
  const { packed, float } = readQuantized(file, source);
  const runPacked = opts.packed ?? hasKernel(MOE_PACKED_KERNEL);
  const own = new Map(model.stateDict());
  for (const [name, p] of packed) {
    const v = own.get(name);
    if (v && (v.shape.length !== p.shape.length || v.shape.some((n, i) => n !== p.shape[i])))
      throw new MoelabError(
        `tensors do not match the model — wrong shape: ${name} (model ${JSON.stringify(v.shape)}, file ${JSON.stringify(p.shape)})`,
        source,
      );
  }
  const packedBanks: string[] = [];
  const install: (() => void)[] = [];
  const consumed = new Set<string>();
  if (runPacked) {
    for (const { path, layer, bank } of routedExpertBanks(model)) {
      if (layer.router.mix) continue; // mixing routers (SMEAR) read the float weights themselves
      const layout = packedLayout(bank);
      if (!layout) continue;
      const names = [layout.w1, layout.w2, layout.w3].filter((n): n is string => n !== undefined);
      const ps = names.map((n) => packed.get(`${path}.${n}`));
      if (ps.some((p) => !p) || ps.some((p) => p!.bits !== ps[0]!.bits || p!.group !== ps[0]!.group || p!.transposed)) continue;
      install.push(() => installPackedBank(bank, layout, new Map(names.map((n, i) => [n, ps[i]!]))));
      for (const n of names) consumed.add(`${path}.${n}`);
      packedBanks.push(path);
    }
  }
  // Everything that does not run packed loads as float, through the strict loader.
  const tensors = new Map<string, SafeTensor | TensorToWrite>(float);
  const dequantized: string[] = [];
  for (const [name, p] of packed) {
    if (consumed.has(name)) continue;
    tensors.set(name, { shape: p.shape.slice(), data: dequantizeTensor(p) });
    dequantized.push(name);
  }
  // Check everything before the packed banks replace their float parameters, so that a failed load
  // leaves the model untouched.
  const remaining = [...own.keys()].filter((n) => !consumed.has(n));
  const missing = remaining.filter((n) => !tensors.has(n));
  const unexpected = [...tensors.keys()].filter((n) => !own.has(n) || consumed.has(n));
  const mismatched = remaining.filter((n) => {
    const t = tensors.get(n);
    const v = own.get(n)!;
    return t && (t.shape.length !== v.shape.length || t.shape.some((d, i) => d !== v.shape[i]));
  });
  if (missing.length || unexpected.length || mismatched.length) {
    const parts: string[] = [];
    if (missing.length) parts.push(`missing: ${missing.join(', ')}`);
    if (unexpected.length) parts.push(`unexpected: ${unexpected.join(', ')}`);
    if (mismatched.length)
      parts.push(
        `wrong shape: ${mismatched.map((n) => `${n} (model ${JSON.stringify(own.get(n)!.shape)}, file ${JSON.stringify(tensors.get(n)!.shape)})`).join(', ')}`,
      );
    throw new MoelabError(`tensors do not match the model — ${parts.join('; ')}`, source);
  }
  for (const f of install) f();
  // The packed banks' buffers already hold their tensors; everything else loads here.
  const report = loadState(model, tensors, { source, strict: false });
  return { ...report, missing: [], loaded: [...report.loaded, ...consumed], packedBanks, dequantized };
}

/** Bytes of the quantized parameters (codes + scales + zero points) and of their float32 originals. */
export function quantizedSize(packed: Map<string, PackedTensor>): { packedBytes: number; floatBytes: number } {
  let p = 0;
  let f = 0;
  for (const t of packed.values()) {
    p += packedBytes(t);
    f += 4 * t.shape.reduce((a, b) => a * b, 1);
  }
  return { packedBytes: p, floatBytes: f };
}
