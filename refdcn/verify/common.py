"""What the failing cases have in common, when no named rule explains them.

:func:`separate` describes every conformance case by yes/no attributes (stride,
dilation and padding per axis, groups, offset groups, mask, bias, batch size,
kernel shape, and where its sampling points land: inside, on a grid line, in
a border band, exactly on -1 or H, outside) and finds the smallest
conjunction of at most :data:`MAX_TERMS` attributes (or their negations) that
holds on every failing case and on as few passing cases as possible, e.g.
"every failing case has stride_h != stride_w, and no passing case does".

A passing case with an empty batch says nothing (there is nothing to
compute), so it is left out.
"""

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from ..bilinear import sampling_point

__all__ = ["Separation", "separate", "case_attributes", "MAX_TERMS"]

#: Largest number of attributes in one explanation.
MAX_TERMS = 3


def _landings(case, geom):
    """Which kinds of places the sampling points of ``case`` land on (a set of words)."""
    if case.input.shape[0] == 0:
        return set()
    K = geom.taps
    off = np.asarray(case.offset, np.float64).reshape(case.offset.shape[0], geom.offset_groups,
                                                       K, 2, geom.out_h, geom.out_w)
    i, j = np.divmod(np.arange(K), geom.kw)
    y = sampling_point(np.arange(geom.out_h)[None, :, None], geom.stride[0], geom.padding[0],
                       i[:, None, None], geom.dilation[0], off[:, :, :, 0])
    x = sampling_point(np.arange(geom.out_w)[None, None, :], geom.stride[1], geom.padding[1],
                       j[:, None, None], geom.dilation[1], off[:, :, :, 1])
    found = set()
    for v, size in ((y, geom.height), (x, geom.width)):
        if np.any((v == -1) | (v == size)):
            found.add("edge")
        if np.any(((v > -1) & (v < 0)) | ((v > size - 1) & (v < size))):
            found.add("band")
        if np.any((v < -1) | (v > size)):
            found.add("outside")
        if np.any((v >= 0) & (v <= size - 1) & (v == np.floor(v))):
            found.add("grid")
    if np.all(off == np.round(off)):
        found.add("integer")
    return found


#: (attribute, its negation, test on (case, geometry, landings))
ATTRIBUTES = [
    ("stride_h != stride_w", "stride_h == stride_w", lambda c, g, s: g.stride[0] != g.stride[1]),
    ("dilation_h != dilation_w", "dilation_h == dilation_w",
     lambda c, g, s: g.dilation[0] != g.dilation[1]),
    ("padding_h != padding_w", "padding_h == padding_w",
     lambda c, g, s: g.padding[0] != g.padding[1]),
    ("more than one kernel row", "one kernel row", lambda c, g, s: g.kh > 1),
    ("more than one kernel column", "one kernel column", lambda c, g, s: g.kw > 1),
    ("more than one output row", "one output row", lambda c, g, s: g.out_h > 1),
    ("more than one output column", "one output column", lambda c, g, s: g.out_w > 1),
    ("a stride > 1", "stride 1", lambda c, g, s: max(g.stride) > 1),
    ("a dilation > 1", "dilation 1", lambda c, g, s: max(g.dilation) > 1),
    ("padding > 0", "no padding", lambda c, g, s: max(g.padding) > 0),
    ("a non-square kernel", "a square kernel", lambda c, g, s: g.kh != g.kw),
    ("a 1x1 kernel", "a kernel larger than 1x1", lambda c, g, s: g.taps == 1),
    ("groups > 1", "groups = 1", lambda c, g, s: g.groups > 1),
    ("offset_groups > 1", "offset_groups = 1", lambda c, g, s: g.offset_groups > 1),
    ("a mask", "no mask", lambda c, g, s: c.mask is not None),
    ("a bias", "no bias", lambda c, g, s: c.bias is not None),
    ("more than one image", "at most one image", lambda c, g, s: g.batch > 1),
    ("an empty batch", "a non-empty batch", lambda c, g, s: g.batch == 0),
    ("H = 1 or W = 1", "H > 1 and W > 1", lambda c, g, s: 1 in (g.height, g.width)),
    ("H != W", "H == W", lambda c, g, s: g.height != g.width),
    ("a tap exactly on -1 or H (W)", "no tap exactly on -1 or H (W)",
     lambda c, g, s: "edge" in s),
    ("a tap in a border band (-1, 0) or (H-1, H)", "no tap in a border band",
     lambda c, g, s: "band" in s),
    ("a tap outside the sampled area", "no tap outside the sampled area",
     lambda c, g, s: "outside" in s),
    ("a tap on a grid line inside the image", "no tap on a grid line inside the image",
     lambda c, g, s: "grid" in s),
    ("integer offsets only", "fractional offsets", lambda c, g, s: "integer" in s),
]


