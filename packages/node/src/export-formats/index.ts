/** Every `moelab export --format`: one module per format, one line here. */
import type { ExportFormat } from './format.js';
import { hfFormat } from './hf.js';
import { onnxFormat } from './onnx.js';

export const exportFormats: readonly ExportFormat[] = [hfFormat, onnxFormat];
export type { ExportFlags, ExportFormat } from './format.js';
