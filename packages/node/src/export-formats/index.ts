/** Every `moelab export --format`: one module per format, one line here. */
import type { ExportFormat } from './format.js';
import { hfFormat } from './hf.js';

export const exportFormats: readonly ExportFormat[] = [hfFormat];
export type { ExportFlags, ExportFormat } from './format.js';
