"""Run an implementation on the conformance cases and compare with the reference.

>>> from refdcn import conformance
>>> from refdcn.verify import adapters, runner
>>> report = runner.verify(adapters.resolve("refdcn:numpy"), conformance.select("onnx"))
>>> report.exit_code()
0
"""

import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .. import conformance
from ..testing import reference_results
from .adapters import ImplementationError, one_line, quiet
from .diagnosis import Diagnosis, diagnose
from .measure import QUANTITIES, Tolerance

__all__ = ["CaseResult", "Report", "verify", "check_results", "expected_for", "validate",
           "ERROR_CAUSES", "find_common", "convention_note"]

#: Causes of an ERROR row (``CaseResult.cause``; keys of ``summary.causes`` in the JSON).
ERROR_CAUSES = {
    "timeout": "no result within the time limit (--timeout)",
    "crash": "the implementation's process was killed by a signal",
    "exit": "the implementation's process exited, or it called sys.exit, during the call",
    "exception": "the implementation raised an exception",
    "wrong_shape": "a result has the wrong shape (expected and received shapes are given)",
    "non_finite": "NaN or inf where the reference is finite",
    "complex_output": "a complex result where a real one is expected",
    "not_numeric": "a result that is not a numeric array",
    "missing_quantity": "a quantity the case defines is missing (None or absent)",
}


@dataclass
class CaseResult:
    """The outcome of one case: ``status`` is pass, fail, error, unsupported or missing.

    An error row has ``error`` (one line) and ``cause`` (a key of :data:`ERROR_CAUSES`);
    an unsupported row has the reason in ``error``.
    """
    name: str
    catches: str
    status: str
    measures: dict = field(default_factory=dict)
    error: str = ""
    cause: str = ""
    diagnosis: Diagnosis = None
    seconds: float = 0.0
    describe: str = ""

    def to_json(self):
        d = {"name": self.name, "catches": self.catches, "status": self.status,
             "case": self.describe, "seconds": round(self.seconds, 4),
             "quantities": {q: m.to_json() for q, m in self.measures.items()}}
        if self.error:
            d["error"] = self.error
        if self.cause:
            d["cause"] = self.cause
        if self.diagnosis is not None:
            d["diagnosis"] = self.diagnosis.to_json()
        return d


@dataclass
class Report:
    """All case results of one run, plus what was run and how it was judged."""
    implementation: str
    description: str
    dtype: str
    convention: str
    tolerance: Tolerance
    gradients: bool
    results: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    allow_missing: bool = False
    common: object = None          # refdcn.verify.common.Separation, or None

    def count(self, status):
        return sum(r.status == status for r in self.results)

    def exit_code(self):
        """0 if every case passed or is unsupported (missing ones only with ``allow_missing``)
        and at least one passed; 1 otherwise (also when nothing could be checked)."""
        ok = ("pass", "unsupported") + (("missing",) if self.allow_missing else ())
        checked = self.count("pass") > 0 or not self.results
        return 0 if checked and all(r.status in ok for r in self.results) else 1

    def causes(self):
        """``{cause: [case names]}`` over the error rows and the diagnosed failures."""
        out = {}
        for r in self.results:
            if r.cause:
                out.setdefault(r.cause, []).append(r.name)
            if r.diagnosis is not None:
                for cause in r.diagnosis.causes:
                    if cause != r.cause:
                        out.setdefault(cause, []).append(r.name)
        return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))

    def to_json(self):
        return {
            "implementation": self.implementation, "description": self.description,
            "dtype": self.dtype, "convention": self.convention,
            "tolerance": self.tolerance.describe(), "gradients": self.gradients,
            "summary": {"cases": len(self.results), "passed": self.count("pass"),
                        "failed": self.count("fail"), "errors": self.count("error"),
                        "unsupported": self.count("unsupported"),
                        "missing": self.count("missing"), "causes": self.causes(),
                        "common": None if self.common is None else self.common.to_json(),
                        "exit_code": self.exit_code()},
            "notes": list(self.notes),
            "cases": [r.to_json() for r in self.results],
        }


