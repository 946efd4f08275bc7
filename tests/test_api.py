"""The public API: argument checking, dtypes, layouts, the backend registry."""

import numpy as np
import pytest

import refdcn
from refdcn import backends
from refdcn.testing import make_case
from refdcn.tolerances import relative_error

CPU_BACKENDS = [b for b in backends.available() if backends.capabilities(b).device == "cpu"]


def small_case(**kw):
    base = dict(seed=0, batch=2, in_channels=4, out_channels=4, height=5, width=6,
                kernel=(3, 2), padding=(1, 0), groups=2, offset_groups=2)
    base.update(kw)
    return make_case(**base)


def call(case, **override):
    args = dict(input=case.input, offset=case.offset, weight=case.weight, bias=case.bias,
                stride=case.stride, padding=case.padding, dilation=case.dilation, mask=case.mask)
    args.update(override)
    return refdcn.deform_conv2d(**args, backend="numpy")


# --- errors: each names the argument and shows what was received and expected ----------------

@pytest.mark.parametrize("override, exc, words", [
    (dict(input=np.zeros((4, 5, 6))), ValueError, ["input", "4-D", "(4, 5, 6)"]),
    (dict(weight=np.zeros((4, 2, 3))), ValueError, ["weight", "4-D"]),
    (dict(offset=np.zeros((2, 24, 5))), ValueError, ["offset", "4-D"]),
    (dict(mask=np.zeros((2, 12, 5))), ValueError, ["mask", "4-D"]),
    (dict(bias=np.zeros((4, 1))), ValueError, ["bias", "1-D"]),
    (dict(offset=np.zeros((2, 23, 5, 5))), ValueError, ["offset.shape[1]", "2*3*2=12", "23"]),
    (dict(offset=np.zeros((2, 0, 5, 5))), ValueError, ["offset.shape[1]"]),
    (dict(mask=np.zeros((2, 11, 5, 5))), ValueError, ["mask", "(2, 12, 5, 5)", "(2, 11, 5, 5)"]),
    (dict(offset=np.zeros((2, 24, 4, 5))), ValueError, ["offset", "(2, 24, 5, 5)", "(2, 24, 4, 5)"]),
    (dict(mask=np.zeros((2, 12, 5, 4))), ValueError, ["mask", "(2, 12, 5, 5)"]),
    (dict(offset=np.zeros((3, 24, 5, 5))), ValueError, ["offset", "(2, 24, 5, 5)", "(3, 24, 5, 5)"]),
    (dict(mask=np.zeros((1, 12, 5, 5))), ValueError, ["mask", "(1, 12, 5, 5)"]),
    (dict(weight=np.zeros((4, 3, 3, 2))), ValueError, ["C_in=4", "weight.shape[1]=3"]),
    (dict(weight=np.zeros((3, 2, 3, 2))), ValueError, ["C_out=3", "groups=2"]),
    (dict(offset=np.zeros((2, 36, 5, 5)), mask=None), ValueError, ["offset_groups=3", "C_in=4"]),
    (dict(bias=np.zeros(5)), ValueError, ["bias", "(4,)", "(5,)"]),
    (dict(input=np.zeros((2, 4, 5, 6), dtype=np.int64)), TypeError, ["input", "floating", "int64"]),
    (dict(offset=np.zeros((2, 24, 5, 5), dtype=np.complex128)), TypeError, ["offset", "complex128"]),
    (dict(mask=np.zeros((2, 12, 5, 5), dtype=bool)), TypeError, ["mask", "bool"]),
    (dict(weight=np.zeros((4, 2, 3, 2), dtype=np.int32)), TypeError, ["weight", "int32"]),
    (dict(padding=-1), ValueError, ["padding", "non-negative", "-1"]),
    (dict(padding=(1, -2)), ValueError, ["padding", "(1, -2)"]),
    (dict(stride=0), ValueError, ["stride", ">= 1", "0"]),
    (dict(stride=(1, -1)), ValueError, ["stride"]),
    (dict(dilation=0), ValueError, ["dilation", ">= 1"]),
    (dict(stride=1.5), TypeError, ["stride", "1.5"]),
    (dict(stride=(1, 2, 3)), TypeError, ["stride", "pair"]),
    (dict(padding="1"), TypeError, ["padding"]),
    (dict(input=[[1.0]]), ValueError, ["input", "4-D", "(1, 1)"]),
    (dict(input="abc"), TypeError, ["input", "floating", "<U3"]),
    (dict(input=None), TypeError, ["input", "None"]),
])
def test_bad_arguments_raise_clear_errors(override, exc, words):
    case = small_case()
    with pytest.raises(exc) as info:
        call(case, **override)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_output_too_small():
    case = small_case()
    with pytest.raises(ValueError, match=r"the output would be .*too small"):
        refdcn.deform_conv2d(np.zeros((1, 4, 2, 2)), np.zeros((1, 24, 1, 1)), case.weight,
                             padding=0, dilation=3)


