"""``refdcn verify --op dcnv3|dcnv4``: check a DCNv3 / DCNv4 implementation and say what is wrong.

Runs an implementation on the cases of :mod:`refdcn.conformance_dcnv34`,
compares its output and gradients with the float64 loop reference, and, for a
failing case, says where the worst element is, what its taps sample, and which
known mistake (:data:`VARIANTS`) reproduces the implementation's results:

=====================  ===========================================================
key                    what the implementation does differently
=====================  ===========================================================
``yx_pairs``           reads (dy, dx) pairs (torchvision's order) instead of (dx, dy)
``row_major_taps``     numbers the taps row-major (``t = i*kw + j``) instead of x-major
``softmax_applied``    applies a softmax over the K weights (DCNv3's *module* does;
                       the op does not, and DCNv4 has none)
``scale_offsets_only`` multiplies only the offsets by ``offset_scale``, not the taps
``scale_ignored``      ignores ``offset_scale``
``packed_no_padding``  DCNv4: takes the per-pixel stride of ``offset_mask`` to be
                       ``3*G*K``, ignoring the padding to a multiple of 8
``convention``         torchvision's offset gradient at exactly -1 (DCNv3/v4: 0)
=====================  ===========================================================

Implementations: ``refdcn:BACKEND`` (``reference``, ``numba``),
``internimage-pytorch`` (the ``grid_sample`` composition of
:mod:`refdcn.dcnv34.torch_composition`, gradients by autograd) or
``package.module:function`` taking NumPy arrays in the originals' argument
order::

    dcnv3: f(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
             dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)
    dcnv4: f(input, offset_mask, kernel_h, ..., offset_scale, remove_center)

and optionally ``--backward`` ``g(grad_output, <the same arguments>)`` returning
``(grad_input, grad_offset, grad_mask)`` (dcnv3) or ``(grad_input,
grad_offset_mask)`` (dcnv4), or a dict with those keys (without ``grad_``).
"""

from dataclasses import dataclass, field
import json
import time
import warnings

import numpy as np

from .. import conformance_dcnv34 as conformance
from ..dcnv34 import api, geometry
from ..dcnv34.tolerances import float32_bounds, pack_bounds
from ..tolerances import FLOAT64_RTOL, relative_error
from .adapters import AdapterUnavailable, _load_callable, to_numpy
from .diagnosis import describe_point

__all__ = ["VARIANTS", "resolve", "verify", "format_text", "format_json", "QUANTITIES"]

#: Quantities compared, per operator.
QUANTITIES = {"dcnv3": ("output", "input", "offset", "mask"),
              "dcnv4": ("output", "input", "offset_mask")}

#: Agreement a variant must reach to explain a failure (float32: within float32 rounding).
MATCH_RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}


# ------------------------------------------------------------------ implementations
@dataclass
class Implementation:
    """``forward(case, op)`` -> output; ``backward(case, op)`` -> dict of gradients or None."""
    name: str
    description: str
    forward: object
    backward: object = None


def _positional(case, op):
    a = case.attrs
    head = (case.input_for_call(), case.offset, case.mask) if op == "dcnv3" else \
        (case.input_for_call(), case.packed())
    return head + tuple(a[k] for k in conformance.ATTRIBUTES)


def _grads(result, op):
    keys = QUANTITIES[op][1:]
    if isinstance(result, dict):
        return {k: to_numpy(result.get(k, result.get(f"grad_{k}")), f"grad_{k}") for k in keys}
    result = tuple(result)
    if len(result) != len(keys):
        raise ValueError(f"the gradient callable returned {len(result)} arrays; expected "
                         f"{len(keys)}: " + ", ".join(f"grad_{k}" for k in keys))
    return {k: to_numpy(v, f"grad_{k}") for k, v in zip(keys, result)}


