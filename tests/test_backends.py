"""One suite for every backend: each available backend against the loop reference.

Cases come from one generator (:func:`refdcn.testing.case_strategy`): small shapes that
always have non-square kernels, groups or offset groups > 1, and per-axis stride, padding
and dilation.  float64 must agree to ``FLOAT64_RTOL``; float32 must stay within the
derived element-wise bounds of :mod:`refdcn.tolerances`, for both conventions.
"""

import contextlib
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import refdcn
from refdcn import backends, driver
from refdcn.testing import case_strategy, compare, make_case, reference_results
from refdcn.tolerances import FLOAT64_RTOL, relative_error


def _fast_enough(name):
    caps = backends.capabilities(name)
    return not caps.oracle and not caps.simulated


# the CUDA simulator is too slow for property-based testing; tests/test_cuda.py covers it
BACKENDS = [b for b in backends.available() if _fast_enough(b)]
# every backend but the oracle, simulated ones included: for the few small fixed cases
EVERY = [b for b in backends.available() if not backends.capabilities(b).oracle]
# (backend, dtype) pairs of EVERY: simulated backends (slow) in float64 only
EVERY_DTYPE = [pytest.param(b, dt, id=f"{b}-{np.dtype(dt)}") for b in EVERY
               for dt in (np.float64, np.float32)
               if dt == np.float64 or not backends.capabilities(b).simulated]
BLOCKED = [b for b in BACKENDS if backends.capabilities(b).blocked]
DETERMINISTIC = [b for b in BACKENDS if backends.capabilities(b).deterministic
                 or backends.capabilities(b).deterministic_option]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run(case, backend, convention):
    out = refdcn.deform_conv2d(*case.args(), backend=backend)
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend,
                                      convention=convention)
    return {"output": np.asarray(out), **g._asdict()}


def assert_agrees(case, backend, dtype, convention):
    case = case.astype(dtype)
    expected = reference_results(case, convention)
    report = compare(run(case, backend, convention), expected, case, dtype)
    bad = {q: r for q, r in report.items() if not r[0]}
    assert not bad, f"{backend} {np.dtype(dtype)} {convention} {case.describe()}: {bad}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@SETTINGS
@given(case=case_strategy())
def test_agrees_with_reference(backend, convention, dtype, case):
    """float64: FLOAT64_RTOL; float32: the derived element-wise bounds."""
    assert_agrees(case, backend, dtype, convention)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_border_heavy_cases(backend, dtype):
    """Zero and integer offsets with padding: many samples exactly on -1, 0, H-1 and H."""
    for offsets, seed in (("zero", 1), ("integer", 2), ("integer", 3)):
        case = make_case(seed=seed, batch=2, in_channels=6, out_channels=4, height=5, width=4,
                         kernel=(3, 2), stride=(1, 2), padding=(2, 1), dilation=(1, 2), groups=2,
                         offset_groups=3, offsets=offsets, offset_scale=2)
        for convention in ("torchvision", "mmcv"):
            assert_agrees(case, backend, dtype, convention)


@contextlib.contextmanager
def reproducible(backend):
    """The backend's bitwise-reproducible mode where it is not the default
    (``Capabilities.deterministic_option``: the module's ``set_deterministic``)."""
    caps = backends.capabilities(backend)
    if caps.deterministic or not caps.deterministic_option:
        yield
        return
    module = backends.get(backend)
    previous = module.set_deterministic(True)
    try:
        yield
    finally:
        module.set_deterministic(previous)


def run_with_bound(case, backend, nbytes, convention="torchvision"):
    refdcn.set_column_memory(nbytes)
    try:
        with reproducible(backend):
            return run(case, backend, convention)
    finally:
        refdcn.set_column_memory(None)


def assert_bitwise_equal(a, b, what):
    for q in a:
        if a[q] is None:
            assert b[q] is None, (what, q)
        else:
            assert a[q].dtype == b[q].dtype and a[q].tobytes() == b[q].tobytes(), (what, q)


