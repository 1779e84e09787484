/**
 * "Download ONNX" of a run's Checkpoint row: the run's current model as `model.onnx`, built in the page
 * by @moelab/interop's `exportOnnx` (opset 17, input_ids [B, T] -> logits [B, T, V]; docs/interop.md);
 * one file, plus `model.onnx.data` for weights over the 2 GiB protobuf limit.
 * A model the ONNX graph cannot express gets the exporter's one-line reason instead.
 */
import { isQuantized } from '@moelab/compress';
import { parseCheckpointConfig, type Registry, readSafetensors, stateTensors } from '@moelab/core';
import { exportOnnx, memorySource, type OnnxExternalData } from '@moelab/interop';
import { loadCheckpointFiles } from './checkpoint.js';
import { download } from './dom.js';
import { createPlaygroundRegistry } from './registry.js';

let registry: Registry | undefined;

type Weights = Map<string, { shape: number[]; data: Float32Array }>;

/**
 * The ONNX file of checkpoint files (config.json text + model.safetensors bytes), and a one-line summary.
 * Weights over the 2 GiB protobuf limit come as `externalData`, the side file `model.onnx.data`.
 */
export function onnxFromCheckpoint(configJson: string, weights: Uint8Array): { bytes: Uint8Array; externalData?: OnnxExternalData; summary: string } {
  registry ??= createPlaygroundRegistry();
  const file = readSafetensors(weights, 'model.safetensors');
  let spec = parseCheckpointConfig(configJson, 'config.json').spec;
  let tensors: Weights;
  if (isQuantized(file)) {
    // Quantized experts are dequantized to float weights (the graph holds float32).
    const { model, config } = loadCheckpointFiles(
      [
        { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
        { name: 'model.safetensors', bytes: weights },
      ],
      registry,
    );
    spec = config.spec;
    tensors = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: Float32Array.from(t.data) }]));
    model.dispose();
  } else {
    tensors = new Map([...file.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data) }]));
  }
  const out = exportOnnx(spec, registry, memorySource(tensors), { externalDataLocation: 'model.onnx.data' });
  const summary = `ONNX opset ${out.opset}: ${out.nodes} nodes, ${out.parameters.toLocaleString('en-US')} parameters${out.externalData ? ', weights in model.onnx.data' : ''}`;
  return { bytes: out.bytes, ...(out.externalData ? { externalData: out.externalData } : {}), summary };
}

/** Export a run's model and offer it as model.onnx; `status` gets the summary or the reason it cannot be exported. */
export async function downloadOnnx(
  run: { exportModel(): Promise<{ configJson: string; weights: ArrayBuffer; step: number }> },
  status: HTMLElement,
): Promise<void> {
  try {
    const m = await run.exportModel();
    const { bytes, externalData, summary } = onnxFromCheckpoint(m.configJson, new Uint8Array(m.weights));
    // A Blob of the chunks: the side file may exceed the largest single array.
    if (externalData) download(externalData.location, new Blob(externalData.chunks as Uint8Array<ArrayBuffer>[], { type: 'application/octet-stream' }));
    download('model.onnx', new Blob([bytes as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }));
    status.textContent = `model.onnx (step ${m.step}): ${summary}`;
  } catch (e) {
    status.textContent = `ONNX export: ${(e as Error).message}`;
  }
}