def resolve(spec, op, backward=None):
    """The :class:`Implementation` named by ``spec`` for operator ``op`` (AdapterUnavailable)."""
    if op not in QUANTITIES:
        raise AdapterUnavailable(f"--op must be one of {list(QUANTITIES)}; got {op!r}")
    if spec.startswith("refdcn:") or spec in api.BACKENDS:
        name = spec.split(":", 1)[-1]
        try:
            api.get_backend(name)
        except Exception as exc:      # unknown or unavailable: one line
            raise AdapterUnavailable(str(exc)) from None
        fwd, bwd = (api.dcnv3, api.dcnv3_backward) if op == "dcnv3" else \
            (api.dcnv4, api.dcnv4_backward)

        def forward(case, op, name=name):
            return fwd(*_positional(case, op), backend=name)

        def grads(case, op, convention, name=name):
            return bwd(case.grad_output, *_positional(case, op), backend=name,
                       convention=convention)._asdict()
        return Implementation(f"refdcn:{name}", f"refdcn's {name} backend", forward, grads)
    if spec in ("internimage-pytorch", "torch-composition"):
        try:
            from ..dcnv34 import torch_composition as tc
            import torch  # noqa: F401
        except ImportError as exc:
            raise AdapterUnavailable(f"internimage-pytorch needs torch ({exc}): pip install "
                                     f"torch") from None
        run = tc.run_dcnv3 if op == "dcnv3" else tc.run_dcnv4
        arrays = (lambda c: (c.input, c.offset, c.mask)) if op == "dcnv3" else \
            (lambda c: (c.input, c.packed()))

        def forward(case, op):
            return run(*arrays(case), **case.attrs)

        def grads(case, op, convention):
            _, g = run(*arrays(case), case.grad_output, **case.attrs)
            return dict(zip(QUANTITIES[op][1:], g))
        return Implementation(spec, "InternImage's dcnv3_core_pytorch grid_sample composition "
                              "(rewritten in refdcn.dcnv34.torch_composition), autograd", forward,
                              grads)
    if ":" in spec:
        func = _load_callable(spec, "IMPL")
        grad = _load_callable(backward, "--backward") if backward else None

        def forward(case, op):
            return to_numpy(func(*_positional(case, op)), "the output")

        def grads(case, op, convention):
            return _grads(grad(case.grad_output, *_positional(case, op)), op)
        return Implementation(spec, f"Python callable {spec}" + (
            f", gradients from {backward}" if backward else ""), forward,
            grads if grad else None)
    raise AdapterUnavailable(f"unknown implementation {spec!r} for --op {op}; use refdcn:numba, "
                             f"refdcn:reference, internimage-pytorch or package.module:function")


# ------------------------------------------------------------------ variants
def _swap_pairs(case):
    off = case.offset.reshape(case.offset.shape[:3] + (-1, 2))[..., ::-1]
    return np.ascontiguousarray(off).reshape(case.offset.shape)


def _tap_permutation(case):
    """``perm[t_xmajor] = t_rowmajor`` of the same kernel position."""
    a = case.attrs
    xmajor = geometry.tap_order(a["kernel_h"], a["kernel_w"], a["remove_center"])
    rowmajor = sorted(xmajor)
    return np.array([rowmajor.index(p) for p in xmajor])


def _permute_taps(array, case, per_tap):
    n, ho, wo, _ = array.shape
    g = case.attrs["group"]
    a = array.reshape(n, ho, wo, g, case.taps, per_tap)[:, :, :, :, _tap_permutation(case)]
    return np.ascontiguousarray(a).reshape(array.shape)


def _unpermute_taps(array, case, per_tap):
    n, ho, wo, _ = array.shape
    g = case.attrs["group"]
    out = np.empty((n, ho, wo, g, case.taps, per_tap))
    out[:, :, :, :, _tap_permutation(case)] = array.reshape(n, ho, wo, g, case.taps, per_tap)
    return out.reshape(array.shape)


def _base(case):
    """``tap*dilation - centre`` per tap and component, laid out like ``offset``."""
    a = case.attrs
    ch = (a["dilation_h"] * (a["kernel_h"] - 1)) // 2
    cw = (a["dilation_w"] * (a["kernel_w"] - 1)) // 2
    taps = geometry.tap_order(a["kernel_h"], a["kernel_w"], a["remove_center"])
    base = np.array([[j * a["dilation_w"] - cw, i * a["dilation_h"] - ch] for i, j in taps],
                    dtype=np.float64)
    return np.tile(base.reshape(-1), a["group"])