@pytest.mark.parametrize("backend", BLOCKED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_block_size(backend, dtype):
    """Bitwise identical for blocks of 1, 7 and the whole (prime) batch (the mmcv/torchvision
    bug class), for both conventions; bounds of 1, 7 and 11 images' tiles."""
    case = make_case(seed=12, batch=11, in_channels=4, out_channels=4, height=6, width=5,
                     kernel=(3, 2), stride=1, padding=1, groups=2, offset_groups=2).astype(dtype)
    geom = refdcn.geometry.check_arguments(*case.args())
    per_image = geom.in_channels * geom.taps * geom.out_pixels * np.dtype(dtype).itemsize
    ks, itemsize = backends.get(backend).KERNELS, np.dtype(dtype).itemsize
    bounds = [ks.tile_bytes(geom.with_batch(n), itemsize) for n in (1, 7, 11)]
    assert [len(driver.plan(ks, geom, itemsize, b)) for b in bounds] == [11, 2, 1]
    for convention in ("torchvision", "mmcv"):
        results = [run_with_bound(case, backend, b, convention) for b in bounds]
        for other in results[1:]:
            assert_bitwise_equal(results[0], other, convention)


@pytest.mark.parametrize("backend", BLOCKED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_images_split_into_row_ranges(backend, dtype, monkeypatch):
    """An image whose columns exceed the fixed tile is split into ranges of output rows
    (``driver.TILE_COLUMN_BYTES``, made small here): the results agree with the loop
    reference and are bitwise identical for every bound from one range up (whole batch in
    one call, one range per tile, two ranges per tile)."""
    case = make_case(seed=15, batch=3, in_channels=4, out_channels=6, height=9, width=7,
                     kernel=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2,
                     offset_groups=2).astype(dtype)
    geom = refdcn.geometry.check_arguments(*case.args())
    itemsize = np.dtype(dtype).itemsize
    row = geom.in_channels * geom.taps * geom.out_w * itemsize
    monkeypatch.setattr(driver, "TILE_COLUMN_BYTES", 2 * row)     # ranges of 2 rows
    ks = backends.get(backend).KERNELS
    rows = [ks.tile_bytes(geom.output_rows(1, 0, r), itemsize)
            + driver.split_bytes(geom.output_rows(1, 0, r), itemsize) for r in (1, 2, 3)]
    bounds = [rows[1], rows[2], 2**30]
    tiles = [driver.plan(ks, geom, itemsize, b) for b in bounds]
    assert all(t.row1 - t.row0 <= 2 for t in tiles[0]) and len(tiles[0]) > geom.batch
    assert tiles[0] == tiles[1] == tiles[2]
    for convention in ("torchvision", "mmcv"):
        results = [run_with_bound(case, backend, b, convention) for b in bounds]
        for other in results[1:]:
            assert_bitwise_equal(results[0], other, convention)
        report = compare(results[0], reference_results(case, convention), case, dtype)
        assert all(ok for ok, _, _ in report.values()), (convention, report)
    # below one fixed range, the ranges shrink to one row and the bound still holds
    assert all(t.row1 - t.row0 == 1 for t in driver.plan(ks, geom, itemsize, rows[0]))
    one_row = run_with_bound(case, backend, rows[0])
    report = compare(one_row, reference_results(case, "torchvision"), case, dtype)
    assert all(ok for ok, _, _ in report.values()), report


@pytest.mark.parametrize("backend", DETERMINISTIC)
def test_deterministic_run_to_run(backend):
    case = make_case(seed=13, batch=3, in_channels=4, out_channels=4, height=7, width=6,
                     kernel=(2, 3), padding=1, groups=1, offset_groups=2, offsets="integer")
    with reproducible(backend):
        a = run(case, backend, "torchvision")
        b = run(case, backend, "torchvision")
    for q in a:
        np.testing.assert_array_equal(a[q], b[q])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("backend", EVERY)
def test_non_finite_and_huge_offsets(backend):
    """Offsets of +-inf, NaN, 1e6..1e300, +-2^31, +-2^63 and inf/NaN masks: the same documented
    behaviour as the loop reference (NaN in the same places, the rest within tolerance)."""
    case = make_case(seed=14, batch=2, in_channels=2, out_channels=2, height=5, width=5,
                     kernel=(2, 3), padding=1, groups=1, offset_groups=2)
    flat = case.offset.reshape(-1)
    rng = np.random.default_rng(0)
    idx = rng.choice(flat.size, size=12, replace=False)
    flat[idx] = [np.inf, -np.inf, 1e6, -1e6, 1e30, -1e30, 1e300, np.nan, 2**31, -2**31 - 1,
                 2**63, -2**63]
    case.mask.reshape(-1)[rng.choice(case.mask.size, size=3, replace=False)] = [np.inf, np.nan, -7.5]
    for dtype in (np.float64, np.float32):
        c = case.astype(dtype)
        for convention in ("torchvision", "mmcv"):
            ours = run(c, backend, convention)
            ref = reference_results(c, convention)
            for q, r in ref.items():
                if r is None:
                    continue
                # an infinite mask gives inf or NaN depending on summation order (inf - inf),
                # so the contract is on where results are non-finite, not which non-finite
                np.testing.assert_array_equal(np.isfinite(ours[q]), np.isfinite(r), err_msg=q)
            finite = {q: None if r is None else np.where(np.isfinite(r), r, 0.0)
                      for q, r in ref.items()}
            ours = {q: None if a is None else np.where(np.isfinite(ref[q]), a, 0.0)
                    for q, a in ours.items()}
            report = compare(ours, finite, c, dtype)
            assert all(ok for ok, _, _ in report.values()), report


# Offset groups that straddle convolution groups (C_in = 12, groups 3, offset groups 2),
# non-square kernel, stride/padding/dilation != 1 and different per axis.
MIXED = dict(in_channels=12, out_channels=6, height=7, width=6, kernel=(3, 2), stride=(2, 1),
             padding=(1, 2), dilation=(1, 2), groups=3, offset_groups=2)


@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1-no-bias"])
def test_groups_straddling_offset_groups(backend, dtype, modulated):
    """DCNv2 with bias and DCNv1 without, offset groups across convolution groups."""
    case = make_case(seed=3, batch=2, modulated=modulated, bias=modulated, **MIXED)
    for convention in ("torchvision", "mmcv"):
        assert_agrees(case, backend, dtype, convention)


@pytest.mark.parametrize("backend", EVERY)
def test_empty_batch(backend):
    case = make_case(seed=0, batch=0, **MIXED)
    out = np.asarray(refdcn.deform_conv2d(*case.args(), backend=backend))
    assert out.shape == (0, 6) + case.offset.shape[2:]
    grads = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    assert np.asarray(grads.input).shape == case.input.shape
    assert np.array_equal(np.asarray(grads.weight), np.zeros_like(case.weight))


@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_nan_offset_poisons_only_its_pixel(backend, dtype):
    """inf and huge offsets sample outside (finite results); one NaN offset makes exactly
    the outputs of its pixel NaN, in every output channel of its image."""
    case = make_case(seed=4, batch=2, in_channels=4, out_channels=3, height=5, width=5,
                     kernel=3, padding=1, groups=1, offset_groups=2)
    off = case.offset                        # (2, 36, 5, 5)
    off[0, 0, 1, 1] = np.inf                 # dy of tap 0, group 0 at pixel (1, 1)
    off[0, 3, 2, 2] = -np.inf                # dx of tap 1, group 0 at pixel (2, 2)
    off[1, 20, 0, 3] = 1e30                  # dy of tap 1, group 1
    off[1, 21, 4, 4] = -1e6
    off[1, 7, 3, 0] = np.nan                 # dx of tap 3, group 0 at pixel (3, 0), image 1
    case = case.astype(dtype)
    for convention in ("torchvision", "mmcv"):
        actual = run(case, backend, convention)
        report = compare(actual, reference_results(case, convention), case, dtype)
        assert all(r[0] for r in report.values()), (convention, report)
        nan = np.isnan(actual["output"])
        assert nan[1, :, 3, 0].all()
        nan[1, :, 3, 0] = False
        assert not nan.any()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("with_nan", [False, True], ids=["huge-inf", "huge-inf-nan"])
def test_a_fifth_of_the_offsets_wild(backend, dtype, with_nan):
    """A fifth of the offsets +-1e30, +-inf, 3e38, -5e15 (and NaN): far samples are zero
    and read nothing, NaN lands exactly where the loop reference has it, the rest agrees
    within the derived tolerances."""
    case = make_case(seed=5, batch=2, in_channels=6, out_channels=4, height=7, width=5,
                     kernel=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2,
                     offset_groups=3, offset_scale=2.5)
    flat = case.offset.reshape(-1)
    rng = np.random.default_rng(1)
    specials = [1e30, -1e30, np.inf, -np.inf, 3e38, -5e15] + ([np.nan] if with_nan else [])
    where = rng.choice(flat.size, size=flat.size // 5, replace=False)
    flat[where] = rng.choice(specials, size=where.size)
    case = case.astype(dtype)
    for convention in ("torchvision", "mmcv"):
        got = run(case, backend, convention)
        want = reference_results(case, convention)
        for q, w in want.items():
            if w is not None:
                assert np.array_equal(np.isnan(got[q]), np.isnan(w)), q
                assert with_nan or np.isfinite(got[q]).all(), q
        report = compare(got, want, case, dtype)
        bad = {q: r for q, r in report.items() if not r[0]}
        assert not bad, (convention, bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coordinate_gradients_survive_a_large_common_level(backend):
    """Input = 1e6 + noise, float64.  The offset gradients sum corner *differences*
    over the channels; summing raw corner values instead would cancel the common
    level away (1e-10 relative here).  Compared away from the image border too, whose
    huge gradients (1e6 against the zero padding) would hide interior errors in a
    normwise measure; the small offsets keep interior samples inside."""
    case = make_case(seed=9, batch=1, in_channels=8, out_channels=4, height=10, width=9,
                     kernel=3, padding=1, groups=1, offset_groups=1, offsets="gridsafe",
                     offset_scale=0.5)
    case.input = case.input + 1e6
    got, want = run(case, backend, "torchvision"), reference_results(case, "torchvision")
    for q in ("offset", "mask"):
        inner = (..., slice(3, -3), slice(3, -3))
        assert relative_error(got[q][inner], want[q][inner]) <= FLOAT64_RTOL, q
        assert relative_error(got[q], want[q]) <= FLOAT64_RTOL, q


def test_kernel_record_names_every_size():
    """``Geometry.kernel_record()`` is a namedtuple of ints with the geometry's values."""
    case = make_case(seed=1, batch=2, **MIXED)
    geom = refdcn.geometry.check_arguments(*case.args())
    geo = geom.kernel_record()
    assert isinstance(geo, refdcn.geometry.KernelGeometry)
    assert all(type(v) is int for v in geo)
    assert (geo.stride_h, geo.stride_w, geo.pad_h, geo.pad_w, geo.dilation_h,
            geo.dilation_w) == geom.stride + geom.padding + geom.dilation
    for name in ("batch", "in_channels", "height", "width", "out_channels", "kh", "kw",
                 "groups", "offset_groups", "out_h", "out_w", "taps", "out_pixels",
                 "in_per_group", "out_per_group", "in_per_offset_group"):
        assert getattr(geo, name) == getattr(geom, name), name


_RECORD_SCRIPT = """
import sys
import numpy as np
from numba import cuda, njit, types
from refdcn.geometry import Geometry, KernelGeometry
geom = Geometry(2, 6, 5, 4, 4, 3, 2, (2, 1), (1, 0), (1, 2), 2, 3, 3, 3)
geo = geom.kernel_record()
def body(geo):
    return geo.out_w * 1000 + geo.stride_h * 100 + geo.in_per_offset_group * 10 + geo.kw
want = body(geo)
assert njit(body)(geo) == want
if sys.argv[1] == "sim":
    @cuda.jit
    def kernel(geo, out):
        out[0] = geo.out_w * 1000 + geo.stride_h * 100 + geo.in_per_offset_group * 10 + geo.kw
    out = cuda.to_device(np.zeros(1, np.int64))
    kernel[1, 1](geo, out)
    assert out.copy_to_host()[0] == want
else:
    def kernel(geo, out):
        out[0] = geo.out_w * 1000 + geo.stride_h * 100 + geo.in_per_offset_group * 10 + geo.kw
    record = types.NamedUniTuple(types.int64, len(KernelGeometry._fields), KernelGeometry)
    ptx, _ = cuda.compile_ptx(kernel, (record, types.int64[::1]), cc=(7, 5))
    assert "ld.param" in ptx
print("ok")
"""


@pytest.mark.parametrize("target", ["sim", "ptx"])
def test_kernel_record_is_accepted_by_numba_and_numba_cuda(target):
    """Numba CPU, the CUDA simulator and PTX compilation all take the record as an
    argument and read its fields by name (each in a fresh process: the simulator is
    chosen at import)."""
    import importlib.util
    import os
    import subprocess
    import sys
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if target == "sim":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(refdcn.__file__)), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _RECORD_SCRIPT, target], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


FUSED = [b for b in BLOCKED if backends.get(b).KERNELS.im2col_pixels is not None]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_forward_tiles(backend, dtype, monkeypatch):
    """The fused forward (tiles of ``driver.pixel_tile`` output pixels, each sampled by
    ``im2col_pixels`` and multiplied at once), in tiles of 7 pixels that do not divide the
    25-pixel images, on 1, 2 and 3 threads and with bounds of 1 and 3 images: bitwise the
    same every way, one sampling call per tile, and every output element the product of
    the columns that the unfused im2col samples, within the a-priori bound of a dot
    product of ``Cg*K`` terms, gamma_n * |W| @ |columns| (Higham, eq. 3.5), plus the same
    bound in float64 for the float64 product it is compared with."""
    from refdcn import parallel
    from refdcn.tolerances import gamma
    case = make_case(seed=21, batch=3, in_channels=4, out_channels=6, height=5, width=4,
                     kernel=(3, 2), stride=1, padding=1, groups=2,
                     offset_groups=2).astype(dtype)
    geom = refdcn.geometry.check_arguments(*case.args())
    itemsize = np.dtype(dtype).itemsize
    monkeypatch.setattr(driver, "PIXEL_TILE_BYTES", 1)
    monkeypatch.setattr(driver, "PIXEL_TILE_MIN", 7)
    monkeypatch.setattr(parallel, "SMALL_GEMM_FLOPS", 0)         # tiles on the threads
    assert driver.pixel_tile(geom, itemsize) == 7 and geom.out_pixels == 25
    kernels = backends.get(backend).KERNELS
    calls = []
    ks = dataclasses.replace(kernels, im2col_pixels=lambda *a: (calls.append(a[6]),
                                                                kernels.im2col_pixels(*a)))
    x, off, m, w = (np.ascontiguousarray(a) for a in (case.input, case.offset, case.mask,
                                                      case.weight))
    results = []
    for threads in (1, 2, 3):
        for images in (1, 3):
            parallel.set_num_threads(threads)
            refdcn.set_column_memory(ks.tile_bytes(geom.with_batch(images), itemsize))
            try:
                calls.clear()
                results.append(driver.forward(ks, x, off, m, w, None, geom, dtype))
            finally:
                parallel.set_num_threads(None)
                refdcn.set_column_memory(None)
            assert sorted(calls) == sorted([0, 7, 14, 21] * geom.batch)
    for other in results[1:]:
        assert other.dtype == results[0].dtype and other.tobytes() == results[0].tobytes()
    columns = np.empty((geom.batch, geom.groups, geom.out_pixels,
                        geom.taps * geom.in_per_group), dtype)
    kernels.im2col(x, off, m, geom, columns, None)
    wmat = driver.weight_matrix(kernels, w, geom).astype(np.float64)
    cols = columns.astype(np.float64)
    exact = np.einsum("gok,bgpk->bgop", wmat, cols)
    scale = np.einsum("gok,bgpk->bgop", np.abs(wmat), np.abs(cols))
    got = results[0].reshape(exact.shape)
    n = cols.shape[-1]
    assert (np.abs(got - exact) <= (gamma(n, dtype) + gamma(n, np.float64)) * scale).all()


@pytest.mark.parametrize("backend", FUSED)
def test_forward_unfused_without_a_controllable_blas(backend, monkeypatch):
    """Without threadpoolctl's control of the BLAS, or with a matmul hook other than
    NumPy's, the forward does not fuse (each tile's products would start the BLAS's own
    threads beside refdcn's): im2col_pixels is never called, and the result is the unfused
    forward's, bit for bit."""
    from refdcn import parallel
    case = make_case(seed=22, batch=2, in_channels=4, out_channels=4, height=5, width=6,
                     kernel=(2, 3), groups=2, offset_groups=2).astype(np.float32)
    geom = refdcn.geometry.check_arguments(*case.args())
    kernels = backends.get(backend).KERNELS
    calls = []
    fused = dataclasses.replace(kernels, im2col_pixels=lambda *a: (calls.append(a),
                                                                   kernels.im2col_pixels(*a)))
    args = [np.ascontiguousarray(a) for a in (case.input, case.offset, case.mask, case.weight)]
    unfused = driver.forward(dataclasses.replace(kernels, im2col_pixels=None), *args, None,
                             geom, np.float32)
    other_matmul = dataclasses.replace(fused, matmul=lambda *a, **k: driver.numpy_matmul(*a, **k))
    assert driver.forward(other_matmul, *args, None, geom, np.float32).tobytes() == \
        unfused.tobytes()
    monkeypatch.setattr(parallel, "_blas_libraries", [])              # as with an unknown BLAS
    assert driver.forward(fused, *args, None, geom, np.float32).tobytes() == unfused.tobytes()
    assert calls == []
    monkeypatch.undo()
    driver.forward(fused, *args, None, geom, np.float32)
    assert len(calls) == geom.batch                                   # fused again
