/**
 * @moelab/interop: moelab models to and from the Hugging Face layouts (Mixtral, Qwen2-MoE, Qwen3-MoE,
 * OLMoE, Llama, Qwen2), Hugging Face tokenizers, safetensors one tensor at a time, and ONNX inference graphs. Isomorphic: no
 * file system here (packages/node reads and writes the files). See docs/interop.md.
 */
export * from './hf/architectures.js';
export * from './hf/convert.js';
export * from './hf/shape.js';
export * from './hf/tensors.js';
export * from './safetensors-stream.js';
export * from './tokenizer.js';
export * from './onnx/export.js';
export { EXTERNAL_DATA_MIN_BYTES, type OnnxExternalData } from './onnx/external-data.js';
export { decodeOnnxModel, type OnnxModel } from './onnx/proto.js';
