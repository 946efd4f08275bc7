"""The conformance cases: coverage of what the issue lists, and expected values by hand."""

import numpy as np
import pytest

from refdcn import conformance
from refdcn.geometry import check_arguments
from refdcn.verify.variants import base_grid

NAMES = conformance.names()


def geometry(case):
    return check_arguments(case.input, case.offset, case.weight, case.bias, case.stride,
                           case.padding, case.dilation, case.mask)


def sampling_points(case):
    """All sampling coordinates (y, x) of a case, as two flat arrays."""
    geom = geometry(case)
    pts = (base_grid(geom) + case.offset).reshape(case.offset.shape[0],
                                                  geom.offset_groups * geom.taps, 2,
                                                  geom.out_h, geom.out_w)
    return pts[:, :, 0].ravel(), pts[:, :, 1].ravel(), geom


# --- the catalogue ------------------------------------------------------------------------------

def test_names_unique_and_catches_one_line():
    assert len(NAMES) == len(set(NAMES))
    for c in conformance.CASES:
        assert c.catches and "\n" not in c.catches, c.name
        case = c.build()
        assert case.name == c.name
        geometry(case)                                    # valid arguments
        assert case.grad_output.shape == (case.input.shape[0], case.weight.shape[0]) + \
            case.offset.shape[2:]


def test_select_and_get_case():
    assert [c.name for c in conformance.select("onnx_")][:1] == ["onnx_with_padding"]
    assert {c.name for c in conformance.select(["mmcv", "width"])} == {"mmcv_small", "width_one"}
    assert conformance.get_case("mmcv_small").small
    with pytest.raises(KeyError, match="no conformance case"):
        conformance.get_case("nope")


def test_every_listed_situation_is_covered():
    cases = {c.name: c.build() for c in conformance.CASES}
    shapes = [(geometry(c), c) for c in cases.values()]
    batches = {g.batch for g, _ in shapes}
    assert 0 in batches and 37 in batches                                  # batch 0, prime > 32
    assert any(g.height == 1 for g, _ in shapes) and any(g.width == 1 for g, _ in shapes)
    assert any(np.any(c.offset == 100) and np.any(c.offset == -100)
               for c in cases.values())                                     # offsets +-100
    assert any(c.mask is not None and np.any(c.mask < 0) and np.any(c.mask > 1)
               for c in cases.values())                                     # mask outside [0, 1]
    assert any(g.kh == g.kw and g.kh % 2 == 0 for g, _ in shapes)           # even kernel
    assert any(g.kh < g.kw for g, _ in shapes) and any(g.kh > g.kw for g, _ in shapes)
    assert any(min(g.stride) > 1 and min(g.dilation) > 1 for g, _ in shapes)
    assert any(g.stride[0] != g.stride[1] and g.dilation[0] != g.dilation[1] for g, _ in shapes)
    assert any(g.groups > 1 and g.offset_groups > 1 and g.in_per_offset_group > 1 and
               g.in_per_offset_group % g.in_per_group != 0 for g, _ in shapes)
    assert sum(n.startswith("random_") for n in cases) >= 4
    aw = geometry(cases["torchvision_awkward_batch1"])
    assert (aw.kh, aw.kw, aw.stride, aw.padding, aw.dilation, aw.groups, aw.offset_groups) == \
        (3, 2, (2, 1), (1, 0), (2, 1), 2, 3)


@pytest.mark.parametrize("axis", ["y", "x"])
def test_exact_border_landings_and_bands(axis):
    """Some case samples exactly on -1, 0, S-1 and S, and inside both bands, on each axis."""
    hits = {"-1": False, "0": False, "S-1": False, "S": False, "low band": False,
            "high band": False}
    for c in conformance.CASES:
        y, x, g = sampling_points(c.build())
        v, size = (y, g.height) if axis == "y" else (x, g.width)
        hits["-1"] |= bool(np.any(v == -1))
        hits["0"] |= bool(np.any(v == 0))
        hits["S-1"] |= bool(np.any(v == size - 1))
        hits["S"] |= bool(np.any(v == size))
        hits["low band"] |= bool(np.any((v > -1) & (v < 0)))
        hits["high band"] |= bool(np.any((v > size - 1) & (v < size)))
    assert all(hits.values()), hits


def test_expected_is_cached_and_has_both_conventions():
    a = conformance.expected("mmcv_small", "torchvision")
    b = conformance.expected("mmcv_small", "torchvision")
    assert a["output"] is b["output"]
    m = conformance.expected("mmcv_small", "mmcv")
    assert set(a) == {"output", "input", "offset", "mask", "weight", "bias"}
    assert not np.array_equal(a["offset"], m["offset"])
    for q in ("output", "input", "mask", "weight"):
        assert np.array_equal(a[q], m[q])


# --- expected values written out by hand ----------------------------------------------------------

