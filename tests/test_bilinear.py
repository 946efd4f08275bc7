"""The scalar bilinear functions: values, derivatives and border rules by hand."""

import math

import numpy as np
import pytest

from refdcn import bilinear as B

PLANE = np.arange(1.0, 13.0).reshape(3, 4)      # values 1..12, H=3, W=4
H, W = PLANE.shape


@pytest.mark.parametrize("y, x, expected", [
    (0.0, 0.0, 1.0),                   # a pixel centre
    (1.0, 2.0, 7.0),
    (0.5, 0.0, 3.0),                   # halfway between 1 and 5
    (0.0, 0.25, 1.25),
    (1.5, 1.5, (6 + 7 + 10 + 11) / 4),
    (-0.25, 0.0, 0.75 * 1.0),          # band (-1, 0): partial corner
    (2.5, 3.0, 0.5 * 12.0),            # band (H-1, H)
    (0.0, 3.5, 0.5 * 4.0),             # band (W-1, W)
    (-1.0, 1.0, 0.0),                  # exactly -1: zero
    (3.0, 1.0, 0.0),                   # exactly H: zero
    (1.0, -1.0, 0.0),
    (1.0, 4.0, 0.0),
    (2.0, 3.0, 12.0),                  # exactly H-1, W-1: the last pixel
    (-5.0, 2.0, 0.0),
    (1e30, 0.0, 0.0),
    (0.0, -1e30, 0.0),
    (math.inf, 0.0, 0.0),
    (0.0, -math.inf, 0.0),
])
def test_sample_values(y, x, expected):
    assert B.bilinear_sample(PLANE, H, W, y, x) == pytest.approx(expected, abs=1e-15)


def test_sample_nan_propagates():
    assert math.isnan(B.bilinear_sample(PLANE, H, W, math.nan, 1.0))
    assert math.isnan(B.bilinear_sample(PLANE, H, W, 1.0, math.nan))
    gy, gx = B.bilinear_gradient(PLANE, H, W, math.nan, 1.0, B.BORDER_TORCHVISION)
    assert math.isnan(gy) and math.isnan(gx)


@pytest.mark.parametrize("y, x, tv, mm", [
    # interior: one-sided from above at integers
    (1.0, 1.0, (10 - 6, 7 - 6), (10 - 6, 7 - 6)),
    (0.5, 0.5, (0.5 * (5 - 1) + 0.5 * (6 - 2), 0.5 * (2 - 1) + 0.5 * (6 - 5)), None),
    # exactly y = -1: value 0; torchvision gives the inward derivative (row 0), mmcv 0
    (-1.0, 1.0, (2.0, 0.0), (0.0, 0.0)),
    (1.0, -1.0, (0.0, 5.0), (0.0, 0.0)),
    (-1.0, -1.0, (0.0, 0.0), (0.0, 0.0)),
    # exactly H or W: both corners outside in that direction
    (3.0, 1.0, (0.0, 0.0), (0.0, 0.0)),
    (1.0, 4.0, (0.0, 0.0), (0.0, 0.0)),
    # band (H-1, H): the missing row counts as zero
    (2.5, 1.0, (0.0 - 10.0, 0.5 * (11 - 10)), None),
    # band (-1, 0)
    (-0.5, 0.0, (1.0 - 0.0, 0.5 * (2 - 1)), None),
    # H - 1 exactly: derivative from above sees the zero row H
    (2.0, 2.0, (0 - 11.0, 12 - 11.0), None),
    (-1.5, 1.0, (0.0, 0.0), (0.0, 0.0)),
    (1e30, 1.0, (0.0, 0.0), (0.0, 0.0)),
])
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
