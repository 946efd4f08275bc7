"""``refdcn bench --profile``: where the time of one call goes, step by step.

Every blocked backend (a :class:`refdcn.driver.KernelSet`, module attribute
``KERNELS``) is run through :func:`refdcn.driver.forward` /
:func:`~refdcn.driver.backward` with a copy of its kernel set whose kernels and
hooks are wrapped in timers (:func:`timed_kernels`); nothing in the driver or
the kernels changes.  One call is split into:

``API``       argument checks and conversions of :func:`refdcn.deform_conv2d`
              (the API call's time minus the driver's);
``layout``    ``prepare_input`` (e.g. the channels-last copy), ``contiguous``
              and ``assign`` (the copies of split tiles);
``im2col``    the deformable sampling into the column buffer (``im2col``, or
              ``im2col_pixels`` in a fused forward);
``GEMM``      every ``matmul`` (the BLAS), with its FLOP rate in place and the
              rate of the same products repeated alone on warm operands
              (``alone``: what the BLAS does on these shapes);
``col2im``, ``coordinate gradients``  the backward's kernels;
``alloc``     ``empty``/``zeros``/``column_buffer`` (page faults are paid by the
              first write, i.e. inside the kernels, not here);
``bias``      ``add_bias``/``bias_gradient``;
``driver``    the rest of the driver: its Python loop, weight transposes,
              slicing (the driver's time minus the steps above).

A step that runs on several threads at once (the fused forward's tiles,
sampled and multiplied by each thread) counts its time summed over the
threads divided by the number of threads that ran it: the wall time it
takes when the threads share it evenly.  Its GEMM rate alone replays the
same products as tasks on the threads, as in the call.

Every number is the median over the timed calls; the parts of one call are
taken from the same call, so the median parts need not add up exactly to the
median total.  onnxruntime's forward and NumPy's matmul rate are measured in
the same run for comparison.
"""

from dataclasses import dataclass, field, fields, replace
import functools
import statistics
import sys
import threading
import time

import numpy as np

from .. import api, backends
from ..geometry import check_arguments

#: KernelSet field -> step name.
STEP_OF = {
    "prepare_input": "layout", "contiguous": "layout", "assign": "layout",
    "im2col": "im2col", "im2col_pixels": "im2col", "matmul": "GEMM", "col2im": "col2im",
    "coordinate_gradients": "coordinate gradients",
    "empty": "alloc", "zeros": "alloc", "column_buffer": "alloc",
    "add_bias": "bias", "bias_gradient": "bias",
}

#: Column titles that differ from the step names.
LABEL = {"coordinate gradients": "coord grads"}

FORWARD_STEPS = ("API", "layout", "im2col", "GEMM", "alloc", "bias", "driver")
BACKWARD_STEPS = ("API", "layout", "im2col", "GEMM", "col2im", "coordinate gradients", "alloc",
                  "bias", "driver")


