"""ONNX graph passes of the compiler: each takes a ModelProto and returns a new one (or a report).

    graph.py           shared helpers: unsealing, shapes at a fixed input size, initializer lookup
    fp16.py            fp16 storage of the head's matrices (memory banks), computed in fp32
    int8.py            INT8 backbone: onnxruntime static quantisation, QDQ, calibrated on good images
    tensorrt_check.py  static check against TensorRT's ONNX parser and engine limits
    chunk_bank.py      splits a bank MatMul + reduction that breaks a tensor-size limit into chunks
    opset.py           exact down-conversion to an older ONNX opset (e.g. 18 -> 17 for TensorRT 8.5), or refusal

A pass acts on what the graph contains (op types, shapes, initializers), never on a method name.
"""