def case_attributes(case):
    """``{attribute: bool}`` for one :class:`refdcn.testing.Case` (names of :data:`ATTRIBUTES`)."""
    from .variants import geometry_of
    geom = geometry_of(case)
    landings = _landings(case, geom)
    return {yes: bool(test(case, geom, landings)) for yes, _, test in ATTRIBUTES}


@dataclass
class Separation:
    """The attributes every failing case has (``terms``), and the passing cases that have them
    too (``also_passing``; empty: the attributes separate failing from passing exactly).
    ``alternatives``: other attribute sets of the same size that separate equally well on
    these cases (the cases cannot tell them apart)."""
    terms: list
    failing: list
    also_passing: list = field(default_factory=list)
    alternatives: list = field(default_factory=list)

    @property
    def exact(self):
        return not self.also_passing

    def text(self):
        what = " and ".join(self.terms)
        if self.alternatives:
            shown = "; ".join(" and ".join(t) for t in self.alternatives[:3])
            what += f" (equally well on these cases: {shown}" + \
                (", ...)" if len(self.alternatives) > 3 else ")")
        if self.exact:
            return f"fails exactly when the case has {what} ({len(self.failing)} failing cases " \
                   f"have it, no passing case does)"
        shown = ", ".join(self.also_passing[:4]) + (", ..." if len(self.also_passing) > 4 else "")
        return f"every failing case has {what}; so do {len(self.also_passing)} passing " \
               f"case{'s' if len(self.also_passing) != 1 else ''} ({shown})"

    def to_json(self):
        return {"attributes": list(self.terms), "exact": self.exact,
                "alternatives": [list(t) for t in self.alternatives],
                "also_passing": list(self.also_passing), "text": self.text()}


def separate(results, cases):
    """The smallest conjunction of attributes shared by every failing case, or None.

    Parameters
    ----------
    results : list of refdcn.verify.runner.CaseResult
    cases : dict
        ``{name: refdcn.testing.Case}`` for the names in ``results``.

    Returns
    -------
    Separation or None
        None when nothing failed, nothing passed, or no attribute set leaves
        out at least one passing case.
    """
    rows = []
    for r in results:
        if r.status == "missing" or r.name not in cases:
            continue
        case = cases[r.name]
        failed = r.status in ("fail", "error")
        if not failed and case.input.shape[0] == 0:
            continue
        rows.append((r.name, failed, case_attributes(case)))
    failing = np.array([f for _, f, _ in rows], dtype=bool)
    if not failing.any() or failing.all():
        return None
    names = [n for n, _, _ in rows]
    literals = []
    for yes, no, _ in ATTRIBUTES:
        column = np.array([attrs[yes] for _, _, attrs in rows], dtype=bool)
        literals += [(yes, column), (no, ~column)]
    literals = [(t, c) for t, c in literals if c[failing].all() and not c.all()]
    best, ties = None, []
    for size in range(1, MAX_TERMS + 1):
        for combo in combinations(literals, size):
            holds = np.logical_and.reduce([c for _, c in combo])
            extra = int(np.count_nonzero(holds & ~failing))
            if best is None or extra < best[0]:
                best, ties = (extra, combo, holds), []
            elif extra == best[0] and len(combo) == len(best[1]) and \
                    np.array_equal(holds, best[2]):
                ties.append([t for t, _ in combo])
        if best is not None and best[0] == 0:
            break
    if best is None or best[0] >= int(np.count_nonzero(~failing)):
        return None
    extra, combo, holds = best
    return Separation([t for t, _ in combo], [n for n, f in zip(names, failing) if f],
                      [n for n, h, f in zip(names, holds, failing) if h and not f], ties)
