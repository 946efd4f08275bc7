"""Named conformance cases: inputs, attributes and what each one catches.

Each :class:`ConformanceCase` builds a :class:`refdcn.testing.Case`; the
expected output and the five gradients (both conventions) come from the float64
loop reference (:func:`expected`), cached per process.

>>> from refdcn import conformance
>>> [c.name for c in conformance.CASES][:2]
['onnx_with_padding', 'onnx_without_padding']
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from .testing import Case, make_case, reference_results

__all__ = ["ConformanceCase", "CASES", "get_case", "expected", "select"]


@dataclass(frozen=True)
class ConformanceCase:
    """A named case: ``build()`` returns its float64 :class:`~refdcn.testing.Case`."""
    name: str
    catches: str
    build: Callable[[], Case]
    small: bool = True      # small enough to also write the expected values by hand


def _onnx_base(out_hw, offset_groups=1):
    # channel 0 is arange(9), channel 1 (if any) is arange(9) reversed
    x = np.stack([np.arange(9.0), np.arange(8.0, -1, -1)][:offset_groups]).reshape(
        1, offset_groups, 3, 3)
    w = np.ones((1, offset_groups, 2, 2))
    off = np.zeros((1, 8 * offset_groups) + out_hw)
    return x, w, off


def _onnx_with_padding():
    x, w, off = _onnx_base((4, 4))
    off[0, 0, 0, 0] = 0.5          # dy of tap (0, 0) at output (0, 0)
    off[0, 5, 1, 2] = -0.1         # dx of tap (1, 0) at output (1, 2)
    return Case(x, off, w, None, None, np.ones((1, 1, 4, 4)), padding=(1, 1),
                name="onnx_with_padding")


def _onnx_without_padding():
    x, w, off = _onnx_base((2, 2))
    off[0, 0, 0, 0] = 0.5          # dy of tap (0, 0) at output (0, 0)
    off[0, 5, 0, 1] = -0.1         # dx of tap (1, 0) at output (0, 1)
    return Case(x, off, w, None, None, np.ones((1, 1, 2, 2)), name="onnx_without_padding")


def _onnx_mask_bias():
    case = _onnx_without_padding()
    mask = np.ones((1, 4, 2, 2))
    mask[0, 2, 1, 1] = 0.2         # tap (1, 0) at output (1, 1)
    case.bias, case.mask, case.name = np.ones(1), mask, "onnx_mask_bias"
    return case


def _onnx_offset_groups():
    x, w, off = _onnx_base((2, 2), offset_groups=2)
    off[0, 0, 0, 0] = 0.5          # group 0: dy of tap (0, 0) at (0, 0)
    off[0, 13, 0, 1] = -0.1        # group 1: dx of tap (1, 0) at (0, 1)
    return Case(x, off, w, None, None, np.ones((1, 1, 2, 2)), name="onnx_offset_groups")


def _torchvision_awkward(batch):
    def build():
        return make_case(seed=7, batch=batch, in_channels=6, out_channels=2, height=5, width=4,
                         kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                         offset_groups=3, name=f"torchvision_awkward_batch{batch}")
    return build


def _mmcv_small():
    # mmcv's modulated test: 3x3 input, 2x2 kernel, padding 1, zero offsets, mask 0.5
    x = np.array([[[[1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [3.0, 5.0, 2.0]]]])
    w = np.full((1, 1, 2, 2), 0.5)
    off = np.zeros((1, 8, 4, 4))
    mask = np.full((1, 4, 4, 4), 0.5)
    return Case(x, off, w, None, mask, np.ones((1, 1, 4, 4)), padding=(1, 1), name="mmcv_small")


def _random_sweep(seed):
    def build():
        rng = np.random.default_rng(seed)
        groups, og = [(1, 2), (2, 3), (3, 1), (2, 2)][seed % 4]
        return make_case(seed=seed, batch=int(rng.integers(1, 4)),
                         in_channels=groups * og * int(rng.integers(1, 3)),
                         out_channels=groups * int(rng.integers(1, 3)),
                         height=int(rng.integers(3, 8)), width=int(rng.integers(3, 8)),
                         kernel=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
                         stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                         padding=(int(rng.integers(0, 3)), int(rng.integers(0, 3))),
                         dilation=(1, int(rng.integers(1, 3))), groups=groups, offset_groups=og,
                         modulated=bool(seed % 2), name=f"random_{seed}")
    return build


CASES = [
    ConformanceCase("onnx_with_padding",
                    "ONNX backend case: border taps in the zero band with padding 1",
                    _onnx_with_padding),
    ConformanceCase("onnx_without_padding",
                    "ONNX backend case: the (dy, dx) channel order of one fractional offset",
                    _onnx_without_padding),
    ConformanceCase("onnx_mask_bias",
                    "ONNX backend case: the mask multiplies one tap, the bias is added",
                    _onnx_mask_bias),
    ConformanceCase("onnx_offset_groups",
                    "ONNX backend case: channel 1 reads offset group 1 (offset channel 13)",
                    _onnx_offset_groups),
    ConformanceCase("torchvision_awkward_batch1",
                    "kernel (3,2), stride (2,1), padding (1,0), dilation (2,1), groups 2, "
                    "offset groups 3: every index map at once",
                    _torchvision_awkward(1), small=False),
    ConformanceCase("mmcv_small",
                    "mmcv's golden case: zero offsets + padding 1 land exactly on -1 "
                    "(the two gradient conventions differ here)",
                    _mmcv_small),
] + [ConformanceCase(f"random_{s}", "seeded random sweep: general agreement", _random_sweep(s),
                     small=False) for s in range(4)]

_BY_NAME = {c.name: c for c in CASES}


def get_case(name):
    """The :class:`ConformanceCase` called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no conformance case {name!r}; known: {sorted(_BY_NAME)}") from None


def select(pattern=None):
    """Cases whose name contains ``pattern`` (all cases if None)."""
    return [c for c in CASES if pattern is None or pattern in c.name]


@lru_cache(maxsize=None)
def _expected(name, convention):
    return reference_results(get_case(name).build(), convention)


def expected(name, convention="torchvision"):
    """Float64 expected ``{output, input, offset, mask, weight, bias}`` of a case."""
    return dict(_expected(name, convention))