ONNX_OUTPUTS = {       # onnx/backend/test/case/node/deformconv.py
    "onnx_with_padding": [[0.0, 1.0, 3.0, 2.0], [3.0, 8.0, 11.9, 7.0], [9.0, 20.0, 24.0, 13.0],
                          [6.0, 13.0, 15.0, 8.0]],
    "onnx_without_padding": [[9.5, 11.9], [20.0, 24.0]],
    "onnx_mask_bias": [[10.5, 12.9], [21.0, 19.4]],
    "onnx_offset_groups": [[33.5, 32.1], [32.0, 32.0]],
}


@pytest.mark.parametrize("name", sorted(ONNX_OUTPUTS))
def test_onnx_outputs_by_hand(name):
    out = conformance.expected(name)["output"]
    np.testing.assert_allclose(out[0, 0], ONNX_OUTPUTS[name], rtol=0, atol=1e-14)


# mmcv tests/test_ops/test_modulated_deform_conv.py: ModulatedDeformConv2dPack(1, 1, (2, 2),
# padding=1, bias=False), weight 1, zero-initialised offset conv, loss = output.sum()
MMCV_OUTPUT = [[0.5, 1.5, 2.5, 1.5], [1.0, 3.0, 5.0, 3.0], [1.0, 3.0, 5.0, 3.0],
               [0.5, 1.5, 2.5, 1.5]]
MMCV_INPUT_GRAD = np.full((3, 3), 2.0)
MMCV_WEIGHT_GRAD = np.full((2, 2), 9.0)
MMCV_OFFSET_BIAS_GRAD = [-3.0, -1.5, -3.0, -1.5, -3.0, -1.5, -3.0, -1.5, 4.5, 4.5, 4.5, 4.5]
MMCV_OFFSET_WEIGHT_GRAD = [[[-7.0, -4.0], [0.0, 0.0]], [[-9.0, 7.5], [-6.0, 5.0]],
                           [[-4.0, -7.0], [0.0, 0.0]], [[-7.5, -9.0], [-5.0, -6.0]],
                           [[-7.0, -4.0], [-7.0, -4.0]], [[-6.0, 5.0], [-9.0, 7.5]],
                           [[-4.0, -7.0], [-4.0, -7.0]], [[-5.0, -6.0], [-7.5, -9.0]],
                           [[10.5, 6.0], [7.0, 4.0]], [[6.0, 10.5], [4.0, 7.0]],
                           [[7.0, 4.0], [10.5, 6.0]], [[4.0, 7.0], [6.0, 10.5]]]
# the same offset-conv bias gradient under torchvision's rule (dcn-implementations.md, b2)
TORCHVISION_OFFSET_BIAS_GRAD = [0, 0, 0, -1.5, -3, 0, -3, -1.5, 4.5, 4.5, 4.5, 4.5]


def _offset_conv_grads(e):
    """Chain the op's offset/mask gradients through mmcv's offset conv (2x2, padding 1).

    The offset conv outputs 12 channels: o1 (4) and o2 (4) concatenated are the offsets,
    the last 4 pass through a sigmoid (derivative 1/4 at 0) to give the mask.
    """
    g = np.concatenate([e["offset"][0], 0.25 * e["mask"][0]])          # (12, 4, 4)
    xpad = np.pad(np.array(conformance.MMCV_INPUT), 1)                  # (5, 5)
    w = np.zeros((12, 2, 2))
    for a in range(2):
        for b in range(2):
            w[:, a, b] = np.einsum("cyx,yx->c", g, xpad[a:a + 4, b:b + 4])
    return g.sum(axis=(1, 2)), w


def test_mmcv_golden_values():
    e = conformance.expected("mmcv_small", "mmcv")
    np.testing.assert_array_equal(e["output"][0, 0], MMCV_OUTPUT)
    np.testing.assert_array_equal(e["input"][0, 0], MMCV_INPUT_GRAD)
    np.testing.assert_array_equal(e["weight"][0, 0], MMCV_WEIGHT_GRAD)
    bias_grad, weight_grad = _offset_conv_grads(e)
    np.testing.assert_array_equal(bias_grad, MMCV_OFFSET_BIAS_GRAD)
    np.testing.assert_array_equal(weight_grad, MMCV_OFFSET_WEIGHT_GRAD)


def test_mmcv_case_under_the_torchvision_rule():
    e = conformance.expected("mmcv_small", "torchvision")
    np.testing.assert_array_equal(e["output"][0, 0], MMCV_OUTPUT)
    bias_grad, _ = _offset_conv_grads(e)
    np.testing.assert_array_equal(bias_grad, TORCHVISION_OFFSET_BIAS_GRAD)


