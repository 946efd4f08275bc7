"""``refdcn bench --op dcnv3|dcnv4``: refdcn's DCNv3/DCNv4 beside the grid_sample composition.

Shapes are InternImage's four stages at 224x224 input (InternImage-T: 64, 128,
256, 512 channels in 4, 8, 16, 32 groups of 16; 3x3 kernel, stride 1, pad 1,
offset_scale 1), batch 1 by default: ``(N, H, W, G, D)`` = (1, 56, 56, 4, 16),
(1, 28, 28, 8, 16), (1, 14, 14, 16, 16), (1, 7, 7, 32, 16).  Inputs ~ N(0, 1),
offsets ~ N(0, 1), weights: softmax of N(0, 1) over the 9 taps (DCNv3), raw
N(0, 1) (DCNv4).

Measured in the same process with the same thread limit
(:func:`refdcn.benchmarks.cpu.limit_threads`) and timing rule
(:func:`refdcn.benchmarks.cpu.median_times`): each refdcn backend (forward;
forward + backward through the public API) and, with torch installed,
InternImage's ``dcnv3_core_pytorch`` composition of ``grid_sample`` calls on
the CPU (:mod:`refdcn.dcnv34.torch_composition`; forward under ``no_grad``;
forward + ``backward()`` by autograd) - the only CPU path DCNv3/DCNv4 have.
Ratios are torch time / refdcn time (> 1: refdcn is faster).
"""

import json
import platform
import sys

import numpy as np

from ..dcnv34 import api
from .cpu import limit_threads, median_times

__all__ = ["SHAPES", "QUICK_SHAPES", "run"]

#: (N, H, W, G, D) of InternImage-T's stages at 224x224.
SHAPES = [(1, 56, 56, 4, 16), (1, 28, 28, 8, 16), (1, 14, 14, 16, 16), (1, 7, 7, 32, 16)]
QUICK_SHAPES = [(1, 14, 14, 4, 16), (1, 7, 7, 8, 16)]
KERNEL = 3


def _inputs(shape, op, dtype, seed=0):
    n, h, w, g, d = shape
    rng = np.random.default_rng(seed)
    k = KERNEL * KERNEL
    x = rng.normal(size=(n, h, w, g * d)).astype(dtype)
    off = rng.normal(size=(n, h, w, g * k * 2)).astype(dtype)
    raw = rng.normal(size=(n, h, w, g, k))
    mask = (api.tap_softmax(raw) if op == "dcnv3" else raw).reshape(n, h, w, g * k).astype(dtype)
    go = rng.normal(size=(n, h, w, g * d)).astype(dtype)
    attrs = dict(kernel_h=KERNEL, kernel_w=KERNEL, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
                 dilation_h=1, dilation_w=1, group=g, group_channels=d, offset_scale=1.0,
                 remove_center=False)
    if op == "dcnv4":
        packed = np.zeros((n, h, w, -(-3 * g * k // 8) * 8), dtype)
        per = np.concatenate([off.reshape(n, h, w, g, 2 * k), mask.reshape(n, h, w, g, k)], -1)
        packed[..., :3 * g * k] = per.reshape(n, h, w, -1)
        return (x, packed), go, attrs
    return (x, off, mask), go, attrs


def _refdcn_calls(op, arrays, go, attrs, backend):
    fwd, bwd = (api.dcnv3, api.dcnv3_backward) if op == "dcnv3" else (api.dcnv4,
                                                                        api.dcnv4_backward)

    def forward():
        return fwd(*arrays, **attrs, backend=backend)

    def both():
        fwd(*arrays, **attrs, backend=backend)
        return bwd(go, *arrays, **attrs, backend=backend)
    return forward, both


def _torch_calls(op, arrays, go, attrs):
    import torch
    from ..dcnv34 import torch_composition as tc
    function = tc.dcnv3_core_pytorch if op == "dcnv3" else tc.dcnv4_core_pytorch
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    grad = torch.from_numpy(go)

    def forward():
        with torch.no_grad():
            return function(*tensors, **attrs)

    def both():
        ts = [t.clone().requires_grad_(True) for t in tensors]
        function(*ts, **attrs).backward(grad)
        return [t.grad for t in ts]
    return forward, both


def run(op, shapes=None, backends=None, repeats=7, warmup=2, threads=2, dtype="float32",
        json_path=None, out=sys.stdout):
    """Time ``op`` on ``shapes``; print a table; return the rows (dicts)."""
    shapes = SHAPES if shapes is None else shapes
    backends = backends or api.fast_backends()
    keep, info = limit_threads(threads)
    dtype = np.dtype(dtype)
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    print(f"refdcn bench --op {op}: {dtype}, {threads} threads ({info}), median of {repeats} "
          f"after {warmup} warm-up calls; {platform.machine()} {platform.system()}; torch "
          f"{torch_version or 'not installed'} (grid_sample composition)", file=out)
    header = (f"{'shape (N,H,W,G,D) k=3':<24} {'impl':<22} {'fwd ms':>8} {'fwd+bwd ms':>11} "
              f"{'x torch fwd':>11} {'x torch f+b':>11}")
    print(header, file=out)
    rows = []
    for shape in shapes:
        arrays, go, attrs = _inputs(shape, op, dtype)
        impls = [(f"refdcn:{b}", *_refdcn_calls(op, arrays, go, attrs, b)) for b in backends]
        if torch_version:
            impls.append(("torch grid_sample", *_torch_calls(op, arrays, go, attrs)))
        times = median_times([f for _, fwd, both in impls for f in (fwd, both)], repeats, warmup)
        measured = [(name, times[2 * i], times[2 * i + 1]) for i, (name, _, _) in
                    enumerate(impls)]
        base = measured[-1] if torch_version else None
        for name, tf, tb in measured:
            row = {"op": op, "shape": list(shape), "impl": name, "forward_ms": tf * 1e3,
                   "forward_backward_ms": tb * 1e3}
            if base and name != base[0]:
                row.update(x_torch_forward=base[1] / tf, x_torch_forward_backward=base[2] / tb)
            rows.append(row)
            ratios = (f"{row['x_torch_forward']:>11.1f} {row['x_torch_forward_backward']:>11.1f}"
                      if "x_torch_forward" in row else f"{'-':>11} {'-':>11}")
            print(f"{','.join(map(str, shape)):<24} {name:<22} {tf * 1e3:>8.2f} "
                  f"{tb * 1e3:>11.2f} {ratios}", file=out)
    del keep
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"op": op, "dtype": dtype.name, "threads": threads, "rows": rows}, f,
                      indent=2)
    return rows