class StepClock:
    """Accumulates wall time per step (and the threads that ran it), and the GEMMs' FLOPs.

    Steps may be timed on several threads at once (:meth:`add` takes a lock).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.seconds = {}
        self.threads = {}
        self.gemm_flops = 0.0
        self.gemm_calls = []

    def add(self, step, seconds, flops=0.0, call=None):
        with self.lock:
            self.seconds[step] = self.seconds.get(step, 0.0) + seconds
            self.threads.setdefault(step, set()).add(threading.get_ident())
            self.gemm_flops += flops
            if call is not None:
                self.gemm_calls.append(call)

    def wall_seconds(self):
        """Seconds per step, each divided by the number of threads that ran it."""
        return {step: t / len(self.threads[step]) for step, t in self.seconds.items()}

    def parallel_steps(self):
        """The steps that ran on more than one thread."""
        return {step for step, ids in self.threads.items() if len(ids) > 1}


def _gemm_flops(a, b, out, trans_a=False, trans_b=False, accumulate=False):
    inner = a.shape[-2] if trans_a else a.shape[-1]
    products = max(a.shape[0], b.shape[0], out.shape[0])
    return 2.0 * products * out.shape[1] * out.shape[2] * inner


def _timed(function, step, clock, gemm=False):
    @functools.wraps(function)      # the driver still sees which function it is (unwrap)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - t0
        if gemm:
            a, b, out = args[:3]
            clock.add(step, seconds, _gemm_flops(*args, **kwargs),
                      (a.shape, b.shape, out.shape, kwargs.get("trans_a", False),
                       kwargs.get("trans_b", False), kwargs.get("accumulate", False), out.dtype))
        else:
            clock.add(step, seconds)
        return result
    return wrapper


def timed_kernels(kernels, clock):
    """A copy of the KernelSet ``kernels`` whose callables add their time to ``clock``."""
    changes = {}
    for f in fields(kernels):
        value = getattr(kernels, f.name)
        if f.name in STEP_OF and callable(value):
            changes[f.name] = _timed(value, STEP_OF[f.name], clock, gemm=f.name == "matmul")
    return replace(kernels, **changes)


def kernel_set(name):
    """The KernelSet of backend ``name``, or None if it is not built on the driver."""
    from ..driver import KernelSet
    module = backends.get(name)
    kernels = getattr(module, "KERNELS", None)
    return kernels if isinstance(kernels, KernelSet) else None


@dataclass
class Profile:
    """The breakdown of one backend on one shape (milliseconds, medians)."""
    shape: tuple
    backend: str
    forward: dict = field(default_factory=dict)
    backward: dict = field(default_factory=dict)
    forward_total_ms: float = None
    backward_total_ms: float = None
    gemm_gflops_in_place: float = None
    gemm_gflops_alone: float = None


def _median_parts(samples, steps):
    return {s: statistics.median(sample.get(s, 0.0) for sample in samples) * 1e3 for s in steps}


def _measure(run_api, run_driver, clock, steps, repeats, warmup):
    """Median total (ms) and parts of ``repeats`` calls; the GEMM seconds and FLOPs per call."""
    for _ in range(warmup):
        run_api()
        run_driver()
    samples, totals, gemm = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_api()
        t_api = time.perf_counter() - t0
        clock.reset()
        t0 = time.perf_counter()
        run_driver()
        t_driver = time.perf_counter() - t0
        parts = clock.wall_seconds()
        stepped = sum(parts.values())
        parts["API"] = max(0.0, t_api - t_driver)
        parts["driver"] = max(0.0, t_driver - stepped)
        samples.append(parts)
        totals.append(t_api)
        gemm.append((parts.get("GEMM", 0.0), clock.gemm_flops))
    return statistics.median(totals) * 1e3, _median_parts(samples, steps), gemm


def gemm_alone_rate(calls, repeats, warmup, as_tasks=False):
    """GFLOP/s of the same matrix products on warm random operands, repeated alone.

    One call after the other, or (``as_tasks``, as in a fused forward) every
    call a task on :func:`refdcn.parallel.run`.
    """
    from ..driver import numpy_matmul
    rng = np.random.default_rng(0)
    operands = []
    flops = 0.0
    for a_shape, b_shape, out_shape, trans_a, trans_b, accumulate, dtype in dict.fromkeys(calls):
        count = calls.count((a_shape, b_shape, out_shape, trans_a, trans_b, accumulate, dtype))
        a = rng.standard_normal(a_shape).astype(dtype)
        b = rng.standard_normal(b_shape).astype(dtype)
        out = np.zeros(out_shape, dtype)
        operands.append((a, b, out, dict(trans_a=trans_a, trans_b=trans_b,
                                         accumulate=accumulate), count))
        flops += count * _gemm_flops(a, b, out, trans_a)

    from .cpu import median_times
    from .. import parallel
    # as tasks, each product has its own output (they run at the same time)
    tasks = [(a, b, out.copy() if as_tasks else out, kw)
             for a, b, out, kw, count in operands for _ in range(count)]

    def run():
        if as_tasks:
            parallel.run(len(tasks), lambda i: numpy_matmul(*tasks[i][:3], **tasks[i][3]))
            return
        for a, b, out, kw in tasks:
            numpy_matmul(a, b, out, **kw)
    with parallel.single_threaded_blas():       # as the driver runs them
        return flops / median_times([run], repeats, warmup, settle=0)[0] / 1e9


def profile_backend(name, case, repeats, warmup):
    """The :class:`Profile` of backend ``name`` on the benchmark case ``case``."""
    from .. import driver
    kernels = kernel_set(name)
    if kernels is None:
        return None
    clock = StepClock()
    timed = timed_kernels(kernels, clock)
    c = case
    geom = check_arguments(*c.args())
    dtype = c.input.dtype
    arrays = [np.ascontiguousarray(a) if a is not None else None
              for a in (c.input, c.offset, c.mask, c.weight, c.bias)]
    x, off, m, w, b = arrays

    def api_forward():
        return api.deform_conv2d(c.input, c.offset, c.weight, c.bias, c.stride, c.padding,
                                 c.dilation, c.mask, backend=name)

    def api_backward():
        return api.deform_conv2d_backward(c.grad_output, c.input, c.offset, c.weight, c.bias,
                                          c.stride, c.padding, c.dilation, c.mask,
                                          backend=name)

    go = np.ascontiguousarray(c.grad_output)
    fwd_total, fwd, fwd_gemm = _measure(
        api_forward, lambda: driver.forward(timed, x, off, m, w, b, geom, dtype), clock,
        FORWARD_STEPS, repeats, warmup)
    calls = list(clock.gemm_calls)
    fused = "GEMM" in clock.parallel_steps()
    bwd_total, bwd, _ = _measure(
        api_backward,
        lambda: driver.backward(timed, go, x, off, m, w, b, geom, dtype,
                                api.CONVENTIONS["torchvision"]), clock,
        BACKWARD_STEPS, repeats, warmup)
    seconds = statistics.median(s for s, _ in fwd_gemm)
    flops = fwd_gemm[0][1]
    return Profile(shape=geom_shape(geom), backend=name, forward=fwd,
                   backward=bwd, forward_total_ms=fwd_total, backward_total_ms=bwd_total,
                   gemm_gflops_in_place=flops / seconds / 1e9 if seconds else None,
                   gemm_gflops_alone=(gemm_alone_rate(calls, repeats, warmup, as_tasks=fused)
                                      if calls else None))


def geom_shape(geom):
    """(B, C_in, C_out, H, W, k) of a square-kernel geometry."""
    return (geom.batch, geom.in_channels, geom.out_channels, geom.height, geom.width, geom.kh)


def _cells(parts, steps, total):
    return " ".join(f"{parts.get(s, 0.0):>7.2f} {100 * parts.get(s, 0.0) / total:3.0f}%"
                    if total else f"{'-':>12}" for s in steps)


def format_profiles(profiles, onnxruntime_ms, matmul_gflops):
    """The two breakdown tables (forward; backward) as text."""
    from .cpu import format_shape
    head = f"{'shape (B,Cin,Cout,HxW,k)':<24} {'backend':<8} {'total ms':>9}"
    lines = ["forward: ms and % of the call"
             + f" (GEMM GFLOP/s: in the call / the same products alone; NumPy 2048^2 matmul "
               f"{matmul_gflops:.0f})",
             head + "".join(f" {s[:12]:>12}" for s in FORWARD_STEPS)
             + f" {'GEMM GF/s':>13} {'ort fwd ms':>10}"]
    for p in profiles:
        ort = onnxruntime_ms.get(p.shape)
        rates = (f"{p.gemm_gflops_in_place or 0:>6.0f}/{p.gemm_gflops_alone or 0:<6.0f}")
        lines.append(f"{format_shape(p.shape):<24} {p.backend:<8} {p.forward_total_ms:>9.2f} "
                     + _cells(p.forward, FORWARD_STEPS, p.forward_total_ms)
                     + f" {rates:>13} {'-' if ort is None else f'{ort:.2f}':>10}")
    lines += ["backward (all five gradients; forward+backward = the two totals): ms and %",
              head + "".join(f" {LABEL.get(s, s)[:12]:>12}" for s in BACKWARD_STEPS)]
    for p in profiles:
        lines.append(f"{format_shape(p.shape):<24} {p.backend:<8} {p.backward_total_ms:>9.2f} "
                     + _cells(p.backward, BACKWARD_STEPS, p.backward_total_ms))
    return "\n".join(lines)


def run_profile(settings, json_path=None, out=None):
    """Profile every blocked backend of ``settings`` on every shape; print; return profiles."""
    import json
    from dataclasses import asdict
    from tqdm import tqdm
    from . import cpu
    out = sys.stdout if out is None else out
    keep, settings.thread_info = cpu.limit_threads(settings.threads)
    matmul = cpu.matmul_rate(np.dtype(settings.dtype), settings.repeats, settings.warmup)
    profiles, ort, skipped = [], {}, set()
    for shape in tqdm(settings.shapes, desc="refdcn bench --profile", unit="shape",
                      file=sys.stderr, disable=None, leave=False):
        case = cpu.make_inputs(shape, settings.dtype, settings.modulated)
        for name in settings.backends:
            p = profile_backend(name, case, settings.repeats, settings.warmup)
            if p is None:
                skipped.add(name)
            else:
                profiles.append(p)
        if settings.baselines:
            try:
                runner = cpu.OnnxRuntime(case, settings.threads)
                ort[tuple(shape)] = cpu.median_times([runner.forward], settings.repeats,
                                                     settings.warmup)[0] * 1e3
            except Exception:          # not installed, or cannot run this case: leave it out
                pass
    threads = ", ".join(f"{k} {v}" for k, v in settings.thread_info.items())
    print(f"refdcn bench --profile: {cpu.machine()}", file=out)
    print(f"{settings.dtype}, {'DCNv2' if settings.modulated else 'DCNv1'}; threads: {threads}; "
          f"median of {settings.repeats} calls after {settings.warmup} warm-up(s)", file=out)
    print(format_profiles(profiles, ort, matmul), file=out)
    for name in sorted(skipped):
        print(f"note: {name} is not built on refdcn.driver: not broken down", file=out)
    if keep is not None:
        keep.restore_original_limits()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(machine=cpu.machine(), settings=asdict(settings),
                           matmul_gflops=matmul, onnxruntime_forward_ms=[
                               dict(shape=list(s), ms=v) for s, v in ort.items()],
                           profiles=[asdict(p) for p in profiles]), f, indent=1)
    return profiles
