"""The two references ("reference" loops, "numpy" im2col): hand-checked values, borders,
finite differences, edge cases."""

import numpy as np
import pytest

import refdcn
from refdcn import conformance, handworked
from refdcn.backends import numpy_cpu
from refdcn.testing import make_case, numerical_gradient
from refdcn.tolerances import FLOAT64_RTOL, relative_error

REFS = ["reference", "numpy"]
QUANTITIES = ("input", "offset", "mask", "weight", "bias")


def both(case, convention="torchvision"):
    """Forward + gradients from both references; asserts they agree; returns the loop one."""
    results = []
    for b in REFS:
        out = refdcn.deform_conv2d(*case.args(), backend=b)
        g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=b,
                                          convention=convention)
        results.append((out, g))
    (o1, g1), (o2, g2) = results
    assert relative_error(o2, o1) <= FLOAT64_RTOL
    for a, b in zip(g1, g2):
        if a is None:
            assert b is None
        else:
            assert relative_error(b, a) <= FLOAT64_RTOL
    return o1, g1


# --- the conformance cases worked out by hand (ONNX's, mmcv's, the borders) ------------------

@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
@pytest.mark.parametrize("name", sorted(handworked.BY_HAND))
def test_hand_worked_cases(name, convention):
    """Both references give the values of refdcn.handworked (to rounding of the decimals)."""
    case = conformance.get_case(name).build()
    out, g = both(case, convention)
    hand = handworked.by_hand(name, convention)
    assert hand, name
    for q, value in hand.items():
        got = out if q == "output" else getattr(g, q)
        np.testing.assert_allclose(got, value, rtol=0, atol=1e-14, err_msg=f"{name}: {q}")


# --- exact border landings, by hand -----------------------------------------------------------

PLANE = handworked.PLANE[None, None]     # H=3, W=4, values 1..12


@pytest.mark.parametrize("landing", handworked.LANDINGS, ids=lambda l: f"out{l[0]}_dy{l[1]}_dx{l[2]}")
def test_exact_border_landings(landing):
    (oy, ox), dy, dx, value, tv_dy, tv_dx, mm_dy, mm_dx = landing
    offset = np.zeros((1, 2, 3, 4))
    offset[0, 0, oy, ox], offset[0, 1, oy, ox] = dy, dx
    weight = np.full((1, 1, 1, 1), 2.0)
    mask = np.full((1, 1, 3, 4), 0.5)
    grad_output = np.zeros((1, 1, 3, 4))
    grad_output[0, 0, oy, ox] = 3.0
    case = refdcn.testing.Case(PLANE, offset, weight, None, mask, grad_output)
    scale = 3.0 * 2.0 * 0.5         # upstream gradient x weight x mask
    for convention, (ey, ex) in (("torchvision", (tv_dy, tv_dx)), ("mmcv", (mm_dy, mm_dx))):
        out, g = both(case, convention)
        assert out[0, 0, oy, ox] == pytest.approx(2.0 * 0.5 * value, abs=1e-14)
        assert g.offset[0, 0, oy, ox] == pytest.approx(scale * ey, abs=1e-14)
        assert g.offset[0, 1, oy, ox] == pytest.approx(scale * ex, abs=1e-14)
        assert g.mask[0, 0, oy, ox] == pytest.approx(3.0 * 2.0 * value, abs=1e-14)


def test_conventions_differ_only_at_minus_one():
    """Random integer landings: the conventions agree everywhere except at samples on -1."""
    case = make_case(seed=3, offsets="integer", offset_scale=3, kernel=(3, 2), padding=(1, 1),
                     groups=1, offset_groups=2, in_channels=2, out_channels=2)
    _, tv = both(case, "torchvision")
    _, mm = both(case, "mmcv")
    for q in ("input", "mask", "weight", "bias"):
        np.testing.assert_array_equal(getattr(tv, q), getattr(mm, q))
    y, x = numpy_cpu.sampling_grid(case.offset, _geom(case))
    on_minus_one = ((y == -1) | (x == -1)).reshape(case.offset.shape[0], -1)
    differs = (tv.offset != mm.offset).reshape(case.offset.shape[0], -1, 2,
                                               *case.offset.shape[2:])
    differs = differs.any(axis=2).reshape(on_minus_one.shape)
    assert differs.any() and not (differs & ~on_minus_one).any()


