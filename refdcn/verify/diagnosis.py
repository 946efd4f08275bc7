"""Diagnosis of a failing case: where it is wrong, what is sampled there, and why.

For each failing quantity :func:`diagnose` reports

1. **where**: the worst element (batch, channel, output pixel; or the tap, or
   the input pixel) with the expected and the received value;
2. **what is sampled there**: for an output pixel, the sampling points of all
   its taps, classified as inside the image, exactly on a grid line, in the
   border band (-1, 0) or (H-1, H), exactly on -1 or H, or outside; for an
   offset/mask gradient, the one tap it belongs to;
3. **why**, in this order: whether an identical call gives the same result
   (the implementation is re-run on the unchanged case; if not, the cause is
   ``not_repeatable`` and no other comparison of two runs is trusted),
   whether the results depend on how the batch is split (re-run one image at
   a time), and which known alternative convention
   (:mod:`refdcn.verify.variants`) the implementation agrees with instead of
   the reference.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from ..bilinear import sampling_point
from ..geometry import offset_channel
from .adapters import one_line, quiet
from .variants import VARIANTS, geometry_of

__all__ = ["Diagnosis", "diagnose", "axis_class", "describe_point", "locate", "expected_got"]

#: Coarse sample classes, in increasing order of "how special".
CLASSES = ("inside", "on a grid line", "in the border band", "exactly on -1 or H", "outside",
           "NaN")


def axis_class(v, size, axis):
    """``(rank, label)`` of coordinate ``v`` on an axis of ``size`` pixels.

    ``axis`` is ``"y"`` (size H) or ``"x"`` (size W).  Ranks index :data:`CLASSES`.

    >>> axis_class(-1.0, 5, "y")
    (3, 'exactly on y = -1')
    >>> axis_class(4.5, 5, "x")
    (2, 'in the band W-1 < x < W')
    """
    n = "H" if axis == "y" else "W"
    if v != v:
        return 5, f"{axis} is NaN"
    if v < -1 or v > size:
        return 4, f"outside ({axis} = {v:.6g})"
    if v == -1:
        return 3, f"exactly on {axis} = -1"
    if v == size:
        return 3, f"exactly on {axis} = {n} = {size}"
    if v < 0:
        return 2, f"in the band -1 < {axis} < 0"
    if v > size - 1:
        return 2, f"in the band {n}-1 < {axis} < {n}"
    if v == int(v):
        edge = ""
        if v == 0 and v == size - 1:
            edge = " (the only " + ("row)" if axis == "y" else "column)")
        elif v == 0:
            edge = " (first " + ("row)" if axis == "y" else "column)")
        elif v == size - 1:
            edge = " (last " + ("row)" if axis == "y" else "column)")
        return 1, f"on the grid line {axis} = {int(v)}{edge}"
    return 0, "inside"


def describe_point(y, x, height, width):
    """``(rank, text)`` of a sampling point: the notable facts about its two coordinates."""
    ry, ly = axis_class(y, height, "y")
    rx, lx = axis_class(x, width, "x")
    parts = [label for rank, label in sorted(((ry, ly), (rx, lx)), reverse=True) if rank > 0]
    return max(ry, rx), ", ".join(parts) if parts else "inside"


def _point(case, geom, n, d, i, j, oy, ox):
    """Sampling point ``(y, x)`` of tap (i, j) of offset group d at output (oy, ox) of image n."""
    y = sampling_point(oy, geom.stride[0], geom.padding[0], i, geom.dilation[0],
                       float(case.offset[n, offset_channel(d, i, j, geom.kh, geom.kw, 0), oy, ox]))
    x = sampling_point(ox, geom.stride[1], geom.padding[1], j, geom.dilation[1],
                       float(case.offset[n, offset_channel(d, i, j, geom.kh, geom.kw, 1), oy, ox]))
    return y, x


def _fmt(v):
    return f"{float(v):.6g}"


def expected_got(e, a):
    """``"expected E, got A, error D"`` with enough digits that E and A print differently.

    >>> expected_got(1.0, 1.0000001)
    'expected 1, got 1.0000001, error +1e-07'
    """
    e, a = float(e), float(a)
    for digits in range(6, 18):
        te, ta = f"{e:.{digits}g}", f"{a:.{digits}g}"
        if te != ta or e == a or (e != e and a != a):
            break
    return f"expected {te}, got {ta}, error {a - e:+.2g}"


def _worst_index(actual, expected):
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
    bad_nan = np.isnan(a) != np.isnan(e)
    if bad_nan.any():
        return np.unravel_index(int(np.argmax(bad_nan)), a.shape)
    diff = np.where(np.isnan(diff), -1.0, diff)
    return np.unravel_index(int(np.argmax(diff)), a.shape)


def _tap_summary(case, geom, n, o, oy, ox):
    g = o // geom.out_per_group
    first, last = g * geom.in_per_group, (g + 1) * geom.in_per_group - 1
    groups = range(first // geom.in_per_offset_group, last // geom.in_per_offset_group + 1)
    counts, notable = {}, []
    for d in groups:
        for i in range(geom.kh):
            for j in range(geom.kw):
                y, x = _point(case, geom, n, d, i, j, oy, ox)
                rank, text = describe_point(y, x, geom.height, geom.width)
                counts[rank] = counts.get(rank, 0) + 1
                if rank >= 2:
                    where = f"tap ({i},{j})" + (f" of offset group {d}" if geom.offset_groups > 1
                                                 else "")
                    notable.append((rank, f"{where} samples (y, x) = ({_fmt(y)}, {_fmt(x)}): "
                                          f"{text}"))
    total = sum(counts.values())
    summary = ", ".join(f"{counts[r]} {CLASSES[r]}" for r in sorted(counts, reverse=True))
    notable.sort(key=lambda t: -t[0])
    lines = [f"its {total} tap{'s' if total != 1 else ''}: {summary}"]
    lines += [t for _, t in notable[:3]]
    if len(notable) > 3:
        lines.append(f"... and {len(notable) - 3} more taps on or beyond the border")
    return lines


def locate(quantity, actual, expected, case, geom):
    """Lines saying where the worst element of ``quantity`` is and what it samples."""
    idx = _worst_index(actual, expected)
    a = float(np.asarray(actual, np.float64)[idx])
    e = float(np.asarray(expected, np.float64)[idx])
    head = f"{quantity}: worst element "
    value = expected_got(e, a)
    if quantity == "output":
        n, o, oy, ox = (int(v) for v in idx)
        lines = [f"{head}output[n={n}, c={o}, y={oy}, x={ox}] ({value})"]
        return lines + ["  " + t for t in _tap_summary(case, geom, n, o, oy, ox)]
    if quantity in ("offset", "mask"):
        n, ch, oy, ox = (int(v) for v in idx)
        K = geom.taps
        if quantity == "offset":
            kk, comp = divmod(ch, 2)
            what = f"d{'yx'[comp]} of "
        else:
            kk, what = ch, ""
        d, k = divmod(kk, K)
        i, j = divmod(k, geom.kw)
        y, x = _point(case, geom, n, d, i, j, oy, ox)
        _, text = describe_point(y, x, geom.height, geom.width)
        group = f", offset group {d}" if geom.offset_groups > 1 else ""
        return [f"{head}grad_{quantity}[n={n}, ch={ch}, y={oy}, x={ox}] = {what}tap ({i},{j})"
                f"{group} ({value})",
                f"  that tap samples (y, x) = ({_fmt(y)}, {_fmt(x)}): {text}"]
    if quantity == "input":
        n, c, yy, xx = (int(v) for v in idx)
        _, text = describe_point(float(yy), float(xx), geom.height, geom.width)
        return [f"{head}grad_input[n={n}, c={c}, y={yy}, x={xx}] ({value}); "
                f"that pixel is {text}"]
    if quantity == "weight":
        o, c, i, j = (int(v) for v in idx)
        return [f"{head}grad_weight[o={o}, c={c}, tap ({i},{j})] ({value})"]
    if quantity == "bias":
        return [f"{head}grad_bias[{int(idx[0])}] ({value})"]
    return [f"{head}{tuple(int(v) for v in idx)} ({value})"]


@dataclass
class Diagnosis:
    """What is wrong with one failing case."""
    locations: list = field(default_factory=list)
    not_repeatable: str = ""
    computes_in_float32: str = ""
    batch_split: str = ""
    explained_by: list = field(default_factory=list)     # variant keys, within tolerance
    closest: tuple = ()                                   # (key, score before, score after)
    notes: list = field(default_factory=list)
    searched: bool = True                                 # were the variants tried?

    @property
    def causes(self):
        """Keys of every cause found: ``not_repeatable``, ``batch_split``, or the explaining
        variants, or the closest."""
        if self.not_repeatable:
            return ["not_repeatable"]
        if self.computes_in_float32:
            return ["computes_in_float32"]
        if self.batch_split:
            return ["batch_split"]
        if self.explained_by:
            return list(self.explained_by)
        if self.closest:
            return [self.closest[0]]
        return []

    @property
    def cause(self):
        """A short name of the most likely cause, or '' if none was found."""
        causes = self.causes
        return causes[0] if causes else ""

    def lines(self):
        """The diagnosis as indented report lines: where, then why."""
        return self.where_lines() + self.why_lines()

    def where_lines(self):
        """Where the case is wrong (indented lines)."""
        return [f"  {line}" for loc in self.locations for line in loc]

    def why_lines(self):
        """Notes and causes (indented lines); identical for cases with the same diagnosis."""
        from .variants import get_variant
        out = [f"  note: {n}" for n in self.notes]
        if self.not_repeatable:
            out.append(f"  not repeatable: {self.not_repeatable}")
        if self.computes_in_float32:
            out.append(f"  computes in float32: {self.computes_in_float32}")
        if self.batch_split:
            out.append(f"  batch split: {self.batch_split}")
        if self.explained_by:
            first = get_variant(self.explained_by[0])
            out.append(f"  explained by: {first.title}")
            out.append(f"    ({first.detail}; fix: {first.fix})")
            for key in self.explained_by[1:]:
                out.append(f"    also consistent with: {get_variant(key).title}")
        elif self.closest:
            key, before, after = self.closest
            out.append(f"  closest known convention (not within tolerance): "
                       f"{get_variant(key).title} (error {before:.2g} -> {after:.2g})")
        elif self.searched and not (self.batch_split or self.not_repeatable or
                                    self.computes_in_float32):
            out.append("  no known alternative convention explains this")
        return out

    def to_json(self):
        d = {"where": [line.strip() for loc in self.locations for line in loc],
             "cause": self.cause or None, "explained_by": list(self.explained_by),
             "notes": list(self.notes)}
        if self.not_repeatable:
            d["not_repeatable"] = self.not_repeatable
        if self.computes_in_float32:
            d["computes_in_float32"] = self.computes_in_float32
        if self.batch_split:
            d["batch_split"] = self.batch_split
        if self.closest:
            from .measure import _finite
            d["closest"] = {"variant": self.closest[0],
                            "score_reference": _finite(self.closest[1]),
                            "score_variant": _finite(self.closest[2])}
        return d


def _image(case, n):
    sl = lambda a: None if a is None else a[n:n + 1]
    return replace(case, input=sl(case.input), offset=sl(case.offset), mask=sl(case.mask),
                   grad_output=sl(case.grad_output))


def _run_again(case, quantities, rerun):
    """Results of ``rerun`` (forward, backward) on ``case`` (float64 arrays)."""
    forward, backward = rerun
    with quiet():
        r = {"output": np.asarray(forward(case), np.float64)}
        if backward is not None and set(quantities) - {"output"}:
            r.update({k: None if v is None else np.asarray(v, np.float64)
                      for k, v in backward(case).items()})
    return r


def _split_results(case, quantities, rerun):
    """Results of ``rerun`` (forward, backward) applied one image at a time, reassembled."""
    parts = [_run_again(_image(case, n), quantities, rerun) for n in range(case.input.shape[0])]
    result = {}
    for q in quantities:
        if q in ("weight", "bias"):
            result[q] = sum(p[q] for p in parts)
        else:
            result[q] = np.concatenate([p[q] for p in parts])
    return result


def _float32_values(actual, expected, quantities):
    """Whether every ``actual[q]`` is a float32 value while the reference is not."""
    f32 = lambda a: np.asarray(a, np.float64).astype(np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(quantities) and all(
            np.array_equal(f32(actual[q]), np.asarray(actual[q], np.float64), equal_nan=True)
            and not np.array_equal(f32(expected[q]), np.asarray(expected[q], np.float64),
                                   equal_nan=True)
            for q in quantities)


def _within_float32_tier(case, actual, quantities, convention):
    """Whether ``actual`` passes the float32 tier for ``case`` rounded to float32."""
    from .measure import Tolerance
    from .variants import evaluate
    c32 = case.astype(np.float32)
    ref = evaluate(c32, convention)
    tier = Tolerance(np.float32)
    bounds = tier.bounds(c32)
    return all(tier.check(actual[q], ref[q], bounds[q]).ok for q in quantities
               if ref.get(q) is not None)


def diagnose(case, actual, expected, measures, tolerance, convention, bounds=None, rerun=None):
    """Diagnose a failing case.

    Parameters
    ----------
    case : refdcn.testing.Case
        The inputs the implementation received.
    actual, expected : dict
        Results ``{quantity: array}``; ``expected`` from the float64 reference.
    measures : dict
        ``{quantity: Measure}`` of ``actual`` against ``expected``.
    tolerance : refdcn.verify.measure.Tolerance
    convention : str
        The offset-gradient convention of ``expected``.
    bounds : dict, optional
        float32 element bounds (when ``tolerance`` uses them).
    rerun : (forward, backward), optional
        Callables ``forward(case) -> output`` and ``backward(case) -> dict`` (or
        None) that re-run the implementation; enables the repeatability check and
        the batch-split check.

    Returns
    -------
    Diagnosis
    """
    bounds = bounds or {}
    geom = geometry_of(case)
    failing = [q for q, m in measures.items() if not m.ok]
    diag = Diagnosis()
    structural = ("shape", "missing", "not numeric")
    usable = [q for q, m in measures.items() if not m.note.startswith(structural)]
    for q in failing:
        m = measures[q]
        if q not in usable:
            diag.locations.append([f"{q}: {m.note}"])
        else:
            diag.locations.append(locate(q, actual[q], expected[q], case, geom))
    failing = [q for q in failing if q in usable]
    if not failing:
        return diag
    measures = {q: measures[q] for q in usable}

    # 0. a float64 run whose every failing result is a float32 value
    if tolerance.dtype == np.float64 and _float32_values(actual, expected, failing):
        if _within_float32_tier(case, actual, list(measures), convention):
            diag.computes_in_float32 = (
                "every result is exactly a float32 value and within the float32 tier of the "
                "inputs rounded to float32: it computes in float32 whatever it is given")
            return diag
        diag.notes.append("every result is exactly a float32 value: it computes in float32 "
                          "(and differs beyond float32 rounding too)")

    # 1. does an identical call give the same result?  (before any comparison of two runs)
    if rerun is not None:
        try:
            again = _run_again(case, list(measures), rerun)
        except Exception as exc:     # noqa: BLE001 - the implementation's own failure
            diag.notes.append(f"calling it again on the same case failed: {one_line(exc)}")
            return diag
        differs = [q for q in measures if again.get(q) is None or
                   not tolerance.check(again[q], actual[q], bounds.get(q)).ok]
        if differs:
            diag.not_repeatable = (f"an identical call gave a different result "
                                   f"({', '.join(differs)}): an uninitialised or reused buffer, "
                                   f"state kept between calls, or a race")
            return diag

    # 2. does the batch split matter?
    if rerun is not None and case.input.shape[0] > 1:
        try:
            split = _split_results(case, list(measures), rerun)
        except Exception as exc:     # noqa: BLE001 - the implementation's own failure
            diag.notes.append(f"re-running one image at a time failed: {one_line(exc)}")
        else:
            split_ok = all(tolerance.check(split[q], expected[q], bounds.get(q)).ok
                           for q in measures)
            differs = [q for q in measures
                       if not tolerance.check(actual[q], split[q], bounds.get(q)).ok]
            if differs and split_ok:
                diag.batch_split = (f"each image computed alone is right, the batch of "
                                    f"{case.input.shape[0]} computed together is wrong "
                                    f"({', '.join(differs)}): the result depends on how the "
                                    f"batch is split")
            elif differs:
                diag.batch_split = (f"computing the images one at a time changes "
                                    f"{', '.join(differs)} (and is wrong too): the result "
                                    f"depends on how the batch is split")

    # 3. which known alternative convention does the implementation follow?
    diag.explained_by, diag.closest = _match_variants(case, geom, actual, expected, measures,
                                                      failing, tolerance, convention, bounds)
    return diag


#: An approximate variant must be this many times closer than the reference (RMS of the
#: element errors in units of their float32 bounds).  Measured on ONNX's reference evaluator
#: over the conformance cases: 5x to 100x closer to the float32-rounded-coordinates variant.
APPROXIMATE_MARGIN = 3.0


def _rms_ratio(actual, reference, bound):
    """Root mean square of ``|actual - reference| / bound`` over the finite elements."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.abs(np.asarray(actual, np.float64) - reference) / bound
    r = r[np.isfinite(r)]
    return float(np.sqrt(np.mean(r ** 2))) if r.size else 0.0
