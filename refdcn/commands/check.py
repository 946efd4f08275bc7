"""``refdcn check``: run the built-in conformance cases on every available backend."""

import time

import numpy as np

from .. import api, backends, conformance
from ..testing import compare, reference_results

HELP = "run the conformance cases on every available backend and print a table"

QUANTITIES = ("output", "input", "offset", "mask", "weight", "bias")


def add_arguments(parser):
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="check only this backend (repeatable; default: all available)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="compute dtype (default float64; float32 uses the derived "
                             "float32 error bounds)")
    parser.add_argument("--case", metavar="TEXT", help="only cases whose name contains TEXT")
    parser.add_argument("--convention", choices=sorted(api.CONVENTIONS), action="append",
                        help="gradient convention(s) to check (default: both)")


def check_backend(name, cases, dtype, conventions):
    """Run every case on one backend; return (passed, total, worst forward, worst grads, failures)."""
    passed, worst_fwd, worst_grad, failures = 0, 0.0, 0.0, []
    for cc in cases:
        case = cc.build().astype(dtype)
        ok_case = True
        for conv in conventions:
            if dtype == np.float64:
                exp = conformance.expected(cc.name, conv)
            else:   # the reference on the rounded (float32) inputs, computed in float64
                exp = reference_results(case, conv)
            out = api.deform_conv2d(*case.args(), backend=name)
            grads = api.deform_conv2d_backward(case.grad_output, *case.args(), backend=name,
                                               convention=conv)
            actual = {"output": np.asarray(out), **grads._asdict()}
            report = compare(actual, exp, case, dtype)
            for q, (ok, err, _) in report.items():
                if q == "output":
                    worst_fwd = max(worst_fwd, err)
                else:
                    worst_grad = max(worst_grad, err)
                if not ok:
                    ok_case = False
                    failures.append(f"{cc.name} [{conv}] {q}: error {err:.3g}")
        passed += ok_case
    return passed, len(cases), worst_fwd, worst_grad, failures


def run(args):
    from ..cli import UsageError
    names = args.backend or backends.available()
    for name in names:
        if name not in backends.REGISTRY:
            raise UsageError(f"unknown backend {name!r}; known: {', '.join(backends.REGISTRY)}")
    cases = conformance.select(args.case)
    if not cases:
        raise UsageError(f"no conformance case matches {args.case!r}")
    dtype = np.dtype(args.dtype)
    conventions = args.convention or ["torchvision", "mmcv"]
    metric = "rel. error" if dtype == np.float64 else "error / bound"
    print(f"refdcn check: {len(cases)} cases x {len(conventions)} conventions, {dtype}")
    print(f"{'backend':<10} {'cases passed':>13} {'forward ' + metric:>22} "
          f"{'gradients ' + metric:>24} {'time s':>7}")
    status = 0
    missing = backends.unavailable()
    all_failures = []
    for name in names:
        if name in missing:
            print(f"{name:<10} {'unavailable':>13}   {missing[name]}")
            if args.backend:
                status = 1
            continue
        t0 = time.perf_counter()
        passed, total, wf, wg, failures = check_backend(name, cases, dtype, conventions)
        print(f"{name:<10} {f'{passed}/{total}':>13} {wf:>22.2e} {wg:>24.2e} "
              f"{time.perf_counter() - t0:>7.1f}")
        all_failures += [f"{name}: {f}" for f in failures]
        if passed != total:
            status = 1
    for line in all_failures:
        print("FAIL", line)
    if dtype == np.float64:
        print("pass: relative error <= 1e-12 against the float64 loop reference")
    else:
        print("pass: every element within its derived float32 bound (error / bound <= 1)")
    return status
