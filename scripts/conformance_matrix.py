"""One row of the README's conformance matrix per implementation, from a run here.

Usage: python scripts/conformance_matrix.py IMPL [IMPL ...]   (markdown rows on stdout)

Columns: forward float64 / forward float32 (default tier) / gradients (float64, or float32
where the library has no float64) / the offset-gradient convention that passes / the border
rule (named by the verifier) / layout.  Every cell is computed from `refdcn verify` reports.
"""

import sys

import numpy as np

from refdcn import conformance
from refdcn.verify import Tolerance, resolve, verify

LAYOUT = {
    "torchvision": "torchvision (interleaved dy, dx)",
    "onnxruntime": "torchvision (ONNX DeformConv)",
    "mmcv": "torchvision",
    "paddle": "torchvision",
    "openvino": "torchvision",
    "openvino-opset8-nopad": "torchvision",
    "openvino-opset1": "torchvision; no mask",
    "mindspore": "planar: all dx, all dy, mask (one tensor)",
    "tvm": "torchvision; no mask, no groups",
    "tvm-compiled": "torchvision; no mask, no groups",
}


def cell(report):
    n = len(report.results)
    parts = [f"{report.count('pass')}/{n - report.count('unsupported')}"]
    if report.count("unsupported"):
        parts.append(f"{report.count('unsupported')} unsupported")
    causes = ", ".join(report.causes())
    if causes:
        parts.append(causes)
    return " ".join(parts[:1]) + (f" ({'; '.join(parts[1:])})" if parts[1:] else "")


def row(name):
    impl = resolve(name)
    cases = conformance.CASES
    run = lambda dtype, convention=None, grads=False: verify(
        impl, cases, dtype, convention, Tolerance(dtype), gradients=grads)
    f64, f32 = run(np.float64), run(np.float32)
    grads = conv = "-"
    if impl.has_backward:
        dtype = np.float64 if f64.count("unsupported") < len(cases) else np.float32
        by_conv = {c: run(dtype, c, True) for c in ("torchvision", "mmcv")}
        best = max(by_conv, key=lambda c: by_conv[c].count("pass"))
        grads = f"{cell(by_conv[best])}" + ("" if dtype == np.float64 else " in float32")
        conv = best
    border = "torchvision (zero band)" if f32.exit_code() == 0 else \
        ", ".join(k for k in f32.causes() if k.endswith("border") or k.startswith("clamp")) \
        or "-"
    return (f"| {name} | {impl.description} | {cell(f64)} | {cell(f32)} | {grads} | {conv} | "
            f"{border} | {LAYOUT.get(name, '?')} |")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(row(name), flush=True)
