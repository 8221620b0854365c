"""Issue-17 helper: how close a frame's bank search runs to this CPU's practical GEMM floor.

Times, in one onnxruntime session setting (CPU, the given threads, spinning off), the bank-search product of a
PatchCore artefact's shape ([patches, dims] x [dims, rows] + bias in --chunks cache-sized parts, each reduced by a
ReduceMin, as the artefact's search) and a large square MatMul (2048^3, where MLAS runs at its best), interleaved call by call, and prints each one's GFLOP/s and
their ratio. A bank search near the large MatMul's rate cannot get much faster in fp32: only fewer rows x dims
(a smaller bank, fewer dims) or another number format (INT8) would shorten it.

    python bench/gemm_floor.py --patches 1024 --dims 152 --rows 1843 --chunks 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def session(m: int, k: int, n: int, threads: int, bias: bool, chunks: int = 1) -> ort.InferenceSession:
    """[m, k] x [k, n] (+ bias), the n columns in `chunks` products of their own (as export/passes/chunk_bank.py
    splits a bank so each chunk's rows stay in cache), each reduced over its columns by a ReduceMin as the
    artefact's search does."""
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    inits, nodes, outputs = [], [], []
    for c, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, end - start), dtype=np.float32), f"w{c}"))
        if bias:  # the artefact's |m|^2 row, which onnxruntime fuses with the MatMul into one Gemm
            inits.append(numpy_helper.from_array(rng.standard_normal((end - start,), dtype=np.float32), f"b{c}"))
            nodes.append(helper.make_node("Gemm", ["x", f"w{c}", f"b{c}"], [f"p{c}"]))
        else:
            nodes.append(helper.make_node("MatMul", ["x", f"w{c}"], [f"p{c}"]))
        nodes.append(helper.make_node("ReduceMin", [f"p{c}"], [f"y{c}"], axes=[1], keepdims=0))
        outputs.append(helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, [m]))
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # ReduceMin takes axes here
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=1024)
    parser.add_argument("--dims", type=int, default=152)
    parser.add_argument("--rows", type=int, default=1843)
    parser.add_argument("--square", type=int, default=2048)
    parser.add_argument("--chunks", type=int, default=2, help="the artefact's bank chunks (its build log says)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    shapes = {"bank search": (args.patches, args.dims, args.rows, True, args.chunks),
              f"square {args.square}": (args.square, args.square, args.square, False, 1)}
    sessions = {name: (session(m, k, n, args.threads, bias, chunks), np.ones((m, k), np.float32), 2.0 * m * k * n)
                for name, (m, k, n, bias, chunks) in shapes.items()}
    times = {name: [] for name in sessions}
    for name, (sess, x, _) in sessions.items():  # warm-up
        for _ in range(3):
            sess.run(None, {"x": x})
    for _ in range(args.runs):  # interleaved, so both see the same machine
        for name, (sess, x, _) in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, spinning off, load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.runs} interleaved calls")
    rates = {}
    for name, (_, _, flop) in sessions.items():
        median = float(np.median(times[name]))
        rates[name] = flop / median / 1e9
        print(f"  {name:<14} {median * 1e3:8.3f} ms  {rates[name]:7.1f} GFLOP/s")
    bank, square = rates["bank search"], rates[f"square {args.square}"]
    print(f"bank search at {bank / square:.2f}x the square MatMul's rate")


if __name__ == "__main__":
    main()