def _evaluate(case, convention="mmcv", offset=None, mask=None, softmax=False):
    """Output and DCNv3 gradients of ``case`` with replaced offset/mask (float64, fast backend)."""
    off = case.offset if offset is None else offset
    msk = case.mask if mask is None else mask
    backend = "auto"
    n, ho, wo, _ = msk.shape
    g, k = case.attrs["group"], case.taps
    used = api.tap_softmax(msk.reshape(n, ho, wo, g, k)).reshape(msk.shape) if softmax else msk
    out = api.dcnv3(case.input, off, used, **case.attrs, backend=backend)
    gr = api.dcnv3_backward(case.grad_output, case.input, off, used, **case.attrs,
                            backend=backend, convention=convention)
    gmask = gr.mask
    if softmax:
        s = used.reshape(n, ho, wo, g, k)
        gmask = api.tap_softmax_backward(s, gr.mask.reshape(s.shape)).reshape(msk.shape)
    return {"output": out, "input": gr.input, "offset": gr.offset, "mask": gmask}


def _predict_yx(case, convention):
    r = _evaluate(case, convention, offset=_swap_pairs(case))
    r["offset"] = r["offset"].reshape(r["offset"].shape[:3] + (-1, 2))[..., ::-1].reshape(
        case.offset.shape)
    return r


def _predict_row_major(case, convention):
    r = _evaluate(case, convention, offset=_permute_taps(case.offset, case, 2),
                  mask=_permute_taps(case.mask, case, 1))
    r["offset"] = _unpermute_taps(r["offset"], case, 2)
    r["mask"] = _unpermute_taps(r["mask"], case, 1)
    return r


def _predict_scale(case, convention, which):
    s = case.attrs["offset_scale"]
    base = _base(case)
    if which == "offsets_only":     # c + (b + D')s = c + b + Ds  ->  D' = D + b(1/s - 1)
        off = case.offset + base * (1 / s - 1)
    else:                            # c + (b + D')s = c + b + D   ->  D' = (b + D)/s - b
        off = (base + case.offset) / s - base
    r = _evaluate(case, convention, offset=off)
    if which != "offsets_only":      # chain rule: dD'/dD = 1/s (offsets_only: 1)
        r["offset"] = r["offset"] / s
    return r


def _predict_no_padding(case, convention):
    packed = case.packed()
    n, ho, wo, width = packed.shape
    k3 = 3 * case.attrs["group"] * case.taps
    flat = packed.reshape(-1)[:n * ho * wo * k3].reshape(n, ho, wo, case.attrs["group"],
                                                         3 * case.taps)
    off = flat[..., :2 * case.taps].reshape(case.offset.shape)
    msk = flat[..., 2 * case.taps:].reshape(case.mask.shape)
    return {"output": _evaluate(case, convention, offset=off, mask=msk)["output"]}


@dataclass(frozen=True)
class Variant:
    """A known mistake: ``applies(case, op)``; ``predict(case, convention)`` -> DCNv3 quantities."""
    key: str
    title: str
    fix: str
    applies: object
    predict: object
    gradients_only: bool = False


def _has_border_landings(case):
    return bool(np.any(_evaluate(case, "mmcv")["offset"] != _evaluate(case, "torchvision")[
        "offset"]))


VARIANTS = [
    Variant("yx_pairs", "reads (dy, dx) offset pairs (torchvision's order)",
            "DCNv3/v4 store (dx, dy): the column offset first",
            lambda c, op: True, _predict_yx),
    Variant("row_major_taps", "numbers the taps row-major (t = i*kw + j)",
            "DCNv3/v4 taps are x-major: the outer loop runs over the kernel width, t = j*kh + i",
            lambda c, op: c.attrs["kernel_h"] > 1 and c.attrs["kernel_w"] > 1,
            _predict_row_major),
    Variant("softmax_applied", "applies a softmax over the K weights",
            "the op uses the weights as given (DCNv3's module applies the softmax before the op; "
            "DCNv4 has none)", lambda c, op: True,
            lambda c, conv: _evaluate(c, conv, softmax=True)),
    Variant("scale_offsets_only", "multiplies only the offsets by offset_scale",
            "offset_scale scales the taps and the offsets about the kernel centre: "
            "c + (tap*dilation - centre + offset) * offset_scale",
            lambda c, op: c.attrs["offset_scale"] != 1,
            lambda c, conv: _predict_scale(c, conv, "offsets_only")),
    Variant("scale_ignored", "ignores offset_scale",
            "apply offset_scale to the taps and the offsets about the kernel centre",
            lambda c, op: c.attrs["offset_scale"] != 1,
            lambda c, conv: _predict_scale(c, conv, "ignored")),
    Variant("packed_no_padding", "takes offset_mask's per-pixel stride to be 3*G*K",
            "the packed tensor has C_pad = ceil(3*G*K/8)*8 channels per pixel; skip the padding",
            lambda c, op: op == "dcnv4" and c.packed().shape[-1] > 3 * c.attrs["group"] * c.taps,
            _predict_no_padding),
    Variant("convention", "gives torchvision's offset gradient at exactly -1",
            "DCNv3/v4 gate the backward with -1 < y < H and -1 < x < W: the offset gradient of "
            "a sample on y = -1 or x = -1 is 0", lambda c, op: _has_border_landings(c),
            lambda c, conv: _evaluate(c, "torchvision" if conv == "mmcv" else "mmcv"),
            gradients_only=True),
]


