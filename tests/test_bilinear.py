"""The scalar bilinear functions: values, derivatives and border rules by hand
(:mod:`refdcn.handworked`), and the vectorised forms the "numpy" backend uses against the
scalar ones on the awkward-coordinate grid."""

import math

import numpy as np
import pytest

from refdcn import bilinear as B
from refdcn import handworked

PLANE = handworked.PLANE                        # values 1..12, H=3, W=4
H, W = PLANE.shape


@pytest.mark.parametrize("y, x, expected", handworked.SAMPLE_VALUES)
def test_sample_values(y, x, expected):
    assert B.bilinear_sample(PLANE, H, W, y, x) == pytest.approx(expected, abs=1e-15)


def test_sample_nan_propagates():
    assert math.isnan(B.bilinear_sample(PLANE, H, W, math.nan, 1.0))
    assert math.isnan(B.bilinear_sample(PLANE, H, W, 1.0, math.nan))
    gy, gx = B.bilinear_gradient(PLANE, H, W, math.nan, 1.0, B.BORDER_TORCHVISION)
    assert math.isnan(gy) and math.isnan(gx)


@pytest.mark.parametrize("y, x, tv, mm", handworked.COORDINATE_GRADIENTS)
def test_coordinate_gradients(y, x, tv, mm):
    mm = tv if mm is None else mm
    assert B.bilinear_gradient(PLANE, H, W, y, x, B.BORDER_TORCHVISION) == pytest.approx(tv)
    assert B.bilinear_gradient(PLANE, H, W, y, x, B.BORDER_MMCV) == pytest.approx(mm)


def test_gradient_matches_finite_difference_inside_cells():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y, x = rng.uniform(-1.5, H + 0.5), rng.uniform(-1.5, W + 0.5)
        e = 1e-7
        if any(abs(v - round(v)) < 2 * e for v in (y, x)):
            continue
        gy, gx = B.bilinear_gradient(PLANE, H, W, y, x, B.BORDER_MMCV)
        fy = (B.bilinear_sample(PLANE, H, W, y + e, x) - B.bilinear_sample(PLANE, H, W, y - e, x)) / (2 * e)
        fx = (B.bilinear_sample(PLANE, H, W, y, x + e) - B.bilinear_sample(PLANE, H, W, y, x - e)) / (2 * e)
        assert gy == pytest.approx(fy, abs=1e-6) and gx == pytest.approx(fx, abs=1e-6)


def test_corner_weights_sum_to_one_and_work_on_arrays():
    ly, lx = np.array([0.0, 0.3, 0.9]), np.array([0.5, 0.0, 0.99])
    w = B.corner_weights(ly, lx)
    np.testing.assert_allclose(sum(w), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w[3], ly * lx)


def test_locate_outside_never_floors_huge_values():
    for v in (1e6, 1e30, -1e30, math.inf, -math.inf):
        active, y0, x0, ly, lx = B.locate(v, 0.5, H, W, True)
        assert not active and y0 == B.OUTSIDE and x0 == B.OUTSIDE


def test_locate_closed_only_differs_at_minus_one():
    assert B.locate(-1.0, 0.5, H, W, True)[0] is True
    assert B.locate(-1.0, 0.5, H, W, False)[0] is False
    for y in (-1.5, -0.5, 0.0, 2.5, 3.0):
        assert B.locate(y, 0.5, H, W, True)[:3] == B.locate(y, 0.5, H, W, False)[:3]
