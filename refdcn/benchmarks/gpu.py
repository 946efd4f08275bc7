"""GPU benchmark: the "cuda" backend beside torchvision's CUDA op, in the same run.

``refdcn bench --backend cuda`` calls :func:`run_gpu_benchmark`; so does
``python -m refdcn.benchmarks.gpu`` (and ``scripts/gpu_check.sh``).

For every shape ``(B, C_in, C_out, H, W, k)`` (stride 1, padding ``k // 2``,
DCNv2 with mask and bias, offsets ~ 2 N(0, 1), mask ~ U(0, 1), as in
``shared/reference/baselines.md``) it times, with CUDA events around each
call (median of ``repeats`` calls after ``warmup`` calls):

* refdcn forward and forward + backward on device inputs (PyTorch CUDA tensors
  when torch is installed, else Numba device arrays), so the times include
  refdcn's per-call Python work (argument checks, wrapping, launches);
* the same with ``torchvision.ops.deform_conv2d`` when torch with CUDA and
  torchvision are installed (TF32 off for matmul and cuDNN);
* the relative error (max |a - b| / max |b|) of refdcn's output, and of its
  five gradients on the smaller shapes, against the float64 result of the
  ``"numpy"`` backend on host copies of the same inputs.

Prints a table and the issue's targets; returns 0, or 2 when no GPU is
available (the simulator does not count).
"""

import sys
import time

import numpy as np

from .cpu import DEFAULT_SHAPES as CPU_SHAPES

#: (B, C_in, C_out, H, W, k): the GPU shapes of the issue, then the other CPU shapes.
DEFAULT_SHAPES = [(1, 16, 16, 32, 32, 3), (8, 256, 256, 64, 64, 3), (16, 64, 64, 128, 128, 3)]
DEFAULT_SHAPES += [s for s in CPU_SHAPES if s not in DEFAULT_SHAPES]

#: Gradients are checked against float64 only up to this many forward GFLOP (CPU time).
GRADIENT_CHECK_GFLOP = 1.5

#: The issue's targets (H100, float32, TF32 off).
TARGET_SHAPES = [(8, 256, 256, 64, 64, 3), (16, 64, 64, 128, 128, 3)]
SMALL_SHAPE = (1, 16, 16, 32, 32, 3)


def _say(*args):
    print(*args, flush=True)