def _to_op(prediction, case, op):
    """DCNv3-shaped predictions -> the quantities of ``op``."""
    if op == "dcnv3" or "offset" not in prediction:
        return {k: v for k, v in prediction.items() if k in QUANTITIES[op]}
    n, ho, wo, width = case.packed().shape
    g, k = case.attrs["group"], case.taps
    packed = np.zeros((n, ho, wo, width))
    per = np.concatenate([prediction["offset"].reshape(n, ho, wo, g, 2 * k),
                          prediction["mask"].reshape(n, ho, wo, g, k)], axis=-1)
    packed[..., :3 * g * k] = per.reshape(n, ho, wo, -1)
    return {"output": prediction["output"], "input": prediction["input"], "offset_mask": packed}


# ------------------------------------------------------------------ diagnosis
def _worst(actual, expected):
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    nan = np.isnan(a) != np.isnan(e)
    if nan.any():
        return np.unravel_index(int(np.argmax(nan)), a.shape)
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isnan(a - e), -1.0, np.abs(a - e))
    return np.unravel_index(int(np.argmax(diff)), a.shape)


def _point(case, n, oy, ox, g, t):
    a = case.attrs
    i, j = geometry.tap_order(a["kernel_h"], a["kernel_w"], a["remove_center"])[t]
    off = case.offset.reshape(case.offset.shape[:3] + (a["group"], case.taps, 2))
    from ..bilinear import scaled_sampling_point
    ch = (a["dilation_h"] * (a["kernel_h"] - 1)) // 2
    cw = (a["dilation_w"] * (a["kernel_w"] - 1)) // 2
    y = scaled_sampling_point(oy, a["stride_h"], a["pad_h"], i, a["dilation_h"],
                              float(off[n, oy, ox, g, t, 1]), ch, a["offset_scale"])
    x = scaled_sampling_point(ox, a["stride_w"], a["pad_w"], j, a["dilation_w"],
                              float(off[n, oy, ox, g, t, 0]), cw, a["offset_scale"])
    return (i, j), y, x