#: A variant that is not within tolerance is reported as "closest" if it cuts the error 100x.
CLOSEST_FACTOR = 1e-2


def _match_variants(case, geom, actual, expected, measures, failing, tolerance, convention,
                    bounds):
    """``(explained_by, closest)``: the variants the implementation agrees with.

    Exact variants must agree within ``tolerance`` on every quantity they
    predict (and predict at least one failing quantity).  Approximate ones
    (float32 coordinates) must agree within the derived float32 bounds and be
    :data:`APPROXIMATE_MARGIN` times closer than the reference on the failing
    quantities.
    """
    from .measure import Tolerance
    exact, approx, best = [], [], None
    loose = loose_bounds = None
    for variant in VARIANTS:
        try:
            if not variant.applies(case, geom):
                continue
            predicted = variant.predict(case, geom, convention)
        except Exception:            # noqa: BLE001 - a variant that cannot model this case
            continue
        judged = [q for q in measures if predicted.get(q) is not None]
        if not any(q in failing for q in judged):
            continue
        vm = {q: tolerance.check(actual[q], predicted[q], bounds.get(q)) for q in judged}
        if all(m.ok for m in vm.values()):
            exact.append(variant.key)
            continue
        if variant.approximate:
            if loose is None:
                loose = Tolerance(np.float32, strict=True)
                loose_bounds = loose.bounds(case)
            lv = {q: loose.check(actual[q], predicted[q], loose_bounds[q]) for q in judged}
            if all(m.ok for m in lv.values()) and all(
                    _rms_ratio(actual[q], predicted[q], loose_bounds[q]) * APPROXIMATE_MARGIN
                    <= _rms_ratio(actual[q], expected[q], loose_bounds[q])
                    for q in judged if q in failing):
                approx.append(variant.key)
                continue
        # how much closer than the reference does it get on the failing quantities?
        if all(vm[q].ok for q in judged if q not in failing):
            before = max(measures[q].score for q in failing if q in vm)
            after = max(vm[q].score for q in failing if q in vm)
            if np.isfinite(after) and after <= CLOSEST_FACTOR * before and \
                    (best is None or after < best[2]):
                best = (variant.key, before, after)
    explained = exact + approx
    return explained, (() if explained or best is None else best)
