"""CPU benchmark: refdcn's CPU backends beside torchvision and onnxruntime, in one run.

``refdcn bench`` calls :func:`run_cpu_benchmark`.  For every shape
``(B, C_in, C_out, H, W, k)`` (stride 1, padding ``k // 2``, dilation 1, one
group and one offset group, bias on; DCNv2 with a mask unless ``v1``; inputs
as in ``shared/reference/baselines.md``: input, weight ~ N(0, 1), offsets ~
N(0, 1), mask = sigmoid(N(0, 1))) it measures, in the same process and with
the same thread limit for every library:

* each refdcn backend: forward, and forward + backward (all five gradients),
  through the public API (so the times include argument checks and
  conversions);
* ``torchvision.ops.deform_conv2d`` on the CPU (forward under ``no_grad``;
  forward + ``backward()``), when torch and torchvision are installed;
* onnxruntime's ``DeformConv`` (opset 19, CPU provider, forward only), when onnx
  and onnxruntime are installed;
* NumPy's matrix product rate (a 2048 x 2048 product in the benchmark dtype): the
  ceiling that an im2col + GEMM implementation approaches.

Timing: for each implementation in turn, a short pause, ``warmup`` untimed
calls, then ``repeats`` timed calls; the median is reported (not interleaved:
see :func:`median_times`).
Ratios are peer time / refdcn time (> 1: refdcn is faster).  The peak memory
is the peak of NumPy allocations (``tracemalloc``) during one untimed
forward + backward call, outputs and gradients included; memory that compiled
code allocates outside NumPy is not seen.
"""

from dataclasses import asdict, dataclass, field
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np

from .. import api, backends
from ..driver import column_memory
from ..geometry import check_arguments
from ..testing import Case

#: (B, C_in, C_out, H, W, k) of issue 3.
DEFAULT_SHAPES = [
    (1, 16, 16, 32, 32, 3),
    (8, 64, 64, 28, 28, 3),
    (4, 128, 128, 32, 32, 3),
    (1, 256, 256, 64, 64, 3),
    (2, 64, 64, 56, 56, 3),
]

#: ``--quick``: small shapes, few repeats (a smoke test of the whole pipeline).
QUICK_SHAPES = [(1, 16, 16, 32, 32, 3), (2, 32, 32, 16, 16, 3)]
QUICK_REPEATS, QUICK_WARMUP = 5, 1


MATMUL_SIZE = 2048

#: Pause (s) before measuring each implementation (see :func:`median_times`).
SETTLE_S = 0.2


@dataclass
class Row:
    """One line of the table; times in milliseconds, None where not measured."""
    shape: tuple
    backend: str
    forward_ms: float = None
    forward_backward_ms: float = None
    gflops: float = None
    percent_of_matmul: float = None
    peak_mib: float = None
    vs_torchvision_forward: float = None
    vs_torchvision_forward_backward: float = None
    vs_onnxruntime_forward: float = None
    note: str = ""


@dataclass
class Settings:
    shapes: list
    backends: list
    repeats: int = 7
    warmup: int = 2
    threads: int = 2
    dtype: str = "float32"
    modulated: bool = True
    baselines: bool = True
    thread_info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- setup

def default_backends():
    """The available CPU backends but the loop oracle, and ``{name: reason}`` of the others.

    Capabilities decide: CPU devices, not the oracle (too slow to time).
    """
    names, skipped = [], {}
    for name in backends.REGISTRY:
        try:
            caps = backends.capabilities(name)
        except backends.BackendUnavailable as exc:
            skipped[name] = str(exc)
            continue
        if caps.device == "cpu" and not caps.oracle:
            names.append(name)
    return names, skipped