def _geom(case):
    return refdcn.geometry.check_arguments(*case.args()[:3], case.bias, case.stride,
                                           case.padding, case.dilation, case.mask)


def test_one_sided_derivatives_at_integer_landings():
    """torchvision's offset gradient is the derivative from above (forward difference) at
    every integer landing; mmcv's equals it except on -1, where it is the one from below (0)."""
    case = make_case(seed=11, batch=1, in_channels=2, out_channels=2, height=4, width=3,
                     kernel=(2, 2), padding=1, groups=1, offset_groups=1, offsets="integer",
                     offset_scale=2)
    f = lambda: refdcn.deform_conv2d(*case.args(), backend="numpy")
    base = np.sum(f() * case.grad_output)
    eps = 1e-7
    forward_diff = np.zeros_like(case.offset)
    flat = case.offset.reshape(-1)
    for idx in range(flat.size):
        old = flat[idx]
        flat[idx] = old + eps
        forward_diff.reshape(-1)[idx] = (np.sum(f() * case.grad_output) - base) / eps
        flat[idx] = old
    _, tv = both(case, "torchvision")
    _, mm = both(case, "mmcv")
    np.testing.assert_allclose(tv.offset, forward_diff, rtol=0, atol=1e-5)
    y, x = numpy_cpu.sampling_grid(case.offset, _geom(case))
    on_minus_one = np.repeat(((y == -1) | (x == -1)).reshape(1, -1, 1, *case.offset.shape[2:]),
                             2, axis=2).reshape(case.offset.shape)
    np.testing.assert_allclose(mm.offset[~on_minus_one], forward_diff[~on_minus_one], atol=1e-5)
    assert np.all(mm.offset[on_minus_one] == 0)
    assert np.abs(tv.offset[on_minus_one]).max() > 0.1


# --- finite differences of all five gradients --------------------------------------------------

@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
@pytest.mark.parametrize("modulated", [True, False])
def test_finite_differences(convention, modulated):
    case = make_case(seed=5, batch=2, in_channels=4, out_channels=2, height=4, width=5,
                     kernel=(2, 3), stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=2,
                     offset_groups=2, modulated=modulated, offsets="gridsafe", offset_scale=2)
    _, g = both(case, convention)
    f = lambda: refdcn.deform_conv2d(*case.args(), backend="numpy")
    for name in QUANTITIES:
        array = getattr(case, name)
        if array is None:
            assert getattr(g, name) is None
            continue
        numeric = numerical_gradient(f, array, case.grad_output, eps=1e-6)
        # central differences of a piecewise-bilinear function: truncation error is 0 inside
        # a cell, so the error is rounding only: ~ 1e-16 * |sum| / 1e-6
        assert relative_error(getattr(g, name), numeric) < 1e-8, name


# --- torchvision's awkward configuration -----------------------------------------------------

@pytest.mark.parametrize("batch", [0, 1, 33])
def test_torchvision_awkward_configuration(batch):
    case = make_case(seed=2, batch=batch, in_channels=6, out_channels=2, height=5, width=4,
                     kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                     offset_groups=3)
    if batch == 33:   # the loop reference is slow: compare im2col against it on 3 images
        few = make_case(seed=2, batch=3, in_channels=6, out_channels=2, height=5, width=4,
                        kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                        offset_groups=3)
        both(few)
    out = refdcn.deform_conv2d(*case.args(), backend="numpy")
    assert out.shape == (batch, 2, 2, 3)
    # non-contiguous views of the same data give the same result
    t = lambda a: np.ascontiguousarray(np.swapaxes(a, 2, 3)).swapaxes(2, 3)
    nc = refdcn.deform_conv2d(t(case.input), t(case.offset), t(case.weight), case.bias,
                              case.stride, case.padding, case.dilation, t(case.mask),
                              backend="numpy")
    np.testing.assert_array_equal(nc, out)