# border_exact_y: 1x1 kernel, weight 2, input v[y, x] = 4y + x + 1 (3x4); output (oy, ox) samples
# (T[ox], ox + oy/4) with T = (-1, 0, H-1 = 2, H = 3); grad_output = 1
BORDER_Y_OUTPUT = [[0, 4, 22, 0], [0, 4.5, 22.5, 0], [0, 5, 23, 0]]   # 2 * S; S = 0 on -1 and H
BORDER_Y_DY = {
    # y = -1: torchvision takes the inward derivative (row 0 interpolated at x), mmcv 0;
    # y = 0: row 1 - row 0 = 4; y = H-1: 0 - row 2 (from above); y = H: 0
    "torchvision": [[2, 8, -22, 0], [2.5, 8, -22.5, 0], [3, 8, -23, 0]],
    "mmcv": [[0, 8, -22, 0], [0, 8, -22.5, 0], [0, 8, -23, 0]],
}
BORDER_Y_DX = [[0, 2, 2, 0]] * 3            # column differences are 1 (times weight 2)
BORDER_Y_INPUT = [[0, 4.5, 1.5, 0], [0, 0, 0, 0], [0, 0, 4.5, 1.5]]
BORDER_Y_WEIGHT = 13 + 13.5 + 14            # the sum of the samples


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_border_exact_y_by_hand(convention):
    e = conformance.expected("border_exact_y", convention)
    np.testing.assert_array_equal(e["output"][0, 0], BORDER_Y_OUTPUT)
    np.testing.assert_array_equal(e["offset"][0, 0], BORDER_Y_DY[convention])
    np.testing.assert_array_equal(e["offset"][0, 1], BORDER_Y_DX)
    np.testing.assert_array_equal(e["input"][0, 0], BORDER_Y_INPUT)
    assert e["weight"].item() == BORDER_Y_WEIGHT


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_border_exact_x_is_the_transpose(convention):
    e = conformance.expected("border_exact_x", convention)
    np.testing.assert_array_equal(e["output"][0, 0], np.transpose(BORDER_Y_OUTPUT))
    np.testing.assert_array_equal(e["offset"][0, 1], np.transpose(BORDER_Y_DY[convention]))
    np.testing.assert_array_equal(e["offset"][0, 0], np.transpose(BORDER_Y_DX))
    np.testing.assert_array_equal(e["input"][0, 0], np.transpose(BORDER_Y_INPUT))


# border_bands: 1x1 kernel, weight 2, mask 0.5, v[y, x] = 3y + x + 1 (3x3); output (oy, ox)
# samples (Y[oy], X[ox]) with Y = (-0.75, 1.5, 2.25), X = (-0.25, 0.5, 2.75)
BANDS_OUTPUT = [
    # y = -0.75: only row 0 contributes, with weight 0.25
    [0.25 * 0.75 * 1, 0.25 * (0.5 * 1 + 0.5 * 2), 0.25 * 0.25 * 3],
    # y = 1.5: rows 1 and 2 half each
    [0.75 * 0.5 * (4 + 7), 0.25 * (4 + 5 + 7 + 8), 0.25 * 0.5 * (6 + 9)],
    # y = 2.25: row 2 with weight 0.75, row 3 is outside
    [0.75 * 0.75 * 7, 0.75 * 0.5 * (7 + 8), 0.75 * 0.25 * 9],
]


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_border_bands_by_hand(convention):
    e = conformance.expected("border_bands", convention)
    np.testing.assert_allclose(e["output"][0, 0], BANDS_OUTPUT, rtol=0, atol=1e-15)
    np.testing.assert_allclose(e["mask"][0, 0], 2 * np.array(BANDS_OUTPUT), rtol=0, atol=1e-15)
    dy, dx = e["offset"][0, 0], e["offset"][0, 1]
    # (-0.75, -0.25): dS/dy = lx*(v[0,0] - 0) = 0.75, times weight*mask = 1
    assert dy[0, 0] == 0.75 and dx[0, 0] == 0.25
    # (2.25, 2.75): dS/dy = (1 - lx)*(0 - 9) = -2.25; dS/dx = (1 - ly)*(0 - 9) = -6.75
    assert dy[2, 2] == -2.25 and dx[2, 2] == -6.75
    # (1.5, 0.5): interior, dS/dy = 3 (row step), dS/dx = 1 (column step)
    assert dy[1, 1] == 3.0 and dx[1, 1] == 1.0


def test_zero_offsets_equal_conv2d():
    torch = pytest.importorskip("torch")
    case = conformance.get_case("zero_offsets_conv2d").build()
    ref = torch.nn.functional.conv2d(torch.from_numpy(case.input), torch.from_numpy(case.weight),
                                     torch.from_numpy(case.bias), case.stride, case.padding,
                                     case.dilation).numpy()
    np.testing.assert_allclose(conformance.expected(case.name)["output"], ref, rtol=0,
                               atol=1e-13)


def test_far_offsets_give_zero_gradient_there():
    case = conformance.get_case("huge_offsets").build()
    e = conformance.expected(case.name)
    y, x, g = sampling_points(case)
    far = (np.abs(y) > 50) | (np.abs(x) > 50)
    assert far.any()
    pairs = e["offset"].reshape(case.offset.shape[0], -1, 2, g.out_h, g.out_w)
    far = far.reshape(pairs[:, :, 0].shape)
    assert np.all(pairs[:, :, 0][far] == 0) and np.all(pairs[:, :, 1][far] == 0)
    assert np.all(e["mask"][far.reshape(e["mask"].shape)] == 0)