def test_grad_output_shape_checked():
    case = small_case()
    with pytest.raises(ValueError, match=r"grad_output .*\(2, 4, 5, 5\).*\(2, 4, 5, 6\)"):
        refdcn.deform_conv2d_backward(np.zeros((2, 4, 5, 6)), *case.args(), backend="numpy")


def test_unknown_backend_and_convention():
    case = small_case()
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        refdcn.deform_conv2d(*case.args(), backend="fast")
    with pytest.raises(ValueError, match="convention must be one of"):
        refdcn.deform_conv2d_backward(case.grad_output, *case.args(), convention="tv")


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "ghost", "refdcn.backends._no_such_module")
    monkeypatch.setitem(backends.INSTALL_HINTS, "ghost", "pip install ghost")
    assert "ghost" in backends.unavailable()
    assert "ghost" not in backends.available()
    with pytest.raises(backends.BackendUnavailable, match=r"'ghost' is not available.*pip install ghost"):
        refdcn.deform_conv2d(*small_case().args(), backend="ghost")
    backends._errors.pop("ghost", None)


def test_registry_lists_reason_for_every_unavailable_backend():
    avail, missing = backends.available(), backends.unavailable()
    assert {"reference", "numpy"} <= set(avail)
    assert set(avail) | set(missing) == set(backends.REGISTRY)
    assert not set(avail) & set(missing)
    assert all(isinstance(r, str) and r for r in missing.values())
    assert backends.fastest_cpu() in avail


# --- shapes and dtypes ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch_zero_returns_empty(backend):
    case = small_case(batch=0)
    out = refdcn.deform_conv2d(*case.args(), backend=backend)
    assert out.shape == (0, 4, 5, 5)
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    assert g.input.shape == case.input.shape and g.offset.shape == case.offset.shape
    assert g.mask.shape == case.mask.shape
    assert np.all(g.weight == 0) and np.all(g.bias == 0)


def test_gradients_named_tuple_with_none():
    case = small_case(modulated=False, bias=False)
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend="numpy")
    assert g._fields == ("input", "offset", "mask", "weight", "bias")
    assert g.mask is None and g.bias is None
    assert g.weight.shape == case.weight.shape


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dtypes(backend):
    case = small_case(batch=1)
    out64 = refdcn.deform_conv2d(*case.args(), backend=backend)
    out32 = refdcn.deform_conv2d(*case.astype(np.float32).args(), backend=backend)
    out16 = refdcn.deform_conv2d(*case.astype(np.float16).args(), backend=backend)
    assert out64.dtype == np.float64
    always64 = backends.capabilities(backend).compute_dtype == "float64"
    expected_low = np.float64 if always64 else np.float32
    assert out32.dtype == expected_low and out16.dtype == expected_low
    mixed = case.astype(np.float32)
    mixed.offset = case.offset          # one float64 argument promotes the computation
    assert refdcn.deform_conv2d(*mixed.args(), backend=backend).dtype == np.float64


def test_stride_padding_dilation_int_or_pair_equivalent():
    case = small_case()
    case = small_case(padding=1, kernel=(3, 3))
    a = refdcn.deform_conv2d(case.input, case.offset, case.weight, case.bias, 1, 1, 1, case.mask,
                             backend="numpy")
    b = refdcn.deform_conv2d(case.input, case.offset, case.weight, case.bias, (1, 1), [1, 1],
                             np.array([1, 1]), case.mask, backend="numpy")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_and_read_only_inputs(backend):
    case = small_case()
    expected = refdcn.deform_conv2d(*case.args(), backend=backend)
    big = {k: np.asfortranarray(getattr(case, k)) for k in ("input", "offset", "weight", "mask")}
    strided_input = np.repeat(case.input, 2, axis=3)[..., ::2]     # a strided view
    assert not strided_input.flags.c_contiguous
    for a in big.values():
        a.flags.writeable = False
    out = refdcn.deform_conv2d(strided_input, big["offset"], big["weight"], case.bias,
                               case.stride, case.padding, case.dilation, big["mask"],
                               backend=backend)
    np.testing.assert_array_equal(out, expected)
    g = refdcn.deform_conv2d_backward(case.grad_output[:, ::-1][:, ::-1], strided_input,
                                      big["offset"], big["weight"], case.bias, case.stride,
                                      case.padding, case.dilation, big["mask"], backend=backend)
    g0 = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    for a, b in zip(g, g0):
        np.testing.assert_array_equal(a, b)


def test_inputs_are_not_modified():
    case = small_case()
    before = [a.copy() for a in (case.input, case.offset, case.weight, case.mask, case.bias,
                                 case.grad_output)]
    for backend in CPU_BACKENDS:
        refdcn.deform_conv2d(*case.args(), backend=backend)
        refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    after = (case.input, case.offset, case.weight, case.mask, case.bias, case.grad_output)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_zero_offsets_equal_regular_convolution():
    """With zero offsets and no mask, deformable convolution is conv2d with zero padding."""
    case = small_case(offsets="zero", modulated=False, groups=1, offset_groups=1, kernel=(3, 3),
                      padding=1)
    out = refdcn.deform_conv2d(*case.args(), backend="numpy")
    x = np.pad(case.input, ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, c, h, w = case.input.shape
    conv = np.zeros_like(out)
    for i in range(3):
        for j in range(3):
            conv += np.einsum("oc,nchw->nohw", case.weight[:, :, i, j], x[:, :, i:i + h, j:j + w])
    conv += case.bias[:, None, None]
    assert relative_error(out, conv) < 1e-13


def test_column_memory_setting(monkeypatch):
    refdcn.set_column_memory(1000)
    try:
        assert refdcn.column_memory() == 1000
    finally:
        refdcn.set_column_memory(None)
    monkeypatch.setenv("REFDCN_COLUMN_MEMORY", "2MiB")
    assert refdcn.column_memory() == 2 * 2**20
    monkeypatch.setenv("REFDCN_COLUMN_MEMORY", "lots")
    with pytest.raises(ValueError, match="REFDCN_COLUMN_MEMORY"):
        refdcn.column_memory()
    with pytest.raises(ValueError, match="nbytes"):
        refdcn.set_column_memory(-5)


@pytest.mark.parametrize("text, nbytes", [("512MiB", 512 * 2**20), ("2 GiB", 2 * 2**30),
                                          ("64k", 64 * 2**10), ("1.5KiB", 1536),
                                          ("100", 100), ("7B", 7)])
def test_set_column_memory_accepts_what_the_environment_accepts(text, nbytes, monkeypatch):
    refdcn.set_column_memory(text)
    try:
        assert refdcn.column_memory() == nbytes
    finally:
        refdcn.set_column_memory(None)
    monkeypatch.setenv("REFDCN_COLUMN_MEMORY", text)
    assert refdcn.column_memory() == nbytes


@pytest.mark.parametrize("bad, error", [(True, TypeError), (False, TypeError),
                                        (np.bool_(True), TypeError), (1.5, TypeError),
                                        (2.0**20, TypeError), (0, ValueError),
                                        (-1, ValueError), ("0MiB", ValueError),
                                        ("-5", ValueError), ("lots", ValueError),
                                        ([1], TypeError)])
def test_set_column_memory_rejects_with_a_clear_error(bad, error):
    with pytest.raises(error, match="nbytes"):
        refdcn.set_column_memory(bad)
    assert refdcn.column_memory() == refdcn.driver.DEFAULT_COLUMN_MEMORY


def test_cuda_column_memory_variable_is_an_alias(monkeypatch):
    monkeypatch.delenv("REFDCN_COLUMN_MEMORY", raising=False)
    monkeypatch.setenv("REFDCN_CUDA_COLUMN_MEMORY", "3MiB")
    assert refdcn.column_memory() == 3 * 2**20
    monkeypatch.setenv("REFDCN_COLUMN_MEMORY", "5MiB")
    assert refdcn.column_memory() == 5 * 2**20