def test_prime_batch_each_image_independent():
    case = make_case(seed=4, batch=37, in_channels=2, out_channels=2, height=4, width=4,
                     kernel=(2, 3), padding=1, groups=1, offset_groups=2)
    out = refdcn.deform_conv2d(*case.args(), backend="numpy")
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend="numpy")
    for n in (0, 17, 36):
        single = refdcn.testing.Case(case.input[n:n + 1], case.offset[n:n + 1], case.weight,
                                     case.bias, case.mask[n:n + 1], case.grad_output[n:n + 1],
                                     case.stride, case.padding, case.dilation)
        o1, g1 = both(single)
        assert relative_error(out[n:n + 1], o1) <= FLOAT64_RTOL
        assert relative_error(g.input[n:n + 1], g1.input) <= FLOAT64_RTOL
        assert relative_error(g.offset[n:n + 1], g1.offset) <= FLOAT64_RTOL


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (1, 1)])
def test_height_or_width_one(shape):
    case = make_case(seed=6, batch=2, in_channels=2, out_channels=2, height=shape[0],
                     width=shape[1], kernel=(2, 3), padding=(1, 1), groups=1, offset_groups=1)
    out, g = both(case)
    assert np.isfinite(out).all() and all(np.isfinite(a).all() for a in g if a is not None)


def test_large_offsets_and_unusual_masks():
    case = make_case(seed=8, batch=1, in_channels=2, out_channels=2, height=4, width=4,
                     kernel=(2, 2), padding=1, groups=1, offset_groups=1)
    rng = np.random.default_rng(0)
    case.offset = np.where(rng.uniform(size=case.offset.shape) < 0.5, 100.0, -100.0) * \
        rng.uniform(0.5, 1.5, size=case.offset.shape)
    case.mask = rng.normal(scale=3.0, size=case.mask.shape)          # outside [0, 1]
    out, g = both(case)
    # every sample is far outside: output is the bias, offset/mask/weight gradients vanish
    np.testing.assert_array_equal(out, np.broadcast_to(case.bias[None, :, None, None], out.shape))
    assert not g.offset.any() and not g.mask.any() and not g.weight.any() and not g.input.any()
    case2 = make_case(seed=9, batch=1, in_channels=2, out_channels=2, height=4, width=4,
                      kernel=(2, 2), padding=1, groups=1, offset_groups=1)
    case2.mask = case2.mask * 4 - 2                                   # in [-2, 2]
    both(case2)


@pytest.mark.parametrize("backend", REFS)
def test_non_finite_offsets_documented_behaviour(backend):
    case = make_case(seed=10, batch=1, in_channels=2, out_channels=2, height=4, width=4,
                     kernel=(2, 2), padding=1, groups=1, offset_groups=1, bias=False)
    off = case.offset
    off[0, 0, 1, 1] = np.inf         # tap 0 dy at pixel (1, 1): outside, contributes 0
    off[0, 2, 2, 2] = 1e30
    off[0, 4, 0, 0] = -1e6
    off[0, 3, 3, 3] = np.nan         # tap 1 dx at pixel (3, 3): NaN output there
    out = refdcn.deform_conv2d(*case.args(), backend=backend)
    nan_at = np.isnan(out)
    assert nan_at[0, :, 3, 3].all() and nan_at.sum() == 2
    finite = case.offset.copy()
    finite[0, 0, 1, 1] = finite[0, 2, 2, 2] = finite[0, 4, 0, 0] = 1e9
    finite[0, 3, 3, 3] = 0.0
    ref = refdcn.deform_conv2d(case.input, finite, case.weight, None, 1, 1, 1, case.mask,
                               backend=backend)
    np.testing.assert_allclose(out[~nan_at], ref[~nan_at], rtol=1e-14)
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    assert np.isnan(g.offset[0, 2:4, 3, 3]).all() and np.isnan(g.mask[0, 1, 3, 3])
    assert np.isfinite(g.input).all()                    # NaN samples scatter nothing
    assert np.isnan(g.weight).any()
    assert g.offset[0, 0, 1, 1] == 0 and g.offset[0, 2, 2, 2] == 0
