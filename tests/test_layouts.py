"""Offset/mask layout converters: hand examples, the documented index maps, round trips."""

import itertools

import numpy as np
import pytest

import refdcn
from refdcn import layouts
from refdcn.testing import make_case
from refdcn.tolerances import FLOAT64_RTOL, relative_error


def channels(n):
    """(1, n, 1, 1) array whose channel c holds the value c."""
    return np.arange(float(n)).reshape(1, n, 1, 1)


# --- hand examples ------------------------------------------------------------------------------

def test_planar_hand_example():
    # 2x2 kernel (K = 4), one offset group: planar = dy0 dy1 dy2 dy3 dx0 dx1 dx2 dx3
    planar = np.array([10., 11., 12., 13., 20., 21., 22., 23.]).reshape(1, 8, 1, 1)
    tv = layouts.planar_to_torchvision(planar)
    assert tv.ravel().tolist() == [10., 20., 11., 21., 12., 22., 13., 23.]
    assert layouts.torchvision_to_planar(tv).ravel().tolist() == planar.ravel().tolist()


def test_planar_two_offset_groups_hand_example():
    # 1x2 kernel (K = 2), two offset groups: one planar block of 2K channels per group
    tv = layouts.planar_to_torchvision(channels(8), offset_groups=2)
    # group 0: dy0=0 dy1=1 dx0=2 dx1=3 -> (0,2) (1,3); group 1 the same + 4
    assert tv.ravel().tolist() == [0., 2., 1., 3., 4., 6., 5., 7.]


def test_dcnv4_hand_example():
    # 2x3 kernel: x-major tap t = j*kh + i, pairs (dx, dy)
    src = channels(12)
    tv = layouts.dcnv4_to_torchvision(src, (2, 3)).ravel()
    # torchvision tap (0,1) is k = 1 -> channels 2 (dy), 3 (dx); DCNv4 t = 1*2 + 0 = 2 ->
    # dx at 4, dy at 5
    assert (tv[2], tv[3]) == (5., 4.)
    # tap (1,0): k = 3 -> channels 6, 7; t = 0*2 + 1 = 1 -> dx at 2, dy at 3
    assert (tv[6], tv[7]) == (3., 2.)
    assert tv.tolist() == [1., 0., 5., 4., 9., 8., 3., 2., 7., 6., 11., 10.]
    mask = layouts.dcnv4_mask_to_torchvision(channels(6), (2, 3)).ravel()
    assert mask.tolist() == [0., 2., 4., 1., 3., 5.]


def test_swap_pairs_hand_example():
    assert layouts.swap_offset_pairs(channels(6)).ravel().tolist() == [1., 0., 3., 2., 5., 4.]


# --- the documented index maps agree with the converters -----------------------------------------

