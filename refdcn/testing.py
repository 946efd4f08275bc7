"""Helpers shared by the tests, notebooks, benchmarks and the verifier.

* :class:`Case` / :func:`make_case`: reproducible inputs of a deformable convolution;
* :func:`numerical_gradient`: central finite differences with an upstream gradient;
* :func:`case_strategy`: a hypothesis strategy of small cases (needs hypothesis);
* :func:`compare`: every quantity of two results, with the tolerances of
  :mod:`refdcn.tolerances`.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from .geometry import as_pair, output_size
from .tolerances import FLOAT64_RTOL, float32_bounds, relative_error

__all__ = ["Case", "make_case", "numerical_gradient", "case_strategy", "compare",
           "reference_results"]

OFFSET_KINDS = ("random", "gridsafe", "integer", "zero")


@dataclass
class Case:
    """Inputs and attributes of one deformable convolution.

    Arrays: ``input`` (N, C_in, H, W), ``offset`` (N, 2*D*kh*kw, H_out, W_out),
    ``weight`` (C_out, C_in/groups, kh, kw), ``bias`` (C_out,) or None,
    ``mask`` (N, D*kh*kw, H_out, W_out) or None, ``grad_output``
    (N, C_out, H_out, W_out).  ``stride``, ``padding``, ``dilation`` are pairs.
    """
    input: np.ndarray
    offset: np.ndarray
    weight: np.ndarray
    bias: object
    mask: object
    grad_output: np.ndarray
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    name: str = ""
    meta: dict = field(default_factory=dict)

    def args(self):
        """Positional arguments of :func:`refdcn.deform_conv2d`."""
        return (self.input, self.offset, self.weight, self.bias, self.stride, self.padding,
                self.dilation, self.mask)

    def astype(self, dtype):
        """A copy with every array converted to ``dtype``."""
        def conv(a):
            if a is None:
                return None
            with np.errstate(over="ignore"):      # 1e300 -> inf in float32 is intended
                return np.asarray(a).astype(dtype)
        return replace(self, input=conv(self.input), offset=conv(self.offset),
                       weight=conv(self.weight), bias=conv(self.bias), mask=conv(self.mask),
                       grad_output=conv(self.grad_output))

    def describe(self):
        kh, kw = self.weight.shape[2:]
        n, c, h, w = self.input.shape
        groups = c // self.weight.shape[1]
        d = self.offset.shape[1] // (2 * kh * kw)
        return (f"N={n} C_in={c} C_out={self.weight.shape[0]} {h}x{w} k=({kh},{kw}) "
                f"s={self.stride} p={self.padding} d={self.dilation} groups={groups} "
                f"offset_groups={d} mask={self.mask is not None} bias={self.bias is not None}")


def make_case(seed=0, batch=2, in_channels=4, out_channels=4, height=5, width=6, kernel=(3, 2),
              stride=1, padding=1, dilation=1, groups=2, offset_groups=2, modulated=True,
              bias=True, offsets="random", offset_scale=2.0, dtype=np.float64, name=""):
    """A reproducible case with standard-normal input, weight, bias and upstream gradient.

    Parameters
    ----------
    offsets : {"random", "gridsafe", "integer", "zero"}
        ``random``: N(0, offset_scale^2); ``gridsafe``: integer + U(0.1, 0.9), so
        that no sampling coordinate lies within 0.1 of a grid line (finite
        differences with steps < 0.1 never cross a kink); ``integer``: integers
        in [-offset_scale, offset_scale] (samples exactly on grid lines, -1 and H);
        ``zero``: all zeros.
    modulated : bool
        With a mask drawn from U(0, 1) (DCNv2); without: DCNv1.
    """
    if offsets not in OFFSET_KINDS:
        raise ValueError(f"offsets must be one of {OFFSET_KINDS}; got {offsets!r}")
    rng = np.random.default_rng(seed)
    kh, kw = as_pair(kernel, "kernel", 1)
    stride, padding, dilation = (as_pair(stride, "stride", 1), as_pair(padding, "padding", 0),
                                 as_pair(dilation, "dilation", 1))
    ho, wo = output_size(height, width, (kh, kw), stride, padding, dilation)
    off_shape = (batch, 2 * offset_groups * kh * kw, ho, wo)
    if offsets == "random":
        off = rng.normal(scale=offset_scale, size=off_shape)
    elif offsets == "gridsafe":
        r = int(np.ceil(offset_scale))
        off = rng.integers(-r, r + 1, size=off_shape) + rng.uniform(0.1, 0.9, size=off_shape)
    elif offsets == "integer":
        r = int(np.ceil(offset_scale))
        off = rng.integers(-r, r + 1, size=off_shape).astype(np.float64)
    else:
        off = np.zeros(off_shape)
    case = Case(
        input=rng.normal(size=(batch, in_channels, height, width)),
        offset=off,
        weight=rng.normal(size=(out_channels, in_channels // groups, kh, kw)),
        bias=rng.normal(size=out_channels) if bias else None,
        mask=rng.uniform(size=(batch, offset_groups * kh * kw, ho, wo)) if modulated else None,
        grad_output=rng.normal(size=(batch, out_channels, ho, wo)),
        stride=stride, padding=padding, dilation=dilation, name=name)
    return case.astype(dtype)


def numerical_gradient(f, array, grad_output, eps=1e-6):
    """Central finite differences of ``sum(f() * grad_output)`` with respect to ``array``.

    ``f`` takes no arguments and reads ``array``, which is perturbed in place one
    element at a time (and restored).  Using a random ``grad_output`` rather
    than ``sum()`` makes a backward that reads the upstream gradient at wrong
    positions fail.
    """
    grad = np.zeros_like(array, dtype=np.float64)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for idx in range(flat.size):
        old = flat[idx]
        flat[idx] = old + eps
        plus = float(np.sum(f() * grad_output))
        flat[idx] = old - eps
        minus = float(np.sum(f() * grad_output))
        flat[idx] = old
        gflat[idx] = (plus - minus) / (2 * eps)
    return grad


def reference_results(case, convention="torchvision", backend="reference"):
    """Output and five gradients of ``case`` from the float64 reference, as a dict."""
    from . import api
    c64 = case.astype(np.float64)
    out = api.deform_conv2d(*c64.args(), backend=backend)
    g = api.deform_conv2d_backward(c64.grad_output, *c64.args(), backend=backend,
                                   convention=convention)
    return {"output": out, **g._asdict()}


def all_results(case, backend, convention="torchvision"):
    """Output and five gradients of ``case`` on ``backend`` in the case's own dtype, as a list
    of arrays (None for an absent mask or bias gradient); floating-point warnings silenced
    (non-finite cases)."""
    from . import api
    with np.errstate(all="ignore"):
        out = api.deform_conv2d(*case.args(), backend=backend)
        grads = api.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend,
                                           convention=convention)
    return [np.asarray(out)] + [None if g is None else np.asarray(g) for g in grads]


def compare(actual, expected, case=None, dtype=np.float64):
    """Compare result dicts; returns ``{quantity: (ok, error, allowed)}``.

    float64: the normwise relative error must be <= ``FLOAT64_RTOL``.
    float32: every element must be within :func:`refdcn.tolerances.float32_bounds`
    of the float64 reference (``case`` is needed for those bounds); ``error`` is
    the largest ratio |actual - expected| / bound, ``allowed`` is 1.
    """
    report = {}
    bounds = None
    if np.dtype(dtype) != np.float64:
        c = case.astype(np.float64)
        bounds = float32_bounds(c.grad_output, *c.args())
    for q, exp in expected.items():
        act = actual.get(q)
        if exp is None or act is None:
            report[q] = (exp is None and act is None, 0.0, 0.0)
            continue
        act = np.asarray(act, dtype=np.float64)
        if act.shape != exp.shape:
            report[q] = (False, float("inf"), 0.0)
        elif bounds is None:
            err = relative_error(act, exp)
            report[q] = (err <= FLOAT64_RTOL, err, FLOAT64_RTOL)
        else:
            with np.errstate(invalid="ignore"):
                ratio = np.abs(act - exp) / bounds[q]
            same_nan = (np.isnan(act) == np.isnan(exp)).all()
            worst = float(np.nanmax(ratio)) if ratio.size and not np.isnan(ratio).all() else 0.0
            report[q] = (bool(same_nan and worst <= 1.0), worst, 1.0)
    return report


def case_strategy(max_batch=3, max_size=6, modulated=None):
    """Hypothesis strategy of small cases that always have groups and offset groups > 1.

    Kernels are non-square (kh != kw), and stride, padding and dilation vary
    independently per axis.
    """
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        groups = draw(st.sampled_from([1, 2, 3]))
        offset_groups = draw(st.sampled_from([2, 3]) if groups == 1 else st.sampled_from([1, 2, 3]))
        per = draw(st.integers(1, 2))
        in_channels = groups * offset_groups * per
        out_channels = groups * draw(st.integers(1, 2))
        kh = draw(st.integers(1, 3))
        kw = draw(st.integers(1, 3).filter(lambda v: v != kh))
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), max_size))
        w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), max_size))
        return make_case(
            seed=draw(st.integers(0, 2**31)), batch=draw(st.integers(1, max_batch)),
            in_channels=in_channels, out_channels=out_channels, height=h, width=w,
            kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation, groups=groups,
            offset_groups=offset_groups,
            modulated=draw(st.booleans()) if modulated is None else modulated,
            bias=draw(st.booleans()),
            offsets=draw(st.sampled_from(["random", "random", "integer"])))
    return cases()
