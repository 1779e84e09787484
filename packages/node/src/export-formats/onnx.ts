/** `moelab export --format onnx`: an ONNX inference graph, input_ids [B, T] -> logits [B, T, V] (docs/interop.md#onnx-export). */
import { basename, dirname, join } from 'node:path';
import { stateTensors } from '@moelab/core';
import { exportOnnx, memorySource, ONNX_OPSET } from '@moelab/interop';
import { loadCheckpoint } from '../checkpoint.js';
import { writeFileAtomic, writeFilesAtomic } from '../fsutil.js';
import type { ExportFormat } from './format.js';

export const onnxFormat: ExportFormat = {
  name: 'onnx',
  description: `ONNX inference graph (opset ${ONNX_OPSET}), one .onnx file (plus <file>.data, ONNX external data, for weights over 2 GiB or with --onnx-external-data): input_ids [B, T] int64 -> logits [B, T, V] float32; top-k routing with TopK / GatherElements / ScatterElements`,
  run(checkpoint, out, flags, registry) {
    // loadCheckpoint also dequantizes a quantized checkpoint: the graph holds float32 weights.
    const { model, config } = loadCheckpoint(checkpoint, registry);
    let weights: Map<string, { shape: number[]; data: Float32Array }>;
    try {
      weights = new Map([...stateTensors(model)].map(([name, t]) => [name, { shape: t.shape, data: Float32Array.from(t.data) }]));
    } finally {
      model.dispose();
    }
    const result = exportOnnx(config.spec, registry, memorySource(weights, `${checkpoint}/model.safetensors`), {
      denseExperts: flags.denseExperts,
      docString: `moelab checkpoint ${checkpoint} (step ${config.step})`,
      externalData: flags.externalData ? true : 'auto',
      externalDataLocation: `${basename(out)}.data`,
    });
    const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MiB`;
    const data = result.externalData;
    // The side file first: the .onnx file that points at it appears last.
    if (data)
      writeFilesAtomic(dirname(out), [
        { name: data.location, chunks: data.chunks },
        { name: basename(out), chunks: [result.bytes] },
      ]);
    else writeFileAtomic(out, result.bytes);
    const size = data
      ? `${mib(result.bytes.byteLength)} + ${data.tensors} weight tensors in ${join(dirname(out), data.location)} (${mib(data.byteLength)})`
      : mib(result.bytes.byteLength);
    return [
      `exported ${checkpoint} as ONNX (opset ${result.opset}${flags.denseExperts ? ', dense experts' : ''}) to ${out}: ${result.nodes} nodes, ${result.parameters} parameters, ${size}`,
    ];
  },
};
