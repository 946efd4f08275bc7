"""How far a result is from the expected one, and whether that is within tolerance.

Two criteria, both from :mod:`refdcn.tolerances` (none is defined here):

* **relative** (float64 by default, or any dtype with an explicit ``rtol``):
  the normwise relative error ``max|a - e| / max|e|`` of
  :func:`refdcn.tolerances.relative_error` must be ``<= rtol``
  (default :data:`refdcn.tolerances.FLOAT64_RTOL` = 1e-12);
* **float32 bounds** (float32 without an explicit ``rtol``): every element
  must lie within its derived bound of the float64 reference computed from
  the same (float32-rounded) inputs; the reported ``ratio`` is
  ``max |a - e| / bound`` and must be ``<= 1``.  Two tiers: the default
  :func:`refdcn.tolerances.float32_implementation_bounds` (what a correct
  float32 implementation can produce: coordinates, fractions and corner
  weights in float32) and, with ``strict``,
  :func:`refdcn.tolerances.float32_bounds` (coordinates in double precision,
  as refdcn's own float32 backends form them).

Every :class:`Measure` also carries the worst absolute and normwise relative
errors, whatever the criterion.
"""

from dataclasses import dataclass

import numpy as np

from ..tolerances import (FLOAT64_RTOL, float32_bounds, float32_implementation_bounds,
                          relative_error)

__all__ = ["Measure", "Tolerance", "QUANTITIES"]

#: The checked quantities: the output and the five gradients.
QUANTITIES = ("output", "input", "offset", "mask", "weight", "bias")


@dataclass
class Measure:
    """Comparison of one quantity.

    ``score`` is what the criterion thresholds: the relative error (relative
    criterion) or the bound ratio (float32 bounds); ``ok`` is ``score <=
    limit``.
    """
    ok: bool
    abs_error: float
    rel_error: float
    ratio: object = None          # float32 bounds: worst |error| / bound
    note: str = ""

    @property
    def score(self):
        return self.rel_error if self.ratio is None else self.ratio

    def to_json(self):
        d = {"ok": self.ok, "abs": _finite(self.abs_error), "rel": _finite(self.rel_error)}
        if self.ratio is not None:
            d["ratio_to_bound"] = _finite(self.ratio)
        if self.note:
            d["note"] = self.note
        return d


def _finite(v):
    """JSON has no inf/nan: encode them as strings."""
    v = float(v)
    return v if np.isfinite(v) else str(v)


class Tolerance:
    """The pass criterion for one dtype.

    Parameters
    ----------
    dtype : float32 or float64
        The dtype the implementation computes in.
    rtol : float, optional
        Use the relative criterion with this limit (any dtype).  Default:
        :data:`~refdcn.tolerances.FLOAT64_RTOL` for float64, the derived
        float32 bounds for float32.
    strict : bool
        float32 bounds: the strict tier (coordinates in double precision)
        instead of the float32-implementation tier.
    """

    def __init__(self, dtype=np.float64, rtol=None, strict=False):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64; got {self.dtype}")
        if rtol is not None and not (rtol >= 0):
            raise ValueError(f"rtol must be a non-negative number; got {rtol!r}")
        self.rtol = rtol
        self.strict = bool(strict)
        self.uses_bounds = rtol is None and self.dtype == np.float32
        self.limit = 1.0 if self.uses_bounds else (FLOAT64_RTOL if rtol is None else rtol)

    def describe(self):
        if self.uses_bounds:
            tier = ("strict tier: coordinates in double precision" if self.strict else
                    "float32-implementation tier: coordinates and weights in float32")
            return (f"every element within its derived float32 bound of the float64 reference "
                    f"(|error| / bound <= 1; {tier})")
        return f"normwise relative error max|a-e|/max|e| <= {self.limit:g}"

    def bounds(self, case):
        """Per-quantity element bounds (float32 criterion) or None."""
        if not self.uses_bounds:
            return None
        c = case.astype(np.float64)
        if c.input.shape[0] == 0:
            # an empty batch: nothing to round; the weight/bias gradients must be exactly 0
            return {q: np.finfo(np.float32).tiny for q in QUANTITIES}
        bounds = float32_bounds if self.strict else float32_implementation_bounds
        return bounds(c.grad_output, *c.args())

    def check(self, actual, expected, bound=None):
        """A :class:`Measure` of ``actual`` against ``expected`` (arrays; ``actual`` may be None)."""
        if actual is None:
            return Measure(False, np.inf, np.inf, None, "missing (the implementation returned None)")
        try:
            a = np.asarray(actual, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            return Measure(False, np.inf, np.inf, None, f"not numeric: {exc}")
        e = np.asarray(expected, dtype=np.float64)
        if a.shape != e.shape:
            return Measure(False, np.inf, np.inf, None, f"shape {a.shape}, expected {e.shape}")
        rel = relative_error(a, e)
        if a.size == 0:
            absolute = 0.0
        elif (np.isnan(a) != np.isnan(e)).any():
            absolute = np.inf
        else:
            with np.errstate(invalid="ignore"):
                diff = np.abs(a - e)
            diff = diff[~np.isnan(e)]
            absolute = float(diff.max()) if diff.size else 0.0
            if np.isnan(absolute):
                absolute = np.inf
        note = ""
        if a.size and (np.isnan(a) & ~np.isnan(e)).any():
            note = f"{int((np.isnan(a) & ~np.isnan(e)).sum())} NaN where a number is expected"
        if not self.uses_bounds:
            return Measure(bool(rel <= self.limit), absolute, rel, None, note)
        if a.size == 0:
            return Measure(True, 0.0, 0.0, 0.0, note)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.abs(a - e) / bound
        same_nan = bool((np.isnan(a) == np.isnan(e)).all())
        finite = ratio[~np.isnan(e)]
        worst = float(np.nanmax(finite)) if finite.size and not np.isnan(finite).all() else 0.0
        if not same_nan:
            worst = np.inf
        return Measure(bool(same_nan and worst <= 1.0), absolute, rel, worst, note)