def _torch_cuda():
    """(torch, torchvision.ops) when both are importable and CUDA works, else (None, None)."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None, None
        import torchvision.ops
        return torch, torchvision.ops
    except Exception:
        return None, None


def _make_inputs(shape, seed=0):
    """Host float64 inputs of one benchmark shape, as in baselines.md."""
    B, C, O, H, W, k = shape
    pad = k // 2
    rng = np.random.default_rng(seed)
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    return dict(
        input=rng.normal(size=(B, C, H, W)),
        offset=2.0 * rng.normal(size=(B, 2 * k * k, Ho, Wo)),
        mask=rng.uniform(size=(B, k * k, Ho, Wo)),
        weight=rng.normal(size=(O, C, k, k)) / np.sqrt(C * k * k),
        bias=rng.normal(size=O),
        grad_output=rng.normal(size=(B, O, Ho, Wo)),
    ), pad


def _timer(cuda):
    """A function timing ``fn`` with CUDA events: median ms of ``repeats`` calls."""
    def measure(fn, repeats, warmup):
        for _ in range(warmup):
            fn()
        cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = cuda.event(), cuda.event()     # timing events (the default)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(np.median(times))
    return measure


def _relative_error(actual, expected):
    from ..tolerances import relative_error
    return relative_error(np.asarray(actual, dtype=np.float64), expected)


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def run_gpu_benchmark(shapes=None, repeats=20, warmup=3, dtype="float32"):
    """Time the "cuda" backend and torchvision's CUDA op; print a table.

    Parameters
    ----------
    shapes : list of (B, C_in, C_out, H, W, k), optional
        Default :data:`DEFAULT_SHAPES`.
    repeats, warmup : int
        Timed calls (median reported) and untimed calls before them.
    dtype : {"float32", "float64"}

    Returns
    -------
    int
        0 after printing the table; 2 when no GPU is available.
    """
    from .. import api, backends
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dtype}")
    shapes = [tuple(int(v) for v in s) for s in (shapes or DEFAULT_SHAPES)]
    for s in shapes:
        if len(s) != 6:
            raise ValueError(f"each shape must be (B, C_in, C_out, H, W, k); got {s}")
    try:
        cb = backends.get("cuda")
    except backends.BackendUnavailable as exc:
        _say(f"no GPU available: {exc}")
        return 2
    if cb.SIMULATED:
        _say("no GPU available: the 'cuda' backend runs on the CUDA simulator here "
             "(NUMBA_ENABLE_CUDASIM=1); GPU timings need a real GPU")
        return 2
    cuda = cb.cuda
    measure = _timer(cuda)
    torch, tvops = _torch_cuda()
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dev = cuda.get_current_device()
    _say(f"device: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, "
         f"dtype {dtype}, median of {repeats} calls after {warmup} warm-ups, CUDA events")
    from ..backends.cuda.interop import cupy
    _say(f"refdcn: {cb.DESCRIPTION}; GEMM={cb.settings.GEMM} (cuBLAS via CuPy: "
         f"{'yes' if cupy() is not None else 'no, Numba GEMM'}); "
         f"deterministic={cb.settings.DETERMINISTIC}")
    _say("torchvision: " + (f"torch {torch.__version__}, TF32 off" if torch is not None
                            else "not available (torch with CUDA not installed)"))
    header = (f"{'B,Cin,Cout,HxW,k':>22} {'GFLOP':>6} {'fwd ms':>8} {'tv fwd':>8} {'ratio':>6} "
              f"{'f+b ms':>8} {'tv f+b':>8} {'ratio':>6} {'det f+b':>8} {'fwd err':>8} "
              f"{'grad err':>8} {'tv err':>8}")
    _say(header)
    rows = []
    for shape in shapes:
        rows.append(_bench_shape(shape, cb, api, torch, tvops, measure, repeats, warmup, dtype))
    _say("")
    _targets(rows)
    return 0


def _bench_shape(shape, cb, api, torch, tvops, measure, repeats, warmup, dtype):
    B, C, O, H, W, k = shape
    host64, pad = _make_inputs(shape)
    host = {n: a.astype(dtype) for n, a in host64.items()}
    cuda = cb.cuda
    if torch is not None:
        dev = {n: torch.from_numpy(a).cuda() for n, a in host.items()}
    else:
        dev = {n: cuda.to_device(a) for n, a in host.items()}
    args = (dev["input"], dev["offset"], dev["weight"], dev["bias"], 1, pad, 1, dev["mask"])

    def fwd():
        return api.deform_conv2d(*args, backend="cuda")

    def fwd_bwd():
        api.deform_conv2d(*args, backend="cuda")
        return api.deform_conv2d_backward(dev["grad_output"], *args, backend="cuda")

    t_fwd = measure(fwd, repeats, warmup)
    t_fb = measure(fwd_bwd, repeats, warmup)
    saved = cb.settings.DETERMINISTIC
    try:
        cb.set_deterministic(True)
        t_det = measure(fwd_bwd, max(1, repeats // 4), min(1, warmup))
    finally:
        cb.set_deterministic(saved)

    # accuracy against float64 on the host (inputs rounded to dtype first)
    exact_in = {n: a.astype(np.float64) for n, a in host.items()}
    ref_args = (exact_in["input"], exact_in["offset"], exact_in["weight"], exact_in["bias"], 1,
                pad, 1, exact_in["mask"])
    ref_out = api.deform_conv2d(*ref_args, backend="numpy")
    fwd_err = _relative_error(_host(fwd()), ref_out)
    gflop = 2 * B * O * H * W * C * k * k / 1e9
    grad_err = None
    if gflop <= GRADIENT_CHECK_GFLOP:
        ref_g = api.deform_conv2d_backward(exact_in["grad_output"], *ref_args, backend="numpy")
        got = fwd_bwd()
        grad_err = max(_relative_error(_host(a), e) for a, e in zip(got, ref_g))

    t_tv = t_tv_fb = tv_err = None
    if torch is not None:
        x, off, w, b, m, go = (dev[n] for n in ("input", "offset", "weight", "bias", "mask",
                                                "grad_output"))
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, off, w, b, m)]

        def tv_fwd():
            with torch.no_grad():
                return tvops.deform_conv2d(x, off, w, b, padding=pad, mask=m)

        def tv_fwd_bwd():
            for t in leaves:
                t.grad = None
            out = tvops.deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], padding=pad,
                                      mask=leaves[4])
            out.backward(go)

        t_tv = measure(tv_fwd, repeats, warmup)
        t_tv_fb = measure(tv_fwd_bwd, repeats, warmup)
        tv_err = _relative_error(tv_fwd().cpu().numpy(), ref_out)

    row = dict(shape=shape, gflop=gflop, fwd=t_fwd, tv_fwd=t_tv, fb=t_fb, tv_fb=t_tv_fb,
               det=t_det, fwd_err=fwd_err, grad_err=grad_err, tv_err=tv_err)
    f = lambda v, fmt: "-".rjust(int(fmt.split(".")[0])) if v is None else format(v, fmt)
    ratio = lambda a, b: None if b is None else a / b
    label = f"{B},{C},{O},{H}x{W},{k}"
    _say(f"{label:>22} {gflop:6.2f} {f(t_fwd, '8.3f')} {f(t_tv, '8.3f')} "
         f"{f(ratio(t_fwd, t_tv), '6.2f')} {f(t_fb, '8.3f')} {f(t_tv_fb, '8.3f')} "
         f"{f(ratio(t_fb, t_tv_fb), '6.2f')} {f(t_det, '8.3f')} {f(fwd_err, '8.1e')} "
         f"{f(grad_err, '8.1e')} {f(tv_err, '8.1e')}")
    del dev
    cb.clear_cache()
    return row


def _targets(rows):
    """Print the issue's targets against the rows measured."""
    by_shape = {r["shape"]: r for r in rows}
    lines = []
    for s in TARGET_SHAPES:
        r = by_shape.get(s)
        if r is None or r["tv_fwd"] is None:
            continue
        lines.append((f"forward <= torchvision on {s}", r["fwd"] / r["tv_fwd"] <= 1.0,
                      f"ratio {r['fwd'] / r['tv_fwd']:.2f}"))
        lines.append((f"fwd+bwd <= 0.75 x torchvision on {s}", r["fb"] / r["tv_fb"] <= 0.75,
                      f"ratio {r['fb'] / r['tv_fb']:.2f}"))
    r = by_shape.get(SMALL_SHAPE)
    if r is not None:
        lines.append((f"forward < 0.3 ms on {SMALL_SHAPE}", r["fwd"] < 0.3,
                      f"{r['fwd']:.3f} ms"))
    errs = [r["fwd_err"] for r in rows]
    if errs:
        lines.append(("relative error <= 1e-6", max(errs) <= 1e-6, f"max {max(errs):.1e}"))
    _say("targets (issue 4):")
    for text, ok, detail in lines:
        _say(f"  {'MET ' if ok else 'MISS'} {text}: {detail}")


def main(argv=None):
    """``python -m refdcn.benchmarks.gpu [--repeats N] [--warmup N] [--dtype D] [--quick]``."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true",
                        help="only the three GPU shapes of the issue")
    args = parser.parse_args(argv)
    shapes = DEFAULT_SHAPES[:3] if args.quick else None
    t0 = time.time()
    code = run_gpu_benchmark(shapes, repeats=args.repeats, warmup=args.warmup, dtype=args.dtype)
    _say(f"(benchmark took {time.time() - t0:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
