/**
 * ONNX external data: the ONNX IR's way past protobuf's 2 GiB message limit. An initializer's bytes
 * move to a side file beside the `.onnx` file; its TensorProto keeps name, type and dims, sets
 * `data_location = EXTERNAL` and lists `location` (the side file, relative to the model file), `offset`
 * and `length` (bytes, as decimal strings). ONNX Runtime resolves `location` against the directory of
 * the model file it loads. docs/interop.md#external-data describes the layout moelab writes.
 *
 *   side file = t_1 ‖ pad ‖ t_2 ‖ pad ‖ …     offset(t_i) ≡ 0 (mod align(t_i)),  length(t_i) = |raw_data(t_i)|
 */
import { MoelabError } from '@moelab/core';
import { ONNX_DATA_LOCATION, type OnnxInlineTensor, type OnnxTensor } from './proto.js';

/** Tensors smaller than this stay inside the `.onnx` file (shape constants, norm gains): onnx's own converter's default. */
export const EXTERNAL_DATA_MIN_BYTES = 1024;
/** Offsets of tensors of at least 1 MiB are multiples of 64 KiB (the largest memory-map granularity, Windows'), smaller ones of 64 bytes. */
const LARGE_TENSOR_BYTES = 1 << 20;
const LARGE_ALIGN = 1 << 16;
const SMALL_ALIGN = 64;

/** The side file: its name (relative to the `.onnx` file) and its bytes as consecutive chunks (no copy of the weights). */
export interface OnnxExternalData {
  location: string;
  chunks: Uint8Array[];
  byteLength: number;
  /** How many initializers it holds. */
  tensors: number;
}

/** A side file's name must be a plain file name: ONNX Runtime reads it from the model file's directory. */
export function checkExternalDataLocation(location: string): void {
  if (location === '' || location === '.' || location === '..' || /[/\\]/.test(location))
    throw new MoelabError(`external data location "${location}" must be a file name beside the .onnx file (no directory part)`, 'externalDataLocation');
}

/**
 * Move every initializer of at least {@link EXTERNAL_DATA_MIN_BYTES} to the side file `location`, in
 * order, each at an aligned offset. Returns the tensors to put in the graph (the others unchanged) and
 * the side file.
 */
export function toExternalData(tensors: OnnxInlineTensor[], location: string): { tensors: OnnxTensor[]; data: OnnxExternalData } {
  checkExternalDataLocation(location);
  const chunks: Uint8Array[] = [];
  let offset = 0;
  let moved = 0;
  let zeros = new Uint8Array(0);
  const out = tensors.map((t): OnnxTensor => {
    const length = t.rawData.byteLength;
    if (length < EXTERNAL_DATA_MIN_BYTES) return t;
    const align = length >= LARGE_TENSOR_BYTES ? LARGE_ALIGN : SMALL_ALIGN;
    const pad = (align - (offset % align)) % align;
    if (pad > 0) {
      if (zeros.byteLength < pad) zeros = new Uint8Array(LARGE_ALIGN);
      chunks.push(zeros.subarray(0, pad));
      offset += pad;
    }
    const entry = { name: t.name, dims: t.dims, dataType: t.dataType, dataLocation: ONNX_DATA_LOCATION.EXTERNAL };
    const externalData = [
      { key: 'location', value: location },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(length) },
    ];
    chunks.push(t.rawData);
    offset += length;
    moved++;
    return { ...entry, externalData };
  });
  return { tensors: out, data: { location, chunks, byteLength: offset, tensors: moved } };
}