def where(quantity, actual, expected, case, op):
    """Lines: the worst element of ``quantity`` and what its taps sample."""
    idx = tuple(int(v) for v in _worst(actual, expected))
    a = float(np.asarray(actual, np.float64)[idx])
    e = float(np.asarray(expected, np.float64)[idx])
    h, w = case.input.shape[1:3]
    G, D, K = case.attrs["group"], case.attrs["group_channels"], case.taps
    head = f"{quantity}: worst element {quantity}[{', '.join(map(str, idx))}] " \
           f"(expected {e:.6g}, got {a:.6g})"
    lines = [head]
    if quantity == "output":
        n, oy, ox, c = idx
        g = c // D
        notable = []
        for t in range(K):
            tap, y, x = _point(case, n, oy, ox, g, t)
            rank, text = describe_point(y, x, h, w)
            if rank >= 2:
                notable.append(f"  tap {t} {tap} of group {g} samples (y, x) = ({y:.6g}, {x:.6g})"
                               f": {text}")
        lines.append(f"  group {g}: {K} taps, {len(notable)} on or beyond the border")
        lines += notable[:3]
    elif quantity in ("offset", "mask", "offset_mask"):
        n, oy, ox, ch = idx
        if quantity == "offset_mask":
            g, r = divmod(ch, 3 * K)
            if ch >= 3 * G * K:
                return lines + [f"  channel {ch} is padding (>= 3*G*K = {3 * G * K})"]
            t, comp = (r // 2, "dx dy".split()[r % 2]) if r < 2 * K else (r - 2 * K, "weight")
        elif quantity == "offset":
            g, r = divmod(ch, 2 * K)
            t, comp = r // 2, "dx dy".split()[r % 2]
        else:
            (g, t), comp = divmod(ch, K), "weight"
        tap, y, x = _point(case, n, oy, ox, g, t)
        lines.append(f"  {comp} of tap {t} {tap} of group {g}: samples (y, x) = "
                     f"({y:.6g}, {x:.6g}): {describe_point(y, x, h, w)[1]}")
    return lines


def explain(case, op, actual, convention, dtype):
    """Keys of the variants that reproduce every quantity ``actual`` has and they predict."""
    found = []
    for v in VARIANTS:
        if not v.applies(case, op):
            continue
        pred = _to_op(v.predict(case, convention), case, op)
        keys = [q for q in pred if q in actual and (q != "output" or not v.gradients_only)]
        if v.gradients_only and not [q for q in keys if q != "output"]:
            continue
        if keys and all(relative_error(actual[q], pred[q]) <= MATCH_RTOL[dtype] for q in keys):
            found.append(v.key)
    return found


# ------------------------------------------------------------------ running
@dataclass
class CaseResult:
    name: str
    catches: str
    status: str
    errors: dict = field(default_factory=dict)
    where: list = field(default_factory=list)
    causes: list = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    implementation: str
    description: str
    op: str
    dtype: str
    convention: str
    gradients: bool
    results: list = field(default_factory=list)

    def exit_code(self):
        return 0 if all(r.status == "pass" for r in self.results) else 1


def _bounds(case, op):
    b = float32_bounds(case.input, case.offset, case.mask, case.grad_output, case.attrs)
    if op == "dcnv4":
        b = pack_bounds(b, case.packed().shape, case.attrs["group"], case.taps)
    return b


def verify(impl, op, cases=None, dtype=np.float64, convention="mmcv", rtol=None, gradients=True,
           expected=None, bounds=None):
    """Run ``impl`` on ``cases`` (default: all) as ``op`` -> :class:`Report`.

    Pass criterion per quantity: float64, normwise relative error <= ``rtol``
    (default :data:`refdcn.tolerances.FLOAT64_RTOL`); float32 (without
    ``rtol``), every element within the derived bound of
    :mod:`refdcn.dcnv34.tolerances`.  ``expected(name)`` and ``bounds(name)``
    replace the loop reference's values and the derived bounds (golden
    vectors read from files).
    """
    dtype = np.dtype(dtype)
    cases = conformance.CASES if cases is None else cases
    grads = gradients and impl.backward is not None
    report = Report(impl.name, impl.description, op, dtype.name, convention, grads)
    for cc in cases:
        t0 = time.perf_counter()
        case = cc.build().astype(dtype)
        exp = expected(cc.name) if expected else \
            conformance.expected(cc.name, op, convention, dtype.name)
        actual = {}
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                actual["output"] = impl.forward(case, op)
                if grads:
                    actual.update(impl.backward(case, op, convention))
        except Exception as exc:     # noqa: BLE001 - the implementation's failure is a result
            text = (str(exc).splitlines() or [""])[0][:200]
            report.results.append(CaseResult(cc.name, cc.catches, "error",
                                             error=f"{type(exc).__name__}: {text}",
                                             seconds=time.perf_counter() - t0))
            continue
        limits = None
        if dtype == np.float32 and rtol is None:
            limits = bounds(cc.name) if bounds else _bounds(case.astype(np.float64), op)
        result = CaseResult(cc.name, cc.catches, "pass")
        for q in QUANTITIES[op]:
            if q not in actual:
                continue
            a = np.asarray(actual[q])
            if a.shape != exp[q].shape:
                result.errors[q] = float("inf")
                result.status = "fail"
                result.where.append(f"{q}: shape {a.shape}, expected {exp[q].shape}")
                continue
            err = relative_error(a, exp[q])
            result.errors[q] = err
            if limits is not None:
                ok = bool(np.all(np.abs(a.astype(np.float64) - exp[q]) <= limits[q]))
            else:
                ok = err <= (FLOAT64_RTOL if rtol is None else rtol)
            if not ok:
                result.status = "fail"
                result.where += where(q, a, exp[q], case, op)
        if result.status == "fail":
            try:
                result.causes = explain(case.astype(np.float64), op, actual, convention, dtype)
            except Exception as exc:    # noqa: BLE001 - never let the diagnosis crash the report
                result.where.append(f"(the diagnosis failed: {type(exc).__name__}: {exc})")
            if cc.name == "channels_last_view" and not result.causes:
                result.where.append("this case hands over a non-contiguous channels-last view: "
                                    "an implementation that assumes contiguous memory fails "
                                    "only here (use np.ascontiguousarray / .contiguous())")
        result.seconds = time.perf_counter() - t0
        report.results.append(result)
    return report


_BY_KEY = {v.key: v for v in VARIANTS}


def format_text(report):
    """Human-readable report: one row per case, then the diagnosis of each failure."""
    qs = QUANTITIES[report.op] if report.gradients else ("output",)
    lines = [f"refdcn verify --op {report.op} {report.implementation}: {report.description}",
             f"{len(report.results)} cases, {report.dtype}, "
             + (f"forward + gradients ({report.convention} offset-gradient convention)"
                if report.gradients else "forward only"), "",
             f"{'case':<28} {'result':<6} " + " ".join(f"{q:<11}" for q in qs)]
    for r in report.results:
        row = f"{r.name:<28} {r.status.upper():<6} "
        row += r.error if r.status == "error" else " ".join(
            f"{r.errors[q]:<11.1e}" if q in r.errors else f"{'-':<11}" for q in qs)
        lines.append(row.rstrip())
    for r in report.results:
        if r.status != "fail":
            continue
        lines += ["", f"FAIL {r.name}: {r.catches}"] + ["  " + t for t in r.where]
        for key in r.causes:
            v = _BY_KEY[key]
            lines.append(f"  explained by: the implementation {v.title} (fix: {v.fix})")
        if not r.causes:
            lines.append("  not explained by any known DCNv3/DCNv4 mistake")
    passed = sum(r.status == "pass" for r in report.results)
    lines += ["", f"{passed}/{len(report.results)} cases pass"]
    return "\n".join(lines)


def format_json(report):
    return json.dumps({
        "implementation": report.implementation, "description": report.description,
        "op": report.op, "dtype": report.dtype, "convention": report.convention,
        "gradients": report.gradients, "exit_code": report.exit_code(),
        "cases": [{"name": r.name, "catches": r.catches, "status": r.status,
                   "relative_errors": r.errors, "where": r.where, "causes": r.causes,
                   "error": r.error, "seconds": round(r.seconds, 4)} for r in report.results],
    }, indent=2)


# ------------------------------------------------------------------ command line
def run_command(args):
    """``refdcn verify --op dcnv3|dcnv4 ...`` (the options of :mod:`refdcn.commands.verify`)."""
    from ..cli import UsageError
    op = args.op
    if getattr(args, "list", False):
        print(f"DCNv3/DCNv4 conformance cases (--op {op}):")
        for c in conformance.CASES:
            print(f"  {c.name:<28} {c.catches}")
        print("implementations: refdcn:numba, refdcn:reference, internimage-pytorch, "
              "package.module:function")
        print("diagnosed mistakes: " + ", ".join(v.key for v in VARIANTS))
        return 0
    if not args.impl:
        raise UsageError(f"IMPL is required (try: refdcn verify --op {op} refdcn:numba)")
    cases = conformance.select(args.case)
    if not cases:
        raise UsageError(f"no DCNv3/DCNv4 case matches {args.case}; known: "
                         f"{', '.join(conformance.names())}")
    if args.rtol is not None and not args.rtol >= 0:
        raise UsageError(f"--rtol must be a non-negative number; got {args.rtol}")
    try:
        impl = resolve(args.impl, op, args.backward)
    except AdapterUnavailable as exc:
        raise UsageError(str(exc)) from None
    report = verify(impl, op, cases, np.dtype(args.dtype), args.convention or "mmcv", args.rtol,
                    gradients=not args.forward_only)
    print(format_json(report) if args.json else format_text(report))
    return report.exit_code()
