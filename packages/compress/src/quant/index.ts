/** Weight-only quantization of trained MoEs (MoQE, arXiv 2310.02410): docs/compression.md#quantization. */
export {
  globToRegExp,
  isQuantized,
  loadQuantizedState,
  QUANT_FORMAT_VERSION,
  QUANT_METADATA_KEY,
  type QuantizedLoadReport,
  type QuantizedModel,
  type QuantizedTensorInfo,
  type QuantizeModelOptions,
  type QuantMetadata,
  quantizedSize,
  quantizedTensors,
  quantizeModel,
  quantOptions,
  readQuantized,
  selectTargets,
} from './format.js';
export { installPackedBank, moePacked, PACKED_BANK_LAYOUTS, type PackedBankTensors, packedBankOf, packedLayout, routedExpertBanks } from './packed.js';
export {
  checkBits,
  checkGroup,
  dequantizeTensor,
  elementScales,
  matrixView,
  type PackedTensor,
  packedBytes,
  QUANT_BITS,
  QUANT_SCHEMES,
  type QuantOptions,
  type QuantScheme,
  quantizeTensor,
  relativeError,
} from './quantize.js';
export { type QATOptions, type QATReport, quantizationAwareTraining } from './qat.js';