@lru_cache(maxsize=None)
def _expected_rounded(name, dtype, convention):
    case = conformance.get_case(name).build().astype(np.dtype(dtype))
    return reference_results(case, convention)


def expected_for(name, dtype, convention):
    """Expected results of case ``name`` for inputs rounded to ``dtype`` (float64 reference)."""
    if np.dtype(dtype) == np.float64:
        return conformance.expected(name, convention)
    return dict(_expected_rounded(name, np.dtype(dtype).str, convention))


def validate(actual, expected):
    """``[(cause, message)]``: the structural problems of ``actual`` (empty if none).

    Every quantity ``expected`` defines must be present in ``actual`` as a real
    numeric array of the expected shape, finite wherever the reference is.
    """
    problems = []
    for q in QUANTITIES:
        if expected.get(q) is None or (q not in actual and q != "output" and
                                       not (set(actual) - {"output"})):
            continue        # a forward-only result: the gradients are not asked for
        name = "output" if q == "output" else f"grad_{q}"
        a = actual.get(q)
        if a is None:
            problems.append(("missing_quantity", f"{name} is missing"))
            continue
        try:
            a = np.asarray(a)
        except Exception as exc:       # noqa: BLE001 - whatever the implementation returned
            problems.append(("not_numeric", f"{name} is not an array: {one_line(exc)}"))
            continue
        e = np.asarray(expected[q])
        if a.dtype.kind == "c":
            problems.append(("complex_output", f"{name} is complex ({a.dtype}); a real array "
                                               f"is expected"))
            continue
        if a.dtype.kind not in "fiu":
            problems.append(("not_numeric", f"{name} has dtype {a.dtype}; a real numeric array "
                                            f"is expected"))
            continue
        if a.shape != e.shape:
            problems.append(("wrong_shape", f"{name} has shape {a.shape}; expected {e.shape}"))
            continue
        with np.errstate(invalid="ignore"):
            bad = int(np.count_nonzero(~np.isfinite(a) & np.isfinite(e)))
        if bad:
            problems.append(("non_finite", f"{name} has {bad} non-finite value"
                                           f"{'s' if bad != 1 else ''} (NaN or inf) where the "
                                           f"reference is finite"))
    return problems


def error_hints(case):
    """Features of a case that commonly break implementations (for error rows)."""
    n, _, h, w = case.input.shape
    hints = []
    if n == 0:
        hints.append("batch 0 (an empty batch)")
    if 1 in (h, w):
        hints.append("H = 1 or W = 1: code that normalises coordinates by (H - 1) divides by "
                     "zero here (ONNX's reference evaluator does)")
    if case.offset.size and np.abs(case.offset).max() >= 50:
        hints.append("offsets far outside the image")
    return hints


def check_results(case, cc, actual, expected, tolerance, convention, rerun=None,
                  diagnose_failures=True):
    """Measure ``actual`` against ``expected`` and diagnose a failure -> :class:`CaseResult`.

    Structural problems (:func:`validate`) make the case an ERROR row with its cause.
    """
    problems = validate(actual, expected)
    if problems:
        return CaseResult(cc.name, cc.catches, "error", error="; ".join(m for _, m in problems),
                          cause=problems[0][0], describe=case.describe(),
                          diagnosis=Diagnosis(searched=False))
    bounds = tolerance.bounds(case)
    measures = {}
    for q in QUANTITIES:
        if q not in actual or expected.get(q) is None:
            continue
        measures[q] = tolerance.check(actual[q], expected[q],
                                      None if bounds is None else bounds[q])
    ok = all(m.ok for m in measures.values())
    result = CaseResult(cc.name, cc.catches, "pass" if ok else "fail", measures,
                        describe=case.describe())
    if not ok and diagnose_failures:
        try:
            result.diagnosis = diagnose(case, actual, expected, measures, tolerance, convention,
                                        bounds, rerun)
        except Exception as exc:      # noqa: BLE001 - never let the diagnosis crash the report
            result.diagnosis = Diagnosis(notes=[f"the diagnosis itself failed: {one_line(exc)}"])
    return result


def _error_row(cc, case, cause, message, partial, expected, tolerance):
    result = CaseResult(cc.name, cc.catches, "error", error=message, cause=cause,
                        describe=case.describe())
    out = partial.get("output")
    if out is not None and not validate({"output": out}, {"output": expected["output"]}):
        bounds = tolerance.bounds(case)
        result.measures["output"] = tolerance.check(out, expected["output"],
                                                    bounds and bounds["output"])
    result.diagnosis = Diagnosis(notes=error_hints(case), searched=False)
    return result


def find_common(report, cases):
    """Set ``report.common`` (:func:`refdcn.verify.common.separate`) when a case errors or fails
    with no named cause; ``cases`` maps case names to the cases run."""
    from .common import separate
    unexplained = [r for r in report.results if r.status == "error" or (
        r.status == "fail" and (r.diagnosis is None or not r.diagnosis.causes))]
    if unexplained:
        report.common = separate(report.results, cases)


def convention_note(report, name):
    """A note on the offset-gradient convention the implementation was seen to follow.

    Computed from the results, never assumed: the convention is named only
    when the diagnosis found that the other convention explains a case.
    """
    from .variants import other_convention
    cases = report.causes().get("convention", [])
    if not cases:
        return ""
    other = other_convention(report.convention)
    return (f"{name} computes the {other} offset-gradient convention (on "
            f"{len(cases)} case{'s' if len(cases) != 1 else ''} where the two differ); "
            f"expecting {report.convention} (use --convention {other} to check it against that)")


def verify(impl, cases, dtype=np.float64, convention=None, tolerance=None, gradients=True,
           diagnose_failures=True):
    """Run ``impl`` (an :class:`~refdcn.verify.adapters.Implementation`) on ``cases``.

    Parameters
    ----------
    impl : Implementation
    cases : list of refdcn.conformance.ConformanceCase
    dtype : float32 or float64
        The inputs are rounded to this dtype before the call; the expected
        values are the float64 reference on those rounded inputs.
    convention : {"torchvision", "mmcv"}, optional
        Offset-gradient convention of the expected gradients (default: the
        implementation's own, else torchvision).
    tolerance : refdcn.verify.measure.Tolerance, optional
        Default: ``Tolerance(dtype)``.
    gradients : bool
        Check the five gradients too (if the implementation has a backward).
    diagnose_failures : bool

    Returns
    -------
    Report
    """
    dtype = np.dtype(dtype)
    convention = convention or impl.native_convention or "torchvision"
    tolerance = tolerance or Tolerance(dtype)
    grads = gradients and impl.has_backward
    report = Report(impl.name, impl.description, str(dtype), convention, tolerance, grads)
    rerun_backward = (lambda c: impl.backward(c, convention)) if grads else None
    rerun = (impl.forward, rerun_backward)
    built = {}
    for cc in cases:
        t0 = time.perf_counter()
        case = built[cc.name] = cc.build().astype(dtype)
        expected = expected_for(cc.name, dtype, convention)
        try:
            with quiet():
                reason = impl.unsupported(case)
                if reason:
                    report.results.append(CaseResult(cc.name, cc.catches, "unsupported",
                                                     error=reason, describe=case.describe()))
                    continue
                actual = impl.results(case, convention, grads)
        except ImplementationError as exc:
            result = _error_row(cc, case, exc.cause, str(exc), exc.partial, expected, tolerance)
        except (Exception, GeneratorExit) as exc:   # noqa: BLE001 - the implementation's failure
            result = _error_row(cc, case, "exception", one_line(exc), {}, expected, tolerance)
        else:
            result = check_results(case, cc, actual, expected, tolerance, convention,
                                   rerun if impl.splittable else None,
                                   diagnose_failures)
        result.seconds = time.perf_counter() - t0
        report.results.append(result)
    note = convention_note(report, impl.name)
    if note:
        report.notes.append(note)
    if diagnose_failures:
        find_common(report, built)
    return report
