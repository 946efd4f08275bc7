"""``refdcn bench``: time refdcn's backends beside torchvision and onnxruntime, in one run.

CPU backends are measured by :mod:`refdcn.benchmarks.cpu`; ``--backend cuda``
hands over to :func:`refdcn.benchmarks.gpu.run_gpu_benchmark`.
"""

import importlib
import os
import sys

from .. import backends

HELP = ("time forward and forward+backward of refdcn's backends against torchvision and "
        "onnxruntime (same run, same threads) and print a table")


def _shape(text):
    import argparse
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 6 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"a shape is six positive integers B,C_in,C_out,H,W,k (e.g. 1,256,256,64,64,3); "
            f"got {text!r}")
    return values


def add_arguments(parser):
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="benchmark this backend (repeatable; default: every available CPU "
                             "backend except 'reference'; 'cuda' runs the GPU benchmark)")
    parser.add_argument("--shape", action="append", type=_shape, metavar="B,Cin,Cout,H,W,k",
                        help="a shape to time (repeatable; default: the five shapes of the "
                             "README's table); stride 1, padding k//2")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls of each implementation; the median is reported "
                             "(default 7, --quick 5)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls of each implementation first (default 2, --quick 1)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for NumPy's BLAS, Numba, torch and onnxruntime (default 2)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="compute dtype (default float32)")
    parser.add_argument("--v1", action="store_true",
                        help="DCNv1: no mask (default: DCNv2 with a mask)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="do not time torchvision and onnxruntime")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="two small shapes, 5 rounds after 1 warm-up (a smoke test)")
    parser.add_argument("--op", choices=["deform_conv2d", "dcnv3", "dcnv4"],
                        default="deform_conv2d",
                        help="operator to time (default deform_conv2d); dcnv3/dcnv4 time "
                             "InternImage's stage shapes beside the torch grid_sample "
                             "composition (refdcn.benchmarks.dcnv34; --shape, --v1 and "
                             "--no-baselines do not apply)")
    parser.add_argument("--profile", action="store_true",
                        help="break one call of each backend down into its steps (argument "
                             "checks, layout changes, im2col, GEMM with its FLOP rate, col2im, "
                             "coordinate gradients, allocation, driver) beside onnxruntime's "
                             "forward and NumPy's matmul rate, instead of the speed table")
    parser.add_argument("--beside", action="append", metavar="CONTEXT",
                        choices=("torch", "openvino", "numba-threads", "busy-core", "all"),
                        help="also time refdcn's backends in this context, each in a fresh "
                             "process, beside a process with refdcn alone: torch or openvino "
                             "loaded and running first, numba.set_num_threads() called first, "
                             "or one CPU kept busy by another process (repeatable; 'all': every "
                             "context available here); prints the times side by side")
    parser.add_argument("--first-call", action="store_true",
                        help="time the first forward and backward of backend='auto' and of "
                             "each backend in fresh processes, with an empty Numba cache "
                             "(cold) and then a filled one (warm), instead of the speed table")


def _check_positive(value, name, minimum=1):
    from ..cli import UsageError
    if value is not None and value < minimum:
        raise UsageError(f"--{name} must be >= {minimum}; got {value}")


def _check_threads(threads):
    """``--threads`` between 1 and the number of CPUs (more only oversubscribes)."""
    from ..cli import UsageError
    cpus = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cpus:
        raise UsageError(f"--threads must be between 1 and the number of CPUs here ({cpus}); "
                         f"got {threads}")


def _check_json_path(path):
    """Open ``--json FILE`` for writing before the benchmark (which can take minutes)."""
    from ..cli import UsageError
    if not path:
        return
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UsageError(f"--json: cannot write {path!r}: {exc.strerror or exc}") from None
    if not existed:
        os.remove(path)


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _array_bytes(shape):
    """Bytes of one shape's arrays and their gradients: inputs are drawn in float64 and
    (benchmarks.cpu.make_inputs: stride 1, padding k//2) the output is H_out x W_out."""
    B, C, O, H, W, k = shape
    out_pixels = (H + 2 * (k // 2) - k + 1) * (W + 2 * (k // 2) - k + 1)
    elements = B * C * H * W + O * C * k * k + B * 3 * k * k * out_pixels + 2 * B * O * out_pixels
    return 2 * 8 * elements


def _check_shapes_fit(shapes, dtype):
    """Refuse a ``--shape`` whose arrays alone exceed this machine's memory."""
    from ..cli import UsageError
    limit = _physical_memory()
    if limit is None:
        return
    for shape in shapes:
        need = _array_bytes(shape)
        if need > limit:
            raise UsageError(f"--shape {','.join(map(str, shape))} needs {need / 2**30:.1f} GiB "
                             f"for its arrays; this machine has {limit / 2**30:.1f} GiB")


def _cpu_backends(requested):
    """The CPU backends to time: ``requested`` (checked) or the defaults."""
    from ..benchmarks.cpu import default_backends
    from ..cli import UsageError
    if requested is None:
        names, skipped = default_backends()
        for name, reason in skipped.items():
            print(f"refdcn bench: skipping {name}: {reason}", file=sys.stderr)
        return names
    for name in requested:
        if name not in backends.REGISTRY:
            raise UsageError(f"unknown backend {name!r}; known: {', '.join(backends.REGISTRY)}")
        try:
            backends.get(name)
        except backends.BackendUnavailable as exc:
            raise UsageError(str(exc)) from None
    return list(dict.fromkeys(requested))


def _run_gpu(shapes, repeats, warmup, dtype):
    """Hand over to the GPU benchmark; 2 with a one-line reason if it cannot run here."""
    try:
        gpu = importlib.import_module("refdcn.benchmarks.gpu")
    except ImportError as exc:
        print(f"refdcn bench: the GPU benchmark is not available ({exc})", file=sys.stderr)
        return 2
    try:
        from numba import cuda
        ok = cuda.is_available() and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "1"
    except Exception:
        ok = False
    if not ok:
        print("refdcn bench: --backend cuda needs an NVIDIA GPU with numba-cuda "
              "(none usable here; the CUDA simulator is not benchmarked)", file=sys.stderr)
        return 2
    return int(gpu.run_gpu_benchmark(shapes, repeats, warmup, dtype) or 0)


def _run_dcnv34(args):
    """``--op dcnv3|dcnv4``: :func:`refdcn.benchmarks.dcnv34.run`."""
    from ..benchmarks import dcnv34
    from ..cli import UsageError
    from ..dcnv34 import api
    if args.shape:
        raise UsageError("--shape takes DCNv2 shapes; --op dcnv3/dcnv4 times InternImage's "
                         "stage shapes (see refdcn.benchmarks.dcnv34.SHAPES)")
    names = args.backend or api.fast_backends()
    for name in names:
        try:
            api.get_backend(name)
        except (ValueError, backends.BackendUnavailable) as exc:
            raise UsageError(str(exc)) from None
    dcnv34.run(args.op, dcnv34.QUICK_SHAPES if args.quick else dcnv34.SHAPES, names,
               args.repeats or (5 if args.quick else 7),
               args.warmup if args.warmup is not None else (1 if args.quick else 2),
               args.threads, args.dtype, args.json)
    return 0


def _run_beside(args, shapes, repeats, warmup, requested):
    """``--beside``: every context in its own process (:mod:`refdcn.benchmarks.contexts`)."""
    from ..benchmarks import contexts, cpu
    beside = contexts.CONTEXTS[1:] if "all" in args.beside else args.beside
    settings = cpu.Settings(shapes=[tuple(s) for s in shapes], backends=_cpu_backends(requested),
                            repeats=repeats, warmup=warmup, threads=args.threads,
                            dtype=args.dtype, modulated=not args.v1, baselines=False)
    try:
        contexts.run_contexts(settings, list(dict.fromkeys(beside)), json_path=args.json)
    except RuntimeError as exc:
        print(f"refdcn bench: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args):
    from ..benchmarks import cpu
    _check_positive(args.repeats, "repeats")
    _check_positive(args.warmup, "warmup", 0)
    _check_positive(args.threads, "threads")
    _check_threads(args.threads)
    _check_json_path(args.json)
    if args.op != "deform_conv2d":
        return _run_dcnv34(args)
    shapes = args.shape or (cpu.QUICK_SHAPES if args.quick else cpu.DEFAULT_SHAPES)
    _check_shapes_fit(shapes, args.dtype)
    repeats = args.repeats or (cpu.QUICK_REPEATS if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (cpu.QUICK_WARMUP if args.quick else 2)
    requested = args.backend
    want_gpu = requested is not None and "cuda" in requested
    cpu_requested = None if requested is None else [n for n in requested if n != "cuda"]
    status = 0
    if args.profile and (cpu_requested is None or cpu_requested):
        from ..benchmarks import profile
        settings = cpu.Settings(shapes=[tuple(s) for s in shapes],
                                backends=_cpu_backends(cpu_requested), repeats=repeats,
                                warmup=warmup, threads=args.threads, dtype=args.dtype,
                                modulated=not args.v1, baselines=not args.no_baselines)
        profile.run_profile(settings, json_path=args.json)
        return 0
    if args.beside and (cpu_requested is None or cpu_requested):
        return _run_beside(args, shapes, repeats, warmup, cpu_requested)
    if args.first_call:
        from ..benchmarks import first_call
        try:
            first_call.run_first_call(_cpu_backends(cpu_requested), json_path=args.json)
        except RuntimeError as exc:
            print(f"refdcn bench: {exc}", file=sys.stderr)
            return 1
        return 0
    if cpu_requested is None or cpu_requested:
        names = _cpu_backends(cpu_requested)
        settings = cpu.Settings(shapes=[tuple(s) for s in shapes], backends=names,
                                repeats=repeats, warmup=warmup, threads=args.threads,
                                dtype=args.dtype, modulated=not args.v1,
                                baselines=not args.no_baselines)
        try:
            cpu.run_cpu_benchmark(settings, json_path=args.json)
        except MemoryError:
            print("refdcn bench: error: out of memory (a --shape too large for this machine); "
                  "try a smaller --shape", file=sys.stderr)
            return 1
    if want_gpu:
        status = _run_gpu(args.shape, args.repeats or 20, warmup if args.warmup is not None
                          else 3, args.dtype)
    return status
