/**
 * Hugging Face checkpoint directories on disk, one tensor at a time: reading config.json, the shards
 * of model.safetensors(.index.json) and tokenizer.json; writing sharded safetensors with the index file
 * above a size limit; and the two conversions, `exportHfCheckpoint` (moelab checkpoint -> HF directory)
 * and `importHfCheckpoint` (HF directory -> moelab checkpoint). Every read fetches one tensor's bytes by
 * offset; every write streams tensors into files of a temporary directory renamed into place at the end,
 * so peak memory is about one expert bank, and a failure leaves nothing half-written.
 */
import { closeSync, copyFileSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CHECKPOINT_FORMAT, checkpointConfigText, makeCheckpointConfig, MoelabError, type Registry } from '@moelab/core';
import {
  byteTokenizerJson,
  decodeFloatTensor,
  encodeFloatTensor,
  type ExportPlan,
  exportTensors,
  headerLength,
  type ImportPlan,
  importTensors,
  isByteTokenizerJson,
  type PlannedTensor,
  parseHeader,
  parseHfTokenizer,
  planExport,
  planImport,
  type SafetensorsHeader,
  safetensorsPrefix,
  type TensorSource,
  type WriteDType,
} from '@moelab/interop';
import { readCheckpointConfig } from './checkpoint.js';
import { writeDirAtomic } from './fsutil.js';

/** One open safetensors file: its descriptor and parsed header. */
interface OpenFile {
  path: string;
  fd: number;
  header: SafetensorsHeader;
}

function openSafetensors(path: string): OpenFile {
  if (!existsSync(path)) throw new MoelabError('file is missing', path);
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const first = Buffer.alloc(8);
    readSync(fd, first, 0, Math.min(8, size), 0);
    const n = headerLength(first, size, path);
    const hb = Buffer.alloc(n);
    readSync(fd, hb, 0, n, 8);
    return { path, fd, header: parseHeader(hb, size, path) };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** A TensorSource over safetensors files read by offset (one tensor in memory at a time). Call `close()` when done. */
export class FileTensorSource implements TensorSource {
  private readonly byName = new Map<string, OpenFile>();

  constructor(private readonly files: OpenFile[]) {
    for (const f of files) for (const name of f.header.tensors.keys()) this.byName.set(name, f);
  }

  shape(name: string): number[] | undefined {
    return this.byName.get(name)?.header.tensors.get(name)?.shape;
  }

  names(): Iterable<string> {
    return this.byName.keys();
  }

  where(name: string): string {
    return this.byName.get(name)?.path ?? this.files.map((f) => f.path).join(', ');
  }

  read(name: string): Float32Array {
    const f = this.byName.get(name);
    const e = f?.header.tensors.get(name);
    if (!f || !e) throw new MoelabError(`tensor "${name}" is missing`, this.where(name));
    const bytes = Buffer.alloc(e.end - e.begin);
    readSync(f.fd, bytes, 0, bytes.length, f.header.dataStart + e.begin);
    return decodeFloatTensor(bytes, e, `${f.path}: tensor "${name}"`);
  }

  close(): void {
    for (const f of this.files) closeSync(f.fd);
  }
}

function readJson(path: string): unknown {
  if (!existsSync(path)) throw new MoelabError('file is missing', path);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, path);
  }
}

const INDEX = 'model.safetensors.index.json';

/** The weights of an HF directory: model.safetensors, or the shards its index names (each checked to exist and to hold what the index says). */
export function openHfWeights(dir: string): FileTensorSource {
  const indexPath = join(dir, INDEX);
  if (!existsSync(indexPath)) {
    const single = join(dir, 'model.safetensors');
    if (!existsSync(single)) throw new MoelabError(`no model.safetensors or ${INDEX} (moelab reads safetensors checkpoints)`, dir);
    return new FileTensorSource([openSafetensors(single)]);
  }
  const index = readJson(indexPath) as { weight_map?: unknown };
  if (!index || typeof index !== 'object' || !index.weight_map || typeof index.weight_map !== 'object')
    throw new MoelabError('has no "weight_map" object (tensor name -> shard file)', indexPath);
  const map = index.weight_map as Record<string, unknown>;
  const shards = new Map<string, string>(); // shard file -> a tensor it should hold
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\'))
      throw new MoelabError(`weight_map["${name}"] must be a file name in the same directory (got ${JSON.stringify(file)})`, indexPath);
    if (!shards.has(file)) shards.set(file, name);
  }
  for (const [file, name] of shards)
    if (!existsSync(join(dir, file))) throw new MoelabError(`shard ${file} is missing (it holds tensor "${name}", ${INDEX} says)`, join(dir, file));
  const files: OpenFile[] = [];
  try {
    for (const file of shards.keys()) files.push(openSafetensors(join(dir, file)));
  } catch (e) {
    for (const f of files) closeSync(f.fd);
    throw e;
  }
  const source = new FileTensorSource(files);
  for (const [name, file] of Object.entries(map))
    if (source.where(name) !== join(dir, file as string)) {
      source.close();
      throw new MoelabError(`tensor "${name}" is not in shard ${file} (${INDEX} says it is)`, join(dir, file as string));
    }
  return source;
}

