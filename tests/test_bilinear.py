"""The scalar bilinear functions: values, derivatives and border rules by hand
(:mod:`refdcn.handworked`), and the vectorised forms the "numpy" backend uses against the
scalar ones on the awkward-coordinate grid."""

import itertools
import math

import numpy as np
import pytest

from refdcn import bilinear as B
from refdcn import handworked
from refdcn.backends import numpy_cpu
from refdcn.geometry import check_arguments

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


# --- the vectorised forms (as the "numpy" backend uses them) against the scalar ones --------

def _awkward(size):
    """Integers, -1, 0, size-1, size, one ulp either side of each, the bands, huge, inf, NaN."""
    points = [-1.0, 0.0, 1.0, size - 1.0, float(size)]
    near = [v for p in points for v in (np.nextafter(p, -np.inf), p, np.nextafter(p, np.inf))]
    bands = [-0.75, -0.5, -0.25, size - 0.75, size - 0.5, size - 0.25, 0.3, -2.0, size + 1.0]
    return near + bands + [-0.0, 1e30, -1e30, 1e300, math.inf, -math.inf, math.nan]


def _grid():
    """Every (y, x) pair of the awkward coordinates of PLANE, as (1, 1, L) arrays."""
    y, x = np.meshgrid(_awkward(H), _awkward(W), indexing="ij")
    return y.reshape(1, 1, -1), x.reshape(1, 1, -1)


def _bitwise(a, b):
    return np.asarray(a, np.float64).tobytes() == np.asarray(b, np.float64).tobytes()


@pytest.mark.parametrize("closed", [False, True])
def test_vectorised_locate_matches_scalar(closed):
    y, x = _grid()
    y0, x0, ly, lx = numpy_cpu.locate_all(y, x, H, W, closed)
    for k in range(y.size):
        active, sy0, sx0, sly, slx = B.locate(y.flat[k], x.flat[k], H, W, closed)
        assert (y0.flat[k], x0.flat[k]) == (sy0, sx0), (y.flat[k], x.flat[k])
        assert _bitwise(ly.flat[k], sly) and _bitwise(lx.flat[k], slx), (y.flat[k], x.flat[k])


def _vectorised(closed):
    """Corner targets, values and derivatives of every grid point, computed on arrays."""
    y, x = _grid()
    y0, x0, ly, lx = numpy_cpu.locate_all(y, x, H, W, closed)
    targets = numpy_cpu.corner_targets(y0, x0, ly, lx, H, W)
    corners = numpy_cpu.gather_corners(PLANE.reshape(1, 1, 1, -1), targets)
    value = B.interpolate(*corners, ly[:, :, None], lx[:, :, None])
    d_dy, d_dx = B.interpolate_gradient(*corners, ly[:, :, None], lx[:, :, None])
    return y.ravel(), x.ravel(), targets, value.ravel(), d_dy.ravel(), d_dx.ravel()


def test_vectorised_values_and_derivatives_match_scalar():
    y, x, _, value, _, _ = _vectorised(closed=False)
    for k in range(y.size):
        assert _bitwise(value[k], B.bilinear_sample(PLANE, H, W, y[k], x[k])), (y[k], x[k])
    for convention in (B.BORDER_TORCHVISION, B.BORDER_MMCV):
        y, x, _, _, d_dy, d_dx = _vectorised(closed=convention == B.BORDER_TORCHVISION)
        for k in range(y.size):
            want = B.bilinear_gradient(PLANE, H, W, y[k], x[k], convention)
            assert _bitwise((d_dy[k], d_dx[k]), want), (y[k], x[k], convention)


@pytest.mark.parametrize("value", [1.0, -2.5, math.inf, math.nan])
def test_vectorised_adjoint_targets_match_scalar(value):
    """Scattering one point through corner_targets adds what scalar scatter_add adds."""
    y, x, targets, _, _, _ = _vectorised(closed=False)
    for k in range(y.size):
        want, got = np.zeros((H, W)), np.zeros(H * W)
        with np.errstate(invalid="ignore"):        # inf * (weight 0) is NaN in both
            B.scatter_add(want, H, W, y[k], x[k], value)
            for flat, inside, weight in targets:
                if inside.flat[k]:
                    got[flat.flat[k]] += value * weight.flat[k]
        assert _bitwise(got, want.ravel()), (y[k], x[k])


def test_vectorised_sampling_points_match_scalar():
    offset = np.resize(_awkward(H), 36).reshape(1, 2 * 3 * 2, 1, 3)   # kernel (3, 2), D = 1
    geom = check_arguments(PLANE[None, None], offset, np.ones((1, 1, 3, 2)), None, (2, 1),
                           (1, 0), (2, 1), None)
    assert (geom.out_h, geom.out_w) == (1, 3)
    y, x = numpy_cpu.sampling_grid(offset, geom)
    for i, j, ox in itertools.product(range(3), range(2), range(3)):
        k = i * 2 + j
        want_y = B.sampling_point(0, 2, 1, i, 2, offset[0, 2 * k, 0, ox])
        want_x = B.sampling_point(ox, 1, 0, j, 1, offset[0, 2 * k + 1, 0, ox])
        assert _bitwise(y[0, 0, k, ox], want_y) and _bitwise(x[0, 0, k, ox], want_x)