@pytest.mark.parametrize("kernel, groups", [((3, 3), 1), ((2, 3), 2), ((3, 1), 3), ((1, 1), 2)])
def test_index_maps(kernel, groups):
    kh, kw = kernel
    n = 2 * groups * kh * kw
    planar_tv = layouts.planar_to_torchvision(channels(n), groups).ravel()
    dcn_tv = layouts.dcnv4_to_torchvision(channels(n), kernel, groups).ravel()
    mask_tv = layouts.dcnv4_mask_to_torchvision(channels(n // 2), kernel, groups).ravel()
    for d, i, j, a in itertools.product(range(groups), range(kh), range(kw), (0, 1)):
        tv_ch = layouts.torchvision_offset_channel(d, i, j, a, kernel)
        assert tv_ch == refdcn.geometry.offset_channel(d, i, j, kh, kw, a)
        assert planar_tv[tv_ch] == layouts.planar_offset_channel(d, i, j, a, kernel)
        assert dcn_tv[tv_ch] == layouts.dcnv4_offset_channel(d, i, j, a, kernel)
        if a == 0:
            assert mask_tv[(d * kh + i) * kw + j] == layouts.dcnv4_mask_channel(d, i, j, kernel)


# --- round trips, other axes, torch -------------------------------------------------------------

@pytest.mark.parametrize("kernel, groups", [((3, 3), 1), ((2, 3), 2), ((3, 2), 3)])
def test_round_trips(kernel, groups):
    rng = np.random.default_rng(0)
    K = kernel[0] * kernel[1]
    off = rng.normal(size=(2, 2 * groups * K, 3, 4))
    mask = rng.normal(size=(2, groups * K, 3, 4))
    for to, back in ((lambda a: layouts.planar_to_torchvision(a, groups),
                      lambda a: layouts.torchvision_to_planar(a, groups)),
                     (lambda a: layouts.dcnv4_to_torchvision(a, kernel, groups),
                      lambda a: layouts.torchvision_to_dcnv4(a, kernel, groups)),
                     (layouts.swap_offset_pairs, layouts.swap_offset_pairs)):
        assert np.array_equal(back(to(off)), off)
        assert np.array_equal(to(back(off)), off)
        assert not np.array_equal(to(off), off)
    assert np.array_equal(layouts.torchvision_mask_to_dcnv4(
        layouts.dcnv4_mask_to_torchvision(mask, kernel, groups), kernel, groups), mask)


def test_channels_last_axis():
    rng = np.random.default_rng(1)
    off = rng.normal(size=(2, 18, 3, 4))
    last = np.moveaxis(off, 1, -1)
    a = layouts.dcnv4_to_torchvision(off, 3, 1, axis=1)
    b = layouts.dcnv4_to_torchvision(last, 3, 1, axis=-1)
    assert np.array_equal(np.moveaxis(b, -1, 1), a)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.arange(8.0).reshape(1, 8, 1, 1)
    assert layouts.planar_to_torchvision(t).flatten().tolist() == [0., 4., 1., 5., 2., 6., 3., 7.]
    assert isinstance(layouts.swap_offset_pairs(t), torch.Tensor)


def test_pack_unpack_dcnv4():
    rng = np.random.default_rng(2)
    off, mask = rng.normal(size=(2, 2 * 3 * 4, 3, 5)), rng.normal(size=(2, 3 * 4, 3, 5))
    packed = layouts.pack_dcnv4(off, mask, (2, 2))
    assert packed.shape == (2, 3, 5, 40)                      # 3*3*4 = 36 -> padded to 40
    assert np.all(packed[..., 36:] == 0)
    # per group g at g*3K: 2K offsets (DCNv4 order) then K weights
    assert packed[0, 1, 2, 12 + 8 + 1] == mask[0, 4 + 2, 1, 2]          # g=1, t=1 -> (i,j)=(1,0)
    assert packed[0, 1, 2, 12 + 0] == off[0, 2 * 4 + 1, 1, 2]           # g=1, t=0: dx of tap 0
    o2, m2 = layouts.unpack_dcnv4(packed, (2, 2), 3)
    assert np.array_equal(o2, off) and np.array_equal(m2, mask)


def test_converted_offsets_give_the_same_convolution():
    # a planar-layout producer converted with planar_to_torchvision drives refdcn correctly
    case = make_case(seed=3, kernel=(2, 3), groups=1, offset_groups=2)
    planar = layouts.torchvision_to_planar(case.offset, 2)
    out = refdcn.deform_conv2d(case.input, layouts.planar_to_torchvision(planar, 2), case.weight,
                               case.bias, case.stride, case.padding, case.dilation, case.mask,
                               backend="numpy")
    ref = refdcn.deform_conv2d(*case.args(), backend="numpy")
    assert relative_error(out, ref) <= FLOAT64_RTOL


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, words", [
    (lambda: layouts.planar_to_torchvision(channels(6), offset_groups=2), ["offset", "2*offset_groups"]),
    (lambda: layouts.dcnv4_to_torchvision(channels(10), 3), ["offset.shape[1]", "18"]),
    (lambda: layouts.dcnv4_mask_to_torchvision(channels(10), 3), ["mask.shape[1]", "9"]),
    (lambda: layouts.swap_offset_pairs(channels(5)), ["even"]),
    (lambda: layouts.dcnv4_to_torchvision(channels(18), "3x3"), ["kernel_size"]),
])
def test_errors_name_the_argument(call, words):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    for w in words:
        assert w in str(info.value)