/** Sizes like 5GB, 500MB, 2GiB, or a number of bytes. */
export function parseSize(text: string, flag = '--max-shard-size'): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?$/i.exec(text.trim());
  if (!m) throw new MoelabError(`"${text}" is not a size (e.g. 5GB, 500MB, 1000000)`, flag);
  const unit = (m[2] ?? 'B').toUpperCase();
  const mult: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40 };
  const bytes = Math.floor(Number(m[1]) * mult[unit]!);
  if (bytes < 1) throw new MoelabError(`"${text}" must be at least one byte`, flag);
  return bytes;
}

/**
 * Writes tensors, in the order given, into one safetensors file (`single`) or into shards of at most
 * `maxShardBytes` of data each (a larger tensor gets a shard of its own), named
 * `<stem>-0000i-of-0000n.safetensors` with `<stem>.safetensors.index.json` (HF's layout), streaming:
 * headers first, then each tensor as it arrives.
 */
export class ShardWriter {
  private readonly shards: { file: string; tensors: PlannedTensor[]; fd?: number }[] = [];
  private readonly shardOf = new Map<string, number>();
  private readonly expected: string[];
  private next = 0;

  constructor(
    private readonly dir: string,
    private readonly tensors: PlannedTensor[],
    maxShardBytes: number,
    private readonly metadata: Record<string, string>,
    private readonly stem = 'model',
  ) {
    const bytesOf = (t: PlannedTensor) => t.shape.reduce((a, c) => a * c, 1) * (t.dtype === 'F32' ? 4 : 2);
    let current: PlannedTensor[] = [];
    let size = 0;
    const groups: PlannedTensor[][] = [];
    for (const t of tensors) {
      const b = bytesOf(t);
      if (current.length > 0 && size + b > maxShardBytes) {
        groups.push(current);
        current = [];
        size = 0;
      }
      current.push(t);
      size += b;
    }
    if (current.length > 0 || groups.length === 0) groups.push(current);
    const n = groups.length;
    groups.forEach((g, i) => {
      const file = n === 1 ? `${stem}.safetensors` : `${stem}-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
      this.shards.push({ file, tensors: g });
      for (const t of g) this.shardOf.set(t.name, i);
    });
    this.expected = tensors.map((t) => t.name);
  }

  /** Write the next tensor (they must come in the planned order). */
  write(name: string, data: Float32Array): void {
    const want = this.expected[this.next];
    if (name !== want) throw new Error(`ShardWriter: got tensor "${name}", expected "${want}"`);
    const i = this.shardOf.get(name)!;
    const shard = this.shards[i]!;
    if (shard.fd === undefined) {
      if (i > 0) this.finishShard(i - 1);
      shard.fd = openSync(join(this.dir, shard.file), 'w');
      writeSync(shard.fd, safetensorsPrefix(shard.tensors, this.metadata).prefix);
    }
    const t = this.tensors[this.next]!;
    writeSync(shard.fd, encodeFloatTensor(data, t.dtype));
    this.next++;
  }

  private finishShard(i: number): void {
    const fd = this.shards[i]!.fd;
    if (fd !== undefined) closeSync(fd);
    this.shards[i]!.fd = -1;
  }

  /** Close the files and write the index (sharded only). Returns the file names. */
  finish(): string[] {
    if (this.next !== this.expected.length) throw new Error(`ShardWriter: ${this.expected.length - this.next} tensors were not written`);
    this.shards.forEach((s, i) => {
      if (s.fd === undefined) {
        s.fd = openSync(join(this.dir, s.file), 'w');
        writeSync(s.fd, safetensorsPrefix(s.tensors, this.metadata).prefix);
      }
      if (s.fd >= 0) this.finishShard(i);
    });
    const files = this.shards.map((s) => s.file);
    if (this.shards.length > 1) {
      const total = this.shards.reduce((a, s) => a + safetensorsPrefix(s.tensors).dataBytes, 0);
      const weight_map: Record<string, string> = {};
      for (const s of this.shards) for (const t of s.tensors) weight_map[t.name] = s.file;
      const index = `${this.stem}.safetensors.index.json`;
      writeFileSync(join(this.dir, index), `${JSON.stringify({ metadata: { total_size: total }, weight_map }, null, 2)}\n`);
      files.push(index);
    }
    return files;
  }
}

export interface ExportHfOptions {
  registry: Registry;
  /** Target model_type; default: the first architecture that can hold the model. */
  arch?: string;
  dtype?: WriteDType;
  /** Data bytes per shard (default 5 GB, as transformers' save_pretrained). */
  maxShardBytes?: number;
}

export interface ExportResult {
  plan: ExportPlan;
  files: string[];
}

/**
 * Export a moelab checkpoint directory as a Hugging Face directory `outDir`: config.json (transformers'
 * fields), the weights (sharded above the size limit), the tokenizer (the checkpoint's tokenizer.json, or
 * one equal to the byte tokenizer) and generation_config.json. Written to a temporary directory and
 * renamed into place.
 */
export function exportHfCheckpoint(ckptDir: string, outDir: string, o: ExportHfOptions): ExportResult {
  const cfg = readCheckpointConfig(ckptDir);
  const plan = planExport(cfg.spec, o.registry, o.arch);
  const source = new FileTensorSource([openSafetensors(join(ckptDir, 'model.safetensors'))]);
  const dtype = o.dtype ?? 'F32';
  let files: string[] = [];
  try {
    writeDirAtomic(outDir, (tmp) => {
      const config = { ...plan.config, torch_dtype: dtype === 'F32' ? 'float32' : 'bfloat16' };
      writeFileSync(join(tmp, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
      const writer = new ShardWriter(
        tmp,
        plan.outputs.map((t) => ({ ...t, dtype })),
        o.maxShardBytes ?? 5e9,
        { format: 'pt' },
      );
      exportTensors(plan, source, (name, _shape, data) => writer.write(name, data));
      files = ['config.json', ...writer.finish()];
      const tokPath = join(ckptDir, 'tokenizer.json');
      if (cfg.tokenizer === 'tokenizer.json') copyFileSync(tokPath, join(tmp, 'tokenizer.json'));
      else writeFileSync(join(tmp, 'tokenizer.json'), byteTokenizerJson());
      writeFileSync(
        join(tmp, 'tokenizer_config.json'),
        `${JSON.stringify({ tokenizer_class: 'PreTrainedTokenizerFast', model_max_length: plan.shape.contextLength }, null, 2)}\n`,
      );
      files.push('tokenizer.json', 'tokenizer_config.json');
    });
  } finally {
    source.close();
  }
  return { plan, files };
}

export interface ImportResult {
  plan: ImportPlan;
  /** 'byte' when the directory's tokenizer.json is the byte tokenizer, 'tokenizer.json' when another one came along, null without one. */
  tokenizer: 'byte' | 'tokenizer.json' | null;
}

/**
 * Import a Hugging Face directory (config.json, model.safetensors or its shards, optional tokenizer.json)
 * as a moelab checkpoint `outCkpt` (config.json with the spec, model.safetensors, tokenizer.json),
 * streaming one tensor group at a time; written to a temporary directory and renamed into place.
 */
export function importHfCheckpoint(dir: string, outCkpt: string): ImportResult {
  const plan = planImport(readJson(join(dir, 'config.json')), join(dir, 'config.json'));
  const tokPath = join(dir, 'tokenizer.json');
  let tokenizer: ImportResult['tokenizer'] = null;
  let tokJson: string | undefined;
  if (existsSync(tokPath)) {
    tokJson = readFileSync(tokPath, 'utf8');
    const tok = parseHfTokenizer(tokJson, tokPath);
    tokenizer = isByteTokenizerJson(tokJson) ? 'byte' : 'tokenizer.json';
    if (tok.vocabSize > plan.shape.vocabSize)
      throw new MoelabError(`the tokenizer has ${tok.vocabSize} tokens but vocab_size is ${plan.shape.vocabSize}`, tokPath);
  }
  const source = openHfWeights(dir);
  try {
    writeDirAtomic(outCkpt, (tmp) => {
      const writer = new ShardWriter(
        tmp,
        plan.outputs.map((t) => ({ ...t, dtype: 'F32' as const })),
        Number.POSITIVE_INFINITY,
        { format: CHECKPOINT_FORMAT, step: '0' },
      );
      importTensors(plan, source, (name, _shape, data) => writer.write(name, data));
      writer.finish();
      if (tokenizer === 'tokenizer.json') writeFileSync(join(tmp, 'tokenizer.json'), tokJson!);
      const config = makeCheckpointConfig({ spec: plan.spec, step: 0, seed: 0, tokenizer: tokenizer === 'tokenizer.json' ? 'tokenizer.json' : 'byte' });
      writeFileSync(join(tmp, 'config.json'), checkpointConfigText(config));
    });
  } finally {
    source.close();
  }
  return { plan, tokenizer };
}
