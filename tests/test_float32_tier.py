"""The float32 tiers: correct float32 kernels pass the default tier, refdcn's own pass --strict,
and the default tier still catches small mistakes (its detection power, measured here)."""

import numpy as np
import pytest

import float32_models
from refdcn import backends, conformance
from refdcn.verify import Tolerance, resolve, verify
from refdcn.verify.adapters import Implementation

ALL = conformance.CASES
#: Cases where some sample lands exactly on y = -1 or x = -1: the two offset-gradient
#: conventions differ there and nowhere else (see test_conformance.py).
ON_MINUS_ONE = {"onnx_with_padding", "mmcv_small", "border_exact_y", "border_exact_x",
                "integer_offsets", "zero_offsets_conv2d"}
CONVENTION = {"torchvision": "torchvision", "msra": "mmcv", "mindspore": "torchvision"}


class Model(Implementation):
    """A float32 model of :mod:`float32_models` (optionally perturbed) as an implementation."""
    has_backward = True
    native_convention = None

    def __init__(self, form, perturb=None):
        self._forward, self._backward = float32_models.make(form, perturb)
        self.name = f"{form} float32 model {perturb or ''}"

    def forward(self, case):
        return self._forward(*case.args())

    def backward(self, case, convention):
        return self._backward(case.grad_output, *case.args())


def run(impl, convention="torchvision", strict=False, cases=ALL, diagnose=False):
    return verify(impl, cases, np.float32, convention, Tolerance(np.float32, strict=strict),
                  diagnose_failures=diagnose)


def failing(report):
    return {r.name for r in report.results if r.status != "pass"}


@pytest.mark.parametrize("form", float32_models.FORMS)
def test_correct_float32_arithmetic_passes_the_default_tier(form):
    """torchvision's, the MSRA lineage's (mmcv, Paddle) and MindSpore's float32 rounding."""
    assert failing(run(Model(form), CONVENTION[form])) == set()


@pytest.mark.parametrize("form", float32_models.FORMS)
def test_the_strict_tier_rejects_float32_coordinates(form):
    # the strict tier assumes double-precision coordinates: these models fail it on 10-11
    # cases, the numbers measured on real torchvision, mmcv, Paddle and MindSpore (peers.md)
    assert len(failing(run(Model(form), CONVENTION[form], strict=True))) >= 10


def test_real_torchvision_and_onnxruntime_float32_pass():
    pytest.importorskip("torchvision")
    pytest.importorskip("onnxruntime")
    assert failing(run(resolve("torchvision"))) == set()
    assert failing(run(resolve("onnxruntime"))) == set()


def own_backends():
    import os
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return [b for b in backends.available() if b != "cuda" or not simulated]


@pytest.mark.parametrize("backend", own_backends())
def test_refdcn_float32_backends_pass_strict(backend):
    cases = [c for c in ALL if not c.name.startswith("random_")] if backend == "reference" \
        else ALL
    assert failing(run(resolve(f"refdcn:{backend}"), strict=True, cases=cases)) == set()


# --- detection power of the default tier -------------------------------------------------------

@pytest.mark.parametrize("shift, caught", [(2.0**-16, 30), (2.0**-18, 10), (2.0**-22, 0)])
def test_smallest_offset_perturbation_caught(shift, caught):
    """Every sampling point moved by ``shift`` pixels along y.

    Measured: 2^-16 px (1.5e-5) fails 31 of 32 cases, 2^-18 (3.8e-6) 24, 2^-20 1 and
    2^-22 none (it is below float32 rounding of the coordinates themselves).
    """
    n = len(failing(run(Model("torchvision", {"y": shift}))))
    assert n >= caught if caught else n == 0


@pytest.mark.parametrize("band, caught", [(1.0, 30), (2.0**-8, 5)])
def test_smallest_border_shift_caught(band, caught):
    """The zero band's edges moved inwards by ``band`` pixels (1.0: a border off by one).

    Measured: 1 px fails 31 of 32 cases, 2^-4 px 17, 2^-8 px 6, 2^-12 px 1, 2^-16 px none.
    """
    assert len(failing(run(Model("torchvision", {"band": band})))) >= caught


@pytest.mark.parametrize("form, other", [("msra", "torchvision"), ("mindspore", "mmcv")])
def test_convention_difference_caught_and_named_in_float32(form, other):
    report = run(Model(form), other, diagnose=True)
    assert failing(report) == ON_MINUS_ONE
    assert set(report.causes()) == {"convention"}