def limit_threads(threads):
    """Limit refdcn's kernels, NumPy's BLAS, OpenMP runtimes and torch to ``threads`` threads.

    Returns ``(keep_alive, info)``: an object whose ``restore_original_limits()``
    undoes the limits, and a description.  Numba's own thread count is not
    touched: refdcn's kernels run on :mod:`refdcn.parallel`, and calling
    ``numba.set_num_threads()`` would start a Numba threading layer for
    nothing.
    """
    from .. import parallel
    info = {}
    previous = parallel._threads
    parallel.set_num_threads(threads)
    info["refdcn"] = threads
    limiter = None
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=threads)       # BLAS and OpenMP runtimes
        info["blas"] = threads
    except ImportError:
        from ..install_hints import extra_command
        info["blas"] = (f"not limited (OPENBLAS_NUM_THREADS="
                        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; to limit it: "
                        f"{extra_command('bench')})")
    try:
        import torch
        torch.set_num_threads(threads)
        info["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    info["onnxruntime"] = threads        # set per session (intra-op threads)
    return _Limits(limiter, previous), info


class _Limits:
    """Undoes :func:`limit_threads`."""

    def __init__(self, limiter, previous_threads):
        self.limiter, self.previous_threads = limiter, previous_threads

    def restore_original_limits(self):
        from .. import parallel
        parallel.set_num_threads(self.previous_threads)
        if self.limiter is not None:
            self.limiter.restore_original_limits()


def make_inputs(shape, dtype, modulated, seed=0):
    """A :class:`refdcn.testing.Case` of one benchmark shape (see the module docstring)."""
    B, C, O, H, W, k = shape
    pad = k // 2
    rng = np.random.default_rng(seed)
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    mask = None
    if modulated:
        mask = 1.0 / (1.0 + np.exp(-rng.standard_normal((B, k * k, Ho, Wo))))
    case = Case(
        input=rng.standard_normal((B, C, H, W)),
        offset=rng.standard_normal((B, 2 * k * k, Ho, Wo)),
        weight=rng.standard_normal((O, C, k, k)) / np.sqrt(C * k * k),
        bias=rng.standard_normal(O),
        mask=mask,
        grad_output=rng.standard_normal((B, O, Ho, Wo)),
        stride=(1, 1), padding=(pad, pad), dilation=(1, 1),
        name="bench_" + "x".join(map(str, shape)))
    return case.astype(dtype)


# --------------------------------------------------------------------------- implementations

class Refdcn:
    """A refdcn backend through the public API."""
    peer = False

    def __init__(self, name, case):
        self.name = name
        self.case = case

    def forward(self):
        c = self.case
        return api.deform_conv2d(c.input, c.offset, c.weight, c.bias, c.stride, c.padding,
                                 c.dilation, c.mask, backend=self.name)

    def forward_backward(self):
        c = self.case
        self.forward()
        return api.deform_conv2d_backward(c.grad_output, c.input, c.offset, c.weight, c.bias,
                                          c.stride, c.padding, c.dilation, c.mask,
                                          backend=self.name)


class Torchvision:
    """``torchvision.ops.deform_conv2d`` on the CPU."""
    name = "torchvision"
    peer = True

    def __init__(self, case):
        import torch
        import torchvision.ops
        self.torch, self.op = torch, torchvision.ops.deform_conv2d
        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))
        self.args = [t(a) for a in (case.input, case.offset, case.weight, case.bias, case.mask)]
        self.leaves = [None if a is None else a.clone().requires_grad_(True) for a in self.args]
        self.grad_output = t(case.grad_output)
        self.kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation)

    def _call(self, x, off, w, b, m):
        return self.op(x, off, w, b, mask=m, **self.kw)

    def forward(self):
        with self.torch.no_grad():
            return self._call(*self.args)

    def forward_backward(self):
        for leaf in self.leaves:
            if leaf is not None:
                leaf.grad = None
        out = self._call(*self.leaves)
        out.backward(self.grad_output)
        return out


class OnnxRuntime:
    """A one-node ``DeformConv`` model (opset 19) on onnxruntime's CPU provider."""
    name = "onnxruntime"
    peer = True
    forward_backward = None

    def __init__(self, case, threads):
        import onnxruntime
        from ..verify.adapters import onnx_model
        model, names = onnx_model(case, case.input.dtype, 19)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        arrays = dict(X=case.input, W=case.weight, offset=case.offset, B=case.bias,
                      mask=case.mask)
        self.feeds = {n: np.ascontiguousarray(arrays[n]) for n in names}

    def forward(self):
        return self.session.run(None, self.feeds)


