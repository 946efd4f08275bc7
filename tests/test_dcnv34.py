"""DCNv3 / DCNv4: every backend against the loop reference, finite differences, layouts, errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refdcn
from refdcn import conformance_dcnv34 as conf, handworked, layouts
from refdcn.backends import BackendUnavailable
from refdcn.dcnv34 import api, geometry, tolerances as tol32
from refdcn.testing import numerical_gradient
from refdcn.tolerances import FLOAT64_RTOL, relative_error

FAST = api.fast_backends()
OPS = conf.OPS


def _run(case, op, backend, dtype=np.float64, convention="mmcv"):
    c = case.astype(dtype)
    if op == "dcnv3":
        out = refdcn.dcnv3(c.input, c.offset, c.mask, **c.attrs, backend=backend)
        g = refdcn.dcnv3_backward(c.grad_output, c.input, c.offset, c.mask, **c.attrs,
                                  backend=backend, convention=convention)
    else:
        out = refdcn.dcnv4(c.input, c.packed(), **c.attrs, backend=backend)
        g = refdcn.dcnv4_backward(c.grad_output, c.input, c.packed(), **c.attrs,
                                  backend=backend, convention=convention)
    return {"output": out, **g._asdict()}


def test_fast_backends_exist():
    assert FAST, "no fast DCNv3/DCNv4 backend is available (numba missing?)"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", conf.names())
def test_backend_matches_loop_reference(backend, op, name):
    case = conf.get_case(name).build()
    expected = conf.expected(name, op)
    actual = _run(case, op, backend)
    for q, e in expected.items():
        assert actual[q].shape == e.shape
        assert relative_error(actual[q], e) <= FLOAT64_RTOL, (q, relative_error(actual[q], e))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name", ["border_exact_y", "border_exact_x", "zero_offsets_pad1",
                                  "integer_offsets"])
def test_torchvision_convention_on_request(backend, name):
    case = conf.get_case(name).build()
    ref = conf.reference_results(case, "dcnv3", convention="torchvision")
    mm = conf.expected(name, "dcnv3")
    got = _run(case, "dcnv3", backend, convention="torchvision")
    assert relative_error(got["offset"], ref["offset"]) <= FLOAT64_RTOL
    # exact landings on -1 exist in these cases, so the two rules must differ there
    assert not np.allclose(ref["offset"], mm["offset"])
    for q in ("output", "input", "mask"):
        np.testing.assert_array_equal(ref[q], mm[q])


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ["groups_nonsquare", "offset_scale_2", "remove_center_3x3",
                                  "packed_padding", "border_bands", "huge_offsets"])
def test_float32_within_derived_bounds(backend, op, name):
    case = conf.get_case(name).build().astype(np.float32).astype(np.float64)
    expected = conf.reference_results(case, op)
    bounds = tol32.float32_bounds(case.input, case.offset, case.mask, case.grad_output,
                                  case.attrs)
    if op == "dcnv4":
        bounds = tol32.pack_bounds(bounds, case.packed().shape, case.attrs["group"], case.taps)
    actual = _run(case, op, backend, np.float32)
    for q, e in expected.items():
        assert actual[q].dtype == np.float32
        excess = np.abs(actual[q].astype(np.float64) - e) - bounds[q]
        assert excess.max(initial=-1.0) <= 0, (q, excess.max())


# ------------------------------------------------------------------ finite differences
def _fd_case(**kw):
    base = dict(seed=5, batch=1, height=4, width=5, group=2, group_channels=2, kernel=(2, 3),
                pad=(1, 1), offsets="gridsafe", offset_scale=1.5)
    base.update(kw)
    return conf.make_case(**base)


@pytest.mark.parametrize("kw", [{}, dict(kernel=(3, 3), remove_center=True, offset_scale=0.5,
                                          stride=(2, 1), dilation=(1, 2), pad=(1, 2))],
                         ids=["scale1.5", "remove_center"])
def test_dcnv3_gradients_by_finite_differences(kw):
    case = _fd_case(**kw)
    g = refdcn.dcnv3_backward(case.grad_output, case.input, case.offset, case.mask, **case.attrs,
                              backend="reference")

    def f():
        return refdcn.dcnv3(case.input, case.offset, case.mask, **case.attrs, backend=FAST[0])
    for name, array, grad in (("input", case.input, g.input), ("offset", case.offset, g.offset),
                              ("mask", case.mask, g.mask)):
        numeric = numerical_gradient(f, array, case.grad_output)
        assert relative_error(grad, numeric) < 1e-7, name


@pytest.mark.parametrize("softmax", [False, True])
def test_dcnv4_gradients_by_finite_differences(softmax):
    case = _fd_case(seed=6, kernel=(3, 3))
    packed = case.packed()
    g = refdcn.dcnv4_backward(case.grad_output, case.input, packed, **case.attrs,
                              softmax=softmax, backend="reference")

    def f():
        return refdcn.dcnv4(case.input, packed, **case.attrs, softmax=softmax, backend=FAST[0])
    assert relative_error(g.input, numerical_gradient(f, case.input, case.grad_output)) < 1e-7
    numeric = numerical_gradient(f, packed, case.grad_output)
    assert relative_error(g.offset_mask, numeric) < 1e-7
    k = 3 * case.attrs["group"] * case.taps
    assert packed.shape[-1] > k and not g.offset_mask[..., k:].any()   # padding: gradient 0


# ------------------------------------------------------------------ layouts
def test_dcnv4_is_dcnv3_on_the_packed_layout():
    case = conf.get_case("groups_nonsquare").build()
    out3 = refdcn.dcnv3(case.input, case.offset, case.mask, **case.attrs)
    out4 = refdcn.dcnv4(case.input, case.packed(), **case.attrs)
    np.testing.assert_array_equal(out3, out4)
    g3 = refdcn.dcnv3_backward(case.grad_output, case.input, case.offset, case.mask, **case.attrs)
    g4 = refdcn.dcnv4_backward(case.grad_output, case.input, case.packed(), **case.attrs)
    n, ho, wo, _ = case.offset.shape
    G, K = case.attrs["group"], case.taps
    per = g4.offset_mask[..., :3 * G * K].reshape(n, ho, wo, G, 3 * K)
    np.testing.assert_array_equal(per[..., :2 * K].reshape(case.offset.shape), g3.offset)
    np.testing.assert_array_equal(per[..., 2 * K:].reshape(case.mask.shape), g3.mask)


@pytest.mark.parametrize("backend", api.available())
def test_packed_padding_is_never_read(backend):
    case = conf.get_case("packed_padding").build()
    a = case.packed()
    b = a.copy()
    k = 3 * case.attrs["group"] * case.taps
    b[..., k:] = np.nan
    np.testing.assert_array_equal(refdcn.dcnv4(case.input, a, **case.attrs, backend=backend),
                                  refdcn.dcnv4(case.input, b, **case.attrs, backend=backend))


def test_dcnv4_softmax_flag_is_dcnv3_with_softmax_weights():
    case = conf.get_case("groups_nonsquare").build()
    n, ho, wo, _ = case.mask.shape
    soft = api.tap_softmax(case.mask.reshape(n, ho, wo, case.attrs["group"], case.taps))
    out3 = refdcn.dcnv3(case.input, case.offset, soft.reshape(case.mask.shape), **case.attrs)
    out4 = refdcn.dcnv4(case.input, case.packed(), **case.attrs, softmax=True)
    assert relative_error(out4, out3) <= FLOAT64_RTOL


def test_unpack_dcnv4_converter_agrees_with_the_operator():
    """refdcn.layouts' DCNv4 converters + DCNv2 with a diagonal weight compute dcnv4."""
    case = conf.get_case("packed_padding").build()
    kh, kw, G = case.attrs["kernel_h"], case.attrs["kernel_w"], case.attrs["group"]
    offset, mask = layouts.unpack_dcnv4(case.packed(), (kh, kw), G)
    C = case.input.shape[-1]
    weight = np.zeros((C, C, kh, kw))
    weight[np.arange(C), np.arange(C)] = 1.0
    out2 = refdcn.deform_conv2d(case.input.transpose(0, 3, 1, 2), offset, weight, mask=mask,
                                padding=(case.attrs["pad_h"], case.attrs["pad_w"]))
    out4 = refdcn.dcnv4(case.input, case.packed(), **case.attrs)
    assert relative_error(out2.transpose(0, 2, 3, 1), out4) <= FLOAT64_RTOL


