/**
 * The ONNX messages moelab writes (ModelProto and what a graph of float32 / int64 tensors needs), as a
 * protobufjs descriptor: field numbers and types are those of the ONNX IR specification
 * (github.com/onnx/onnx: the IR document and onnx/onnx.proto3). protobufjs (the maintained protobuf runtime
 * for JavaScript, browsers included) does the wire encoding; the descriptor lists only the fields
 * moelab sets or reads back, so a reader with the full schema sees a valid model.
 */
import protobuf from 'protobufjs/light.js';

/** ONNX TensorProto.DataType values used here. */
export const ONNX_FLOAT = 1;
export const ONNX_INT64 = 7;
export const ONNX_BOOL = 9;

/** AttributeProto.AttributeType values. */
export const ATTR = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;

const descriptor = {
  nested: {
    onnx: {
      nested: {
        OperatorSetIdProto: { fields: { domain: { type: 'string', id: 1 }, version: { type: 'int64', id: 2 } } },
        StringStringEntryProto: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
        TensorProto: {
          fields: {
            dims: { rule: 'repeated', type: 'int64', id: 1 },
            dataType: { type: 'int32', id: 2 },
            floatData: { rule: 'repeated', type: 'float', id: 4 },
            int64Data: { rule: 'repeated', type: 'int64', id: 7 },
            name: { type: 'string', id: 8 },
            rawData: { type: 'bytes', id: 9 },
            docString: { type: 'string', id: 12 },
            externalData: { rule: 'repeated', type: 'StringStringEntryProto', id: 13 },
            dataLocation: { type: 'int32', id: 14 },
          },
        },
        AttributeProto: {
          fields: {
            name: { type: 'string', id: 1 },
            f: { type: 'float', id: 2 },
            i: { type: 'int64', id: 3 },
            s: { type: 'bytes', id: 4 },
            t: { type: 'TensorProto', id: 5 },
            floats: { rule: 'repeated', type: 'float', id: 7 },
            ints: { rule: 'repeated', type: 'int64', id: 8 },
            docString: { type: 'string', id: 13 },
            type: { type: 'int32', id: 20 },
          },
        },
        NodeProto: {
          fields: {
            input: { rule: 'repeated', type: 'string', id: 1 },
            output: { rule: 'repeated', type: 'string', id: 2 },
            name: { type: 'string', id: 3 },
            opType: { type: 'string', id: 4 },
            attribute: { rule: 'repeated', type: 'AttributeProto', id: 5 },
            docString: { type: 'string', id: 6 },
            domain: { type: 'string', id: 7 },
          },
        },
        TensorShapeProto: {
          fields: { dim: { rule: 'repeated', type: 'Dimension', id: 1 } },
          nested: {
            Dimension: {
              oneofs: { value: { oneof: ['dimValue', 'dimParam'] } },
              fields: { dimValue: { type: 'int64', id: 1 }, dimParam: { type: 'string', id: 2 } },
            },
          },
        },
        TypeProto: {
          oneofs: { value: { oneof: ['tensorType'] } },
          fields: { tensorType: { type: 'Tensor', id: 1 } },
          nested: { Tensor: { fields: { elemType: { type: 'int32', id: 1 }, shape: { type: 'TensorShapeProto', id: 2 } } } },
        },
        ValueInfoProto: { fields: { name: { type: 'string', id: 1 }, type: { type: 'TypeProto', id: 2 }, docString: { type: 'string', id: 3 } } },
        GraphProto: {
          fields: {
            node: { rule: 'repeated', type: 'NodeProto', id: 1 },
            name: { type: 'string', id: 2 },
            initializer: { rule: 'repeated', type: 'TensorProto', id: 5 },
            docString: { type: 'string', id: 10 },
            input: { rule: 'repeated', type: 'ValueInfoProto', id: 11 },
            output: { rule: 'repeated', type: 'ValueInfoProto', id: 12 },
          },
        },
        ModelProto: {
          fields: {
            irVersion: { type: 'int64', id: 1 },
            producerName: { type: 'string', id: 2 },
            producerVersion: { type: 'string', id: 3 },
            domain: { type: 'string', id: 4 },
            modelVersion: { type: 'int64', id: 5 },
            docString: { type: 'string', id: 6 },
            graph: { type: 'GraphProto', id: 7 },
            opsetImport: { rule: 'repeated', type: 'OperatorSetIdProto', id: 8 },
            metadataProps: { rule: 'repeated', type: 'StringStringEntryProto', id: 14 },
          },
        },
      },
    },
  },
};

let modelType: protobuf.Type | undefined;

function model(): protobuf.Type {
  modelType ??= protobuf.Root.fromJSON(descriptor).lookupType('onnx.ModelProto');
  return modelType;
}

/** TensorProto.DataLocation: the tensor's bytes are in `raw_data` (DEFAULT) or in a side file (EXTERNAL). */
export const ONNX_DATA_LOCATION = { DEFAULT: 0, EXTERNAL: 1 } as const;

export interface OnnxTensor {
  name: string;
  dims: number[];
  dataType: number;
  /** The little-endian bytes; absent (empty once decoded) when the tensor is external. */
  rawData?: Uint8Array;
  /** ONNX_DATA_LOCATION.EXTERNAL with `externalData` entries `location`, `offset`, `length` (decimal strings). */
  dataLocation?: number;
  externalData?: { key: string; value: string }[];
}

/** A tensor whose bytes are in the message (what the graph builder makes). */
export type OnnxInlineTensor = OnnxTensor & { rawData: Uint8Array };

export interface OnnxAttribute {
  name: string;
  type: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: OnnxTensor;
  floats?: number[];
  ints?: number[];
}

export interface OnnxNode {
  name: string;
  opType: string;
  input: string[];
  output: string[];
  attribute: OnnxAttribute[];
  domain?: string;
}

export interface OnnxValueInfo {
  name: string;
  type: { tensorType: { elemType: number; shape: { dim: ({ dimValue: number } | { dimParam: string })[] } } };
}

export interface OnnxModel {
  irVersion: number;
  producerName: string;
  producerVersion: string;
  docString?: string;
  opsetImport: { domain: string; version: number }[];
  graph: { name: string; node: OnnxNode[]; initializer: OnnxTensor[]; input: OnnxValueInfo[]; output: OnnxValueInfo[] };
  metadataProps?: { key: string; value: string }[];
}

/** The protobuf bytes of a model (an `.onnx` file). */
export function encodeOnnxModel(m: OnnxModel): Uint8Array {
  const type = model();
  return type.encode(type.fromObject(m)).finish();
}

/** Read an `.onnx` file back (the fields of the descriptor above; int64 fields as numbers). */
export function decodeOnnxModel(bytes: Uint8Array): OnnxModel {
  const type = model();
  return type.toObject(type.decode(bytes), { longs: Number, bytes: Uint8Array as unknown as typeof String, defaults: false, arrays: true }) as OnnxModel;
}