def peers(case, threads, notes):
    """The baseline implementations installed here (their absence is noted, not fatal)."""
    found = []
    for label, build in (("torchvision", lambda: Torchvision(case)),
                         ("onnxruntime", lambda: OnnxRuntime(case, threads))):
        try:
            found.append(build())
        except ImportError as exc:
            notes.setdefault(label, f"{label} not installed ({exc})")
        except Exception as exc:       # a peer that cannot run this case: say so, go on
            notes.setdefault(label, f"{label} failed: {type(exc).__name__}: {exc}")
    return found


# --------------------------------------------------------------------------- measuring

def median_times(functions, repeats, warmup, settle=SETTLE_S):
    """Median wall time (s) of each function: a pause, ``warmup`` calls, ``repeats`` timed calls.

    The functions are measured one after the other, not interleaved: thread
    pools (OpenMP, OpenBLAS, onnxruntime) keep spinning for a while after
    their work, and on a machine with few cores that would charge one
    library's idle spinning to the next one's time.  The pause lets them
    fall asleep; the warm-up calls absorb what is left.
    """
    result = []
    for f in functions:
        time.sleep(settle)
        for _ in range(warmup):
            f()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        result.append(statistics.median(times))
    return result


def matmul_rate(dtype, repeats, warmup, size=MATMUL_SIZE):
    """NumPy's matrix product rate in GFLOP/s (``size`` x ``size`` operands, ``dtype``)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty_like(a)
    (t,) = median_times([lambda: np.matmul(a, b, out=out)], max(5, repeats), max(1, warmup))
    return 2.0 * size**3 / t / 1e9


def peak_mib(function):
    """Peak NumPy allocation (MiB) during one call of ``function``, less the arrays it
    returns: what :func:`refdcn.column_memory` bounds (tracemalloc)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = function()
    peak = tracemalloc.get_traced_memory()[1] - base
    arrays = result if isinstance(result, tuple) else (result,)
    peak -= sum(getattr(a, "nbytes", 0) for a in arrays if a is not None)
    del result, arrays
    if not was_tracing:
        tracemalloc.stop()
    return peak / 2**20


def bench_shape(shape, settings, notes):
    """Rows for one shape: every refdcn backend, then the peers."""
    case = make_inputs(shape, settings.dtype, settings.modulated)
    geom = check_arguments(*case.args())
    impls = [Refdcn(name, case) for name in settings.backends]
    if settings.baselines:
        impls += peers(case, settings.threads, notes)
    forward = median_times([i.forward for i in impls], settings.repeats, settings.warmup)
    with_bwd = [i for i in impls if i.forward_backward is not None]
    both = median_times([i.forward_backward for i in with_bwd], settings.repeats,
                        settings.warmup)
    both = {i.name: t for i, t in zip(with_bwd, both)}
    rows = []
    for impl, fwd in zip(impls, forward):
        fb = both.get(impl.name)
        rows.append(Row(shape=tuple(shape), backend=impl.name, forward_ms=fwd * 1e3,
                        forward_backward_ms=None if fb is None else fb * 1e3,
                        gflops=geom.flops() / fwd / 1e9,
                        peak_mib=None if impl.peer else peak_mib(impl.forward_backward)))
    by_name = {r.backend: r for r in rows}
    tv, ort = by_name.get("torchvision"), by_name.get("onnxruntime")
    for r in rows:
        if r.backend in ("torchvision", "onnxruntime"):
            continue
        if tv is not None:
            r.vs_torchvision_forward = tv.forward_ms / r.forward_ms
            r.vs_torchvision_forward_backward = tv.forward_backward_ms / r.forward_backward_ms
        if ort is not None:
            r.vs_onnxruntime_forward = ort.forward_ms / r.forward_ms
    return rows


# --------------------------------------------------------------------------- report

