"""Is the BLAS the limit?  The forward's matrix products, timed in three GEMMs, one run.

Issue 16 asks, where the forward is bound by its matrix products, for the
rate of the BLAS refdcn uses beside onnxruntime's on the same shapes.  For the
per-image forward product of each shape of the README's Speed table
(``out (C_out, P) = W (C_out, C_in*K) @ columns (C_in*K, P)``, float32), this
prints GFLOP/s of:

* NumPy's BLAS (what refdcn calls), with 1 and 2 BLAS threads, in the three
  orientations a column layout can give: ``W @ C.T`` (channels-last columns,
  refdcn's), ``W @ C`` (rows layout) and ``C @ W.T`` (the transposed product);
* onnxruntime's MatMul (its MLAS GEMM, what its DeformConv uses), 2 threads;
* torch.mm (oneDNN/MKL in the torch build), 2 threads, where torch is installed.

Usage: ``python scripts/speed/gemm_rates.py`` (medians of 15 calls).  Needs
threadpoolctl, onnx and onnxruntime.
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from threadpoolctl import threadpool_limits

from refdcn.benchmarks.cpu import median_times

#: (C_out, C_in*K, P) of the README's shapes (K = 9).
SHAPES = [(16, 144, 1024), (64, 576, 784), (128, 1152, 1024), (256, 2304, 4096),
          (64, 576, 3136)]


def median_seconds(function, repeats=15):
    """Median seconds of ``function`` (refdcn bench's timing: 2 warm-up calls first)."""
    return median_times([function], repeats, warmup=2, settle=0)[0]


def onnx_matmul(M, K, N, threads):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [M, K]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [K, N])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [M, N])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def main():
    rng = np.random.default_rng(0)
    columns = ["numpy W@C.T 1t", "W@C 1t", "C@W.T 1t", "W@C.T 2t", "W@C 2t", "C@W.T 2t",
               "ort 2t", "torch 2t"]
    print("GFLOP/s of the forward product (C_out, C_in*K) @ (C_in*K, P), float32, median of 15")
    print(f"{'C_out,C_in*K,P':<18}" + "".join(f"{c:>15}" for c in columns))
    for M, K, N in SHAPES:
        w = rng.standard_normal((M, K), dtype=np.float32)
        c = rng.standard_normal((N, K), dtype=np.float32)
        ct = np.ascontiguousarray(c.T)
        out = np.empty((M, N), np.float32)
        out_t = np.empty((N, M), np.float32)
        flop = 2.0 * M * N * K
        rates = []
        for threads in (1, 2):
            with threadpool_limits(threads):
                for f in (lambda: np.matmul(w, c.T, out=out), lambda: np.matmul(w, ct, out=out),
                          lambda: np.matmul(c, w.T, out=out_t)):
                    rates.append(flop / median_seconds(f) / 1e9)
        session = onnx_matmul(M, K, N, 2)
        rates.append(flop / median_seconds(lambda: session.run(None, {"a": w, "b": ct})) / 1e9)
        try:
            import torch
            torch.set_num_threads(2)
            tw, tc = torch.from_numpy(w), torch.from_numpy(ct)
            rates.append(flop / median_seconds(lambda: torch.mm(tw, tc)) / 1e9)
        except ImportError:
            rates.append(float("nan"))
        print(f"{f'{M},{K},{N}':<18}" + "".join(f"{r:>15.0f}" for r in rates))


if __name__ == "__main__":
    main()
