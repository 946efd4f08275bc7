"""``refdcn verify IMPL``: check another implementation against the conformance cases.

IMPL is ``torchvision``, ``onnxruntime``, ``onnx-reference``, ``mmcv``, a refdcn
backend (``refdcn:numpy`` or just ``numpy``), or ``package.module:function`` with
torchvision's signature on NumPy arrays.  Prints one row per case and, for each
failing case, where it is wrong and which known convention explains it.
Every implementation except refdcn's own backends runs in a child process with a
time limit per case (``--timeout``): a hang, a crash, an exit or an exception is
that case's ERROR row, and the run goes on.

Exit status: 0 every case passes; 1 a case fails or errors; 2 a usage error
(unknown IMPL, a library that is missing, an IMPL that cannot be loaded).
"""

import os

import numpy as np

from .. import api, backends, conformance
from ..verify.isolation import DEFAULT_TIMEOUT

HELP = "check another implementation (torchvision, onnxruntime, mmcv, your function) " \
       "and say what is wrong"


def add_arguments(parser):
    parser.epilog = ("exit status: 0 every case passes or is unsupported (at least one passes); "
                     "1 a case fails or errors, or nothing could be checked; 2 a usage error. "
                     "JSON causes (summary.causes): see the README, 'Verifying your "
                     "implementation'.")
    parser.add_argument("impl", nargs="?", metavar="IMPL",
                        help="torchvision | onnxruntime | onnx-reference | mmcv | refdcn:BACKEND "
                             "| package.module:function (torchvision's signature on NumPy "
                             "arrays: f(input, offset, weight, bias=None, stride=(1, 1), "
                             "padding=(0, 0), dilation=(1, 1), mask=None) -> output)")
    parser.add_argument("--backward", metavar="package.module:function",
                        help="gradients of a Python IMPL: g(grad_output, input, offset, weight, "
                             "bias, stride, padding, dilation, mask) -> (grad_input, "
                             "grad_offset, grad_mask, grad_weight, grad_bias) or a mapping "
                             "with keys input, offset, mask, weight, bias")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of the inputs handed to IMPL (default float64)")
    parser.add_argument("--convention", choices=sorted(api.CONVENTIONS),
                        help="offset-gradient convention the gradients must follow (default: "
                             "IMPL's own: mmcv for mmcv, torchvision otherwise)")
    parser.add_argument("--case", action="append", metavar="TEXT",
                        help="only cases whose name contains TEXT (repeatable)")
    parser.add_argument("--rtol", type=float, metavar="R",
                        help="pass when the normwise relative error max|a-e|/max|e| <= R "
                             "(default: 1e-12 for float64, the derived element-wise float32 "
                             "bounds for float32)")
    parser.add_argument("--strict", action="store_true",
                        help="float32: the strict bounds (sampling coordinates formed in double "
                             "precision, as refdcn's own float32 backends do) instead of the "
                             "default tier, which admits float32 coordinates and weights")
    parser.add_argument("--forward-only", action="store_true",
                        help="do not check gradients even if IMPL has them")
    parser.add_argument("--opset", type=int, default=19, choices=[19, 22],
                        help="ONNX opset of the DeformConv model (onnxruntime, onnx-reference)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"time limit of one case (forward and gradients) in the child "
                             f"process that runs IMPL (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--in-process", action="store_true",
                        help="run IMPL inside this process (no time limit; a crash or an exit "
                             "in IMPL ends the run). refdcn's own backends always run in "
                             "process")
    parser.add_argument("--json", action="store_true",
                        help="print a machine-readable JSON report instead of the table")
    parser.add_argument("--verbose", action="store_true",
                        help="describe every failing case in full")
    parser.add_argument("--list", action="store_true",
                        help="list the conformance cases and the built-in adapters, then exit")
    parser.add_argument("--op", choices=["deform_conv2d", "dcnv3", "dcnv4"],
                        default="deform_conv2d",
                        help="operator of IMPL (default deform_conv2d); dcnv3/dcnv4: "
                             "refdcn.verify.dcnv34 (IMPL refdcn:numba | internimage-pytorch | "
                             "package.module:function in the originals' argument order)")


def _list():
    from ..verify.adapters import BUILTIN
    print("conformance cases:")
    for c in conformance.CASES:
        print(f"  {c.name:<28} {c.catches}")
    print("built-in adapters: " + ", ".join(BUILTIN))
    missing = backends.unavailable()
    print("refdcn backends: " + ", ".join(
        f"refdcn:{b}" + (" (unavailable)" if b in missing else "") for b in backends.REGISTRY))
    return 0


def _file_hint(*specs):
    """A hint for IMPL / --backward written as a file (``mydcn.py:fn``, ``./mydcn.py``)."""
    for option, spec in zip(("refdcn verify", "--backward"), specs):
        if not spec:
            continue
        path, _, func = spec.partition(":")
        if path.endswith(".py") or os.sep in path or "/" in path:
            folder, name = os.path.split(path[:-3] if path.endswith(".py") else path)
            module = name.replace(os.sep, ".")
            where = f" from its folder (cd {folder})" if folder not in ("", ".") else ""
            return (f"\nhint: {spec!r} looks like a file; refdcn verify takes a module name "
                    f"and a function: {option} {module}:{func or 'FUNCTION'}{where}")
    return ""


def run(args):
    from ..cli import UsageError
    from ..verify import AdapterUnavailable, Tolerance, resolve, verify
    from ..verify.adapters import is_refdcn_backend
    from ..verify.isolation import Isolated
    from ..verify.report import format_json, format_text
    if args.op != "deform_conv2d":
        from ..verify.dcnv34 import run_command
        return run_command(args)
    if args.list:
        return _list()
    if not args.impl:
        raise UsageError("IMPL is required (try: refdcn verify torchvision; refdcn verify --list)")
    cases = conformance.select(args.case)
    if not cases:
        raise UsageError(f"no conformance case matches {args.case}; known: "
                         f"{', '.join(conformance.names())}")
    if args.rtol is not None and not args.rtol >= 0:
        raise UsageError(f"--rtol must be a non-negative number; got {args.rtol}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds; got {args.timeout}")
    try:
        if args.in_process or is_refdcn_backend(args.impl):
            impl = resolve(args.impl, args.backward, opset=args.opset)
        else:       # IMPL is imported in the child only: an import that exits cannot end us
            impl = Isolated(args.impl, args.backward, opset=args.opset, timeout=args.timeout)
    except AdapterUnavailable as exc:
        raise UsageError(str(exc) + _file_hint(args.impl, args.backward)) from None
    dtype = np.dtype(args.dtype)
    report = verify(impl, cases, dtype, args.convention, Tolerance(dtype, args.rtol, args.strict),
                    gradients=not args.forward_only)
    print(format_json(report) if args.json else format_text(report, args.verbose))
    return report.exit_code()