def machine():
    """A one-line description of this machine."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def _fmt(value, spec, width):
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


COLUMNS = (("shape (B,Cin,Cout,HxW,k)", 24), ("backend", 12), ("fwd ms", 9),
           ("fwd+bwd ms", 11), ("GFLOP/s", 8), ("% matmul", 9), ("peak MiB", 9),
           ("x tv fwd", 9), ("x tv f+b", 9), ("x ort fwd", 10))


def format_shape(shape):
    B, C, O, H, W, k = shape
    return f"{B},{C},{O},{H}x{W},{k}"


def format_table(rows):
    """The table as text (one line per row)."""
    lines = [" ".join(f"{name:>{w}}" if i > 1 else f"{name:<{w}}"
                      for i, (name, w) in enumerate(COLUMNS))]
    for r in rows:
        cells = [f"{format_shape(r.shape):<24}", f"{r.backend:<12}",
                 _fmt(r.forward_ms, ".2f", 9), _fmt(r.forward_backward_ms, ".2f", 11),
                 _fmt(r.gflops, ".1f", 8), _fmt(r.percent_of_matmul, ".0f", 9),
                 _fmt(r.peak_mib, ".1f", 9), _fmt(r.vs_torchvision_forward, ".1f", 9),
                 _fmt(r.vs_torchvision_forward_backward, ".1f", 9),
                 _fmt(r.vs_onnxruntime_forward, ".1f", 10)]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _threading_layer():
    """Numba's threading layer, "not started" (refdcn never starts one), or None without Numba."""
    try:
        import numba
    except ImportError:
        return None
    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"


def run_cpu_benchmark(settings, json_path=None, out=None):
    """Measure every shape and print the table; returns the rows.

    ``settings`` is a :class:`Settings`; ``json_path`` (optional) receives
    the machine, the settings, the matmul rate and every row as JSON.
    """
    from ..install_hints import optional
    tqdm = getattr(optional("tqdm"), "tqdm", None)    # progress bar only if installed
    out = sys.stdout if out is None else out
    dtype = np.dtype(settings.dtype)
    keep, settings.thread_info = limit_threads(settings.threads)
    notes = {}
    matmul = matmul_rate(dtype, settings.repeats, settings.warmup)
    rows = []
    progress = (tqdm(settings.shapes, desc="refdcn bench", unit="shape", file=sys.stderr,
                     disable=None, leave=False) if tqdm else None)
    for shape in settings.shapes:
        if progress:
            progress.set_postfix_str(format_shape(shape))
        rows += bench_shape(shape, settings, notes)
        if progress:
            progress.update()
    if progress:
        progress.close()
    matmul_end = matmul_rate(dtype, settings.repeats, settings.warmup)
    matmul = max(matmul, matmul_end)
    for r in rows:
        r.percent_of_matmul = 100.0 * r.gflops / matmul
    threads = ", ".join(f"{k} {v}" for k, v in settings.thread_info.items())
    layer = _threading_layer()
    if layer:
        threads += f" (numba threading layer: {layer})"
    print(f"refdcn bench: {machine()}", file=out)
    print(f"{dtype}, {'DCNv2 (with mask)' if settings.modulated else 'DCNv1 (no mask)'}, "
          f"stride 1, padding k//2, bias; threads: {threads}", file=out)
    print(f"median of {settings.repeats} calls after {settings.warmup} warm-up call(s); "
          f"NumPy {dtype} matmul ({MATMUL_SIZE}x{MATMUL_SIZE}, best of the start and the end "
          f"of the run): {matmul:.0f} GFLOP/s", file=out)
    print(format_table(rows), file=out)
    print("x tv / x ort: torchvision's (onnxruntime's) time / this backend's time "
          "(> 1: faster); peak MiB: NumPy allocations during one forward+backward beyond the "
          f"gradients returned (tracemalloc), bounded by refdcn.column_memory() = "
          f"{column_memory() / 2**20:.0f} MiB", file=out)
    for label, note in notes.items():
        print(f"note: {note}", file=out)
    keep.restore_original_limits()
    if json_path:
        record = dict(machine=machine(), settings=asdict(settings), threading_layer=layer,
                      matmul_gflops=matmul, rows=[asdict(r) for r in rows], notes=notes,
                      versions=_versions())
        with open(json_path, "w") as f:
            json.dump(record, f, indent=1)
    return rows


def _versions():
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "torch", "torchvision", "onnxruntime", "Cython"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions
