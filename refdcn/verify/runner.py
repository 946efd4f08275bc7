"""Run an implementation on the conformance cases and compare with the reference.

>>> from refdcn import conformance
>>> from refdcn.verify import adapters, runner
>>> report = runner.verify(adapters.resolve("refdcn:numpy"), conformance.select("onnx"))
>>> report.exit_code()
0
"""

import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .. import conformance
from ..testing import reference_results
from .diagnosis import Diagnosis, diagnose
from .measure import QUANTITIES, Tolerance

__all__ = ["CaseResult", "Report", "verify", "check_results", "expected_for"]


@dataclass
class CaseResult:
    """The outcome of one case: ``status`` is pass, fail, error or missing."""
    name: str
    catches: str
    status: str
    measures: dict = field(default_factory=dict)
    error: str = ""
    diagnosis: Diagnosis = None
    seconds: float = 0.0
    describe: str = ""

    def to_json(self):
        d = {"name": self.name, "catches": self.catches, "status": self.status,
             "case": self.describe, "seconds": round(self.seconds, 4),
             "quantities": {q: m.to_json() for q, m in self.measures.items()}}
        if self.error:
            d["error"] = self.error
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

    def count(self, status):
        return sum(r.status == status for r in self.results)

    def exit_code(self):
        """0 if every checked case passed, 1 otherwise."""
        return 0 if all(r.status in ("pass", "missing") for r in self.results) else 1

    def causes(self):
        """``{cause: [case names]}`` over the diagnosed failures."""
        out = {}
        for r in self.results:
            if r.diagnosis is not None:
                for cause in r.diagnosis.causes:
                    out.setdefault(cause, []).append(r.name)
        return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))

    def to_json(self):
        return {
            "implementation": self.implementation, "description": self.description,
            "dtype": self.dtype, "convention": self.convention,
            "tolerance": self.tolerance.describe(), "gradients": self.gradients,
            "summary": {"cases": len(self.results), "passed": self.count("pass"),
                        "failed": self.count("fail"), "errors": self.count("error"),
                        "missing": self.count("missing"), "causes": self.causes(),
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


def _one_line(exc):
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    """Measure ``actual`` against ``expected`` and diagnose a failure -> :class:`CaseResult`."""
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
            result.diagnosis = Diagnosis(notes=[f"the diagnosis itself failed: {_one_line(exc)}"])
    return result


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
    if impl.native_convention and grads and convention != impl.native_convention:
        report.notes.append(f"{impl.name} computes the {impl.native_convention} offset-gradient "
                            f"convention; expecting {convention}")
    rerun_backward = (lambda c: impl.backward(c, convention)) if grads else None
    rerun = (impl.forward, rerun_backward) if impl.splittable else None
    for cc in cases:
        t0 = time.perf_counter()
        case = cc.build().astype(dtype)
        expected = expected_for(cc.name, dtype, convention)
        actual = {}
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")          # the implementation's own warnings
                actual["output"] = impl.forward(case)
                if grads:
                    actual.update(impl.backward(case, convention))
        except (Exception, GeneratorExit) as exc:   # noqa: BLE001 - the implementation's failure is a result
            result = CaseResult(cc.name, cc.catches, "error", error=_one_line(exc),
                                describe=case.describe())
            if "output" in actual:
                bounds = tolerance.bounds(case)
                result.measures["output"] = tolerance.check(
                    actual["output"], expected["output"], bounds and bounds["output"])
            result.diagnosis = Diagnosis(notes=error_hints(case), searched=False)
        else:
            result = check_results(case, cc, actual, expected, tolerance, convention, rerun,
                                   diagnose_failures)
        result.seconds = time.perf_counter() - t0
        report.results.append(result)
    return report