def test_tap_order_is_x_major():
    assert geometry.tap_order(2, 3, False) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert (1, 1) not in geometry.tap_order(3, 3, True)
    assert geometry.packed_channels(1, 9) == 32 and geometry.packed_channels(4, 8) == 96
    # the same order as refdcn.layouts' DCNv3/v4 channel maps (which have no remove_center)
    for kh, kw in ((2, 3), (3, 1), (3, 3)):
        for t, (i, j) in enumerate(geometry.tap_order(kh, kw, False)):
            assert layouts.dcnv4_mask_channel(1, i, j, (kh, kw)) == kh * kw + t
            assert layouts.dcnv4_offset_channel(0, i, j, 1, (kh, kw)) == 2 * t       # dx first
            assert layouts.dcnv4_offset_channel(0, i, j, 0, (kh, kw)) == 2 * t + 1   # then dy


@pytest.mark.parametrize("backend", api.available())
def test_hand_computed_offset_scale(backend):
    """offset_scale 2 doubles the kernel's footprint about its centre (handworked.py)."""
    out = refdcn.dcnv3(handworked.DCNV3_RAMP, np.zeros((1, 3, 3, 18)), np.ones((1, 3, 3, 9)), 3, 3,
                       offset_scale=2.0, backend=backend)
    np.testing.assert_array_equal(out[0, :, :, 0], handworked.DCNV3_SCALE2_OUTPUT)


