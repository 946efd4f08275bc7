"""The conformance cases: coverage of what the issue lists, and expected values by hand."""

import numpy as np
import pytest

from refdcn import conformance, handworked, vectors
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


# --- values by hand (refdcn.handworked; tests/test_reference.py compares every quantity) -----

def test_every_hand_worked_case_is_a_conformance_case_with_values():
    assert set(handworked.BY_HAND) <= set(conformance.names())
    for name in handworked.BY_HAND:
        case = conformance.get_case(name).build()
        for q, value in handworked.by_hand(name, "mmcv").items():
            shape = (case.input.shape[0], case.weight.shape[0]) + case.offset.shape[2:] \
                if q == "output" else getattr(case, q).shape
            assert value.shape == shape, (name, q)


def test_golden_vectors_carry_the_hand_values(tmp_path):
    """``refdcn vectors export`` writes, for the hand-worked cases, the values by hand."""
    cases = [conformance.get_case(n) for n in sorted(handworked.BY_HAND)]
    vectors.export(str(tmp_path), cases=cases, onnx=False)
    for name in handworked.BY_HAND:
        arrays = np.load(tmp_path / "cases" / f"{name}.npz")
        for convention in ("torchvision", "mmcv"):
            for q, value in handworked.by_hand(name, convention).items():
                key = {"output": "output", "offset": f"grad_offset_{convention}"}.get(
                    q, f"grad_{q}")
                np.testing.assert_allclose(arrays[key], value, rtol=0, atol=1e-14,
                                           err_msg=f"{name}: {key}")


def _offset_conv_grads(e):
    """Chain the op's offset/mask gradients through mmcv's offset conv (2x2, padding 1).

    The offset conv outputs 12 channels: o1 (4) and o2 (4) concatenated are the offsets,
    the last 4 pass through a sigmoid (derivative 1/4 at 0) to give the mask.
    """
    g = np.concatenate([e["offset"][0], 0.25 * e["mask"][0]])          # (12, 4, 4)
    xpad = np.pad(np.array(handworked.MMCV_INPUT), 1)                  # (5, 5)
    w = np.zeros((12, 2, 2))
    for a in range(2):
        for b in range(2):
            w[:, a, b] = np.einsum("cyx,yx->c", g, xpad[a:a + 4, b:b + 4])
    return g.sum(axis=(1, 2)), w


def test_mmcv_offset_conv_golden_values():
    """mmcv's gradients of its offset conv, from refdcn's offset and mask gradients."""
    bias_grad, weight_grad = _offset_conv_grads(conformance.expected("mmcv_small", "mmcv"))
    np.testing.assert_array_equal(bias_grad, handworked.MMCV_OFFSET_BIAS_GRAD)
    np.testing.assert_array_equal(weight_grad, handworked.MMCV_OFFSET_WEIGHT_GRAD)


def test_mmcv_case_under_the_torchvision_rule():
    bias_grad, _ = _offset_conv_grads(conformance.expected("mmcv_small", "torchvision"))
    np.testing.assert_array_equal(bias_grad, handworked.TORCHVISION_OFFSET_BIAS_GRAD)


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
@pytest.mark.parametrize("name", ["mmcv_small", "border_exact_y", "border_exact_x"])
def test_dyadic_cases_are_exact(name, convention):
    """Values that are sums of dyadic fractions are exact in float64: equality, no tolerance."""
    e = conformance.expected(name, convention)
    for q, value in handworked.by_hand(name, convention).items():
        np.testing.assert_array_equal(e[q], value, err_msg=q)


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_border_bands_coordinate_gradients_by_hand(convention):
    dy, dx = conformance.expected("border_bands", convention)["offset"][0]
    for (oy, ox), (ey, ex) in handworked.BANDS_COORDINATE_GRADIENTS.items():
        assert (dy[oy, ox], dx[oy, ox]) == (ey, ex), (oy, ox)


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