def test_dtypes_and_empty_batch():
    case = conf.get_case("random_0").build()
    assert refdcn.dcnv3(*(a.astype(np.float32) for a in (case.input, case.offset, case.mask)),
                        **case.attrs).dtype == np.float32
    assert refdcn.dcnv3(case.input.astype(np.float32), case.offset, case.mask.astype(np.float32),
                        **case.attrs, backend="reference").dtype == np.float64
    for backend in api.available():
        empty = refdcn.dcnv4(case.input[:0], case.packed()[:0], **case.attrs, backend=backend)
        assert empty.shape == (0,) + case.grad_output.shape[1:]
        g = refdcn.dcnv4_backward(case.grad_output[:0], case.input[:0], case.packed()[:0],
                                  **case.attrs, backend=backend)
        assert g.input.shape == case.input[:0].shape and g.offset_mask.shape[0] == 0


# ------------------------------------------------------------------ errors
def _args():
    case = conf.get_case("groups_nonsquare").build()
    return case, dict(case.attrs)


@pytest.mark.parametrize("change, error, words", [
    (dict(group=4), ValueError, "group*group_channels"),
    (dict(group_channels=3), ValueError, "group*group_channels"),
    (dict(kernel_h=0), ValueError, "kernel_h"),
    (dict(stride_w=1.5), TypeError, "stride_w"),
    (dict(pad_h=-1), ValueError, "pad_h"),
    (dict(dilation_h=True), TypeError, "dilation_h"),
    (dict(offset_scale=float("nan")), ValueError, "offset_scale"),
    (dict(remove_center=True), ValueError, "remove_center"),
    (dict(remove_center="yes"), TypeError, "remove_center"),
    (dict(kernel_w=2), ValueError, "offset"),
])
def test_bad_attributes_are_named(change, error, words):
    case, attrs = _args()
    attrs.update(change)
    with pytest.raises(error, match=words.replace("*", r"\*")):
        refdcn.dcnv3(case.input, case.offset, case.mask, **attrs)


def test_bad_arrays_are_named():
    case, attrs = _args()
    with pytest.raises(ValueError, match="mask"):
        refdcn.dcnv3(case.input, case.offset, case.mask[..., 1:], **attrs)
    with pytest.raises(TypeError, match="offset"):
        refdcn.dcnv3(case.input, case.offset.astype(np.int64), case.mask, **attrs)
    if np.dtype(np.longdouble).itemsize > 8:          # float128: wider than refdcn computes
        with pytest.raises(TypeError, match="input"):
            refdcn.dcnv3(case.input.astype(np.longdouble), case.offset, case.mask, **attrs)
    with pytest.raises(ValueError, match="stride_h"):
        refdcn.dcnv3(case.input, case.offset, case.mask, **dict(attrs, stride_h=2**40))
    with pytest.raises(ValueError, match="input"):
        refdcn.dcnv3(case.input[0], case.offset, case.mask, **attrs)
    with pytest.raises(ValueError, match="offset_mask"):
        refdcn.dcnv4(case.input, case.packed()[..., :3 * 3 * 6 - 1], **attrs)
    with pytest.raises(ValueError, match="grad_output"):
        refdcn.dcnv3_backward(case.grad_output[:, 1:], case.input, case.offset, case.mask,
                              **attrs)
    with pytest.raises(ValueError, match="convention"):
        refdcn.dcnv3_backward(case.grad_output, case.input, case.offset, case.mask, **attrs,
                              convention="nope")
    with pytest.raises(ValueError, match="too small"):
        refdcn.dcnv3(case.input[:, :1, :1], case.offset, case.mask, **attrs)


def test_backends_without_dcnv34_kernels_say_so():
    case, attrs = _args()
    with pytest.raises(BackendUnavailable, match="no DCNv3/DCNv4 kernels"):
        refdcn.dcnv3(case.input, case.offset, case.mask, **attrs, backend="cython")
    with pytest.raises(ValueError, match="backend"):
        refdcn.dcnv3(case.input, case.offset, case.mask, **attrs, backend="nope")


def test_bench_dcnv34_smoke(capsys):
    from refdcn.benchmarks import dcnv34 as bench
    rows = bench.run("dcnv4", shapes=[(1, 4, 5, 2, 2)], repeats=1, warmup=0, threads=1)
    impls = [r["impl"] for r in rows]
    assert impls[:len(FAST)] == [f"refdcn:{b}" for b in FAST]
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)
    if "torch grid_sample" in impls:
        assert "x_torch_forward" in rows[0]
    assert "refdcn bench --op dcnv4" in capsys.readouterr().out


# ------------------------------------------------------------------ property-based
@st.composite
def _cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rc = kh == kw and kh % 2 == 1 and kh > 1 and draw(st.booleans())
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    while min(refdcn.output_size(h, w, (kh, kw), stride, pad, dilation)) < 1:
        h, w = h + 1, w + 1
    return conf.make_case(seed=draw(st.integers(0, 2**16)), batch=draw(st.integers(1, 2)),
                          height=h, width=w, group=draw(st.integers(1, 3)),
                          group_channels=draw(st.integers(1, 3)), kernel=(kh, kw),
                          stride=stride, pad=pad, dilation=dilation,
                          offset_scale=draw(st.sampled_from([1.0, 0.5, 1.25, 2.0])),
                          remove_center=rc,
                          offsets=draw(st.sampled_from(["random", "integer", "zero"])))


@settings(max_examples=25, deadline=None)
@given(case=_cases(), op=st.sampled_from(OPS))
def test_fast_backends_match_reference_on_random_arguments(case, op):
    expected = conf.reference_results(case, op)
    for backend in FAST:
        actual = _run(case, op, backend)
        for q, e in expected.items():
            assert relative_error(actual[q], e) <= FLOAT64_RTOL, (backend, q)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("what", ["input", "offset", "mask", "grad_output"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_follow_the_reference(backend, what, value):
    """One IEEE rule: NaN/inf in any argument give the reference's NaNs, infs and values."""
    rng = np.random.default_rng(abs(hash((what, str(value)))) % 2**32)
    for name in ("groups_nonsquare", "zero_offsets_pad1"):
        case = conf.get_case(name).build()
        array = getattr(case, what)
        for _ in range(2):
            array[tuple(rng.integers(0, s) for s in array.shape)] = value
        with np.errstate(all="ignore"):
            expected = conf.reference_results(case, "dcnv3")
            actual = _run(case, "dcnv3", backend)
        for q, e in expected.items():
            a = actual[q]
            np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=q)
            np.testing.assert_array_equal(a[np.isinf(e)], e[np.isinf(e)], err_msg=q)
            finite = np.isfinite(e)
            assert relative_error(a[finite], e[finite]) <= FLOAT64_RTOL, q


def test_kernel_cache_is_keyed_on_the_dcnv3_kernels_source():
    """The hash-keyed Numba cache must cover every file whose kernels it stores, or an edit
    that keeps line numbers would load stale machine code."""
    import pathlib
    from refdcn.backends import _numba_cache
    root = pathlib.Path(refdcn.__file__).parent
    users = {str(p.relative_to(root)) for p in (root / "backends").glob("*.py")
             if "_Kernel" in p.read_text() or "_numba_cache.enable" in p.read_text()}
    users.discard("backends/_numba_cache.py")
    assert users <= set(_numba_cache.DEPENDENCIES), users - set(_numba_cache.DEPENDENCIES)
