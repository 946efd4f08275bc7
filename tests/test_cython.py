"""The "cython" backend: the build, the mirror of refdcn/bilinear.py, the kernels.

* CI sets ``REFDCN_REQUIRE_CYTHON=1``: then a missing or broken extension fails
  :func:`test_extension_is_built` instead of skipping everything silently.
* ``refdcn/_cy/bilinear.pxd`` must mirror ``refdcn/bilinear.py``: same functions
  in the same order with the same parameters, and bitwise the same results on
  a grid of awkward coordinates (-1, 0, H-1, H, fractions, 1e30, inf, NaN).
* The kernels: bitwise the same columns as the "numpy" backend and bitwise the
  same results as the "numba" backend (the same kernels) on the conformance
  cases; agreement with the loop reference with tiny pixel chunks and channel
  blocks, so that every boundary is crossed; bitwise independence of the
  number of threads; no OpenMP; the reused column buffer is never handed out
  while in use.

Agreement, block-size invariance, determinism, non-finite inputs, both
conventions and both dtypes are tested once for every backend in
tests/test_backends.py.
"""

import ast
import itertools
import math
import os
import pathlib
import re

import numpy as np
import pytest

import refdcn
from refdcn import backends, bilinear, conformance, parallel
from refdcn.backends import _tasks
from refdcn.geometry import check_arguments
from refdcn.backends import numpy_cpu as numpy_backend
from refdcn.testing import all_results, compare, make_case, reference_results

ROOT = pathlib.Path(refdcn.__file__).parent
CONVENTIONS = {"torchvision": bilinear.BORDER_TORCHVISION, "mmcv": bilinear.BORDER_MMCV}


def test_extension_is_built():
    """Fails under REFDCN_REQUIRE_CYTHON=1 when the backend is unavailable; else skips."""
    if "cython" in backends.available():
        assert backends.get("cython").NAME == "cython"
        return
    reason = backends.unavailable()["cython"]
    if os.environ.get("REFDCN_REQUIRE_CYTHON") == "1":
        pytest.fail(f"REFDCN_REQUIRE_CYTHON=1 but the 'cython' backend is unavailable: {reason}")
    pytest.skip(f"'cython' backend unavailable: {reason}")


def _backend():
    if "cython" not in backends.available():
        pytest.skip(f"'cython' backend unavailable: {backends.unavailable()['cython']}")
    return backends.get("cython")


@pytest.fixture(scope="module")
def cy():
    return _backend()


@pytest.fixture(scope="module")
def kernels(cy):
    from refdcn._cy import kernels
    return kernels


# --------------------------------------------------------------------------- the mirror

def _python_functions():
    """[(name, [parameter names])] of the top-level functions of refdcn/bilinear.py, in order."""
    tree = ast.parse((ROOT / "bilinear.py").read_text())
    return [(f.name, [a.arg for a in f.args.args]) for f in tree.body
            if isinstance(f, ast.FunctionDef)]


def _pxd_functions():
    """[(name, [parameter names])] of the ``cdef inline`` functions of bilinear.pxd, in order."""
    text = (ROOT / "_cy" / "bilinear.pxd").read_text()
    found = []
    for m in re.finditer(r"^cdef inline\s+(?:\([^)]*\)|[\w ]+?)\s+(\w+)\((.*?)\)\s*noexcept",
                         text, re.M | re.S):
        signature = re.sub(r"\[[^\]]*\]", "", m.group(2))      # drop memoryview axes
        params = [p.split()[-1] for p in signature.split(",") if p.strip()]
        found.append((m.group(1), params))
    return found


def test_pxd_mirrors_function_names_order_and_parameters():
    python, pxd = _python_functions(), _pxd_functions()
    assert [n for n, _ in python], "no functions found in bilinear.py"
    assert pxd == python


def test_pxd_mirrors_constants():
    text = (ROOT / "_cy" / "bilinear.pxd").read_text()
    block = re.search(r"^cdef enum:\n((?:    .*\n)+)", text, re.M).group(1)
    values = dict(re.findall(r"(\w+)\s*=\s*(-?\d+)", block))
    expected = {name: getattr(bilinear, name)
                for name in ("BORDER_TORCHVISION", "BORDER_MMCV", "OUTSIDE")}
    assert {k: int(v) for k, v in values.items()} == expected


def _same(a, b):
    """Bitwise equality of nested tuples of numbers (NaN equals NaN, -0.0 differs from 0.0)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return bool(a) == bool(b) and isinstance(b, (bool, np.bool_, int))
    return np.float64(a).tobytes() == np.float64(b).tobytes()


PLANE = np.arange(1.0, 13.0).reshape(3, 4)          # H = 3, W = 4
H, W = PLANE.shape
COORDS = [-math.inf, -1e30, -2.0, -1.5, -1.0, -0.75, -0.0, 0.0, 0.3, 1.0, 1.5, H - 1.0,
          H - 0.5, float(H), W - 1.0, W - 0.25, float(W), 4.5, 1e30, math.inf, math.nan]


def test_mirror_locate_and_samples_are_bitwise_equal(kernels):
    """Against the Python functions on a float64 plane.

    (On float32 planes the Python scalar code would round some steps to
    float32 -- NumPy's scalar promotion -- while every compiled kernel, like
    the "numpy" backend's arrays, computes in double; the float32
    specialisation must equal the float64 one on the same values.)
    """
    p32 = PLANE.astype(np.float32)
    for y, x in itertools.product(COORDS, COORDS):
        for closed in (False, True):
            got = kernels._py_locate(y, x, H, W, closed)
            want = bilinear.locate(y, x, H, W, closed)
            assert _same(got, want), (y, x, closed, got, want)
        sample = kernels._py_bilinear_sample(PLANE, H, W, y, x)
        assert _same(sample, bilinear.bilinear_sample(PLANE, H, W, y, x)), (y, x)
        assert _same(kernels._py_bilinear_sample(p32, H, W, y, x), sample), (y, x)
        for conv in CONVENTIONS.values():
            gradient = kernels._py_bilinear_gradient(PLANE, H, W, y, x, conv)
            assert _same(gradient, bilinear.bilinear_gradient(PLANE, H, W, y, x, conv)), (y, x)
            assert _same(kernels._py_bilinear_gradient(p32, H, W, y, x, conv), gradient), (y, x)


def test_mirror_pixels_and_corners(kernels):
    p32 = PLANE.astype(np.float32)
    for yy, xx in itertools.product(range(-3, H + 2), range(-3, W + 2)):
        assert kernels._py_in_image(yy, xx, H, W) == bilinear.in_image(yy, xx, H, W)
        for plane in (PLANE, p32):
            assert _same(kernels._py_pixel(plane, yy, xx, H, W),
                         bilinear.pixel(PLANE, yy, xx, H, W))
            assert _same(kernels._py_corners(plane, yy, xx, H, W),
                         bilinear.corners(PLANE, yy, xx, H, W))


def test_mirror_scatter_add(kernels):
    """The adjoint on every awkward point: the same pixels receive bitwise the same sums."""
    for y, x in itertools.product(COORDS, COORDS):
        for value in (1.0, -2.5, math.nan):
            got, want = np.zeros((H, W)), np.zeros((H, W))
            kernels._py_scatter_add(got, H, W, y, x, value)
            bilinear.scatter_add(want, H, W, y, x, value)
            assert got.tobytes() == want.tobytes(), (y, x, value)


def test_mirror_arithmetic(kernels):
    rng = np.random.default_rng(0)
    fractions = [0.0, -0.0, 0.25, 0.5, 0.999999, 1 / 3, math.nan] + list(rng.uniform(size=5))
    for ly, lx in itertools.product(fractions, fractions):
        assert _same(kernels._py_corner_weights(ly, lx), bilinear.corner_weights(ly, lx))
        v = tuple(float(t) for t in rng.normal(size=4) * 10.0 ** rng.integers(-3, 4))
        assert _same(kernels._py_interpolate(*v, ly, lx), bilinear.interpolate(*v, ly, lx))
        w = bilinear.corner_weights(ly, lx)
        assert _same(kernels._py_weighted_sum(*v, *w), bilinear.weighted_sum(*v, *w))
        assert _same(kernels._py_interpolate_gradient(*v, ly, lx),
                     bilinear.interpolate_gradient(*v, ly, lx))
        for y0, x0 in ((0, 0), (bilinear.OUTSIDE, 1), (H - 1, W - 1), (-1, -1)):
            assert _same(kernels._py_scatter_corners(y0, x0, ly, lx),
                         bilinear.scatter_corners(y0, x0, ly, lx))
            assert _same(kernels._py_weighted_targets(y0, x0, *w),
                         bilinear.weighted_targets(y0, x0, *w))
    deltas = [0.0, -0.0, 0.3, -1.7, 1e30, -1e30, math.inf, -math.inf, math.nan, 1e-300]
    for out_index, stride, padding, tap, dilation, delta in itertools.product(
            [0, 3], [1, 2], [0, 2], [0, 2], [1, 3], deltas):
        assert _same(kernels._py_sampling_point(out_index, stride, padding, tap, dilation, delta),
                     bilinear.sampling_point(out_index, stride, padding, tap, dilation, delta))
        for centre, scale in ((0, 1.0), (2, 0.5), (1, 1.7), (3, -2.0)):
            assert _same(kernels._py_scaled_sampling_point(out_index, stride, padding, tap,
                                                           dilation, delta, centre, scale),
                         bilinear.scaled_sampling_point(out_index, stride, padding, tap,
                                                        dilation, delta, centre, scale))


# --------------------------------------------------------------------------- the kernels

def _geom(case):
    return check_arguments(*case.args())


def _odd_case(dtype, seed=5, batch=2, offsets="random", modulated=True):
    """Groups and offset groups > 1, non-square kernel, per-axis stride/padding/dilation."""
    return make_case(seed=seed, batch=batch, in_channels=6, out_channels=4, height=7, width=5,
                     kernel=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2,
                     offset_groups=3, modulated=modulated, offsets=offsets,
                     offset_scale=2.5).astype(dtype)


def _columns_shape(geom):
    """The ``"channels_last"`` column matrix: (B, groups, P, K * C_in/groups)."""
    return (geom.batch, geom.groups, geom.out_pixels, geom.taps * geom.in_per_group)


def _as_rows(columns, geom):
    """Channels-last columns as the ``"rows"`` layout (B, C_in*K, P) of the numpy backend."""
    B, G, P = columns.shape[:3]
    by_channel = columns.reshape(B, G, P, geom.taps, geom.in_per_group)
    return by_channel.transpose(0, 1, 4, 3, 2).reshape(B, G * geom.in_per_group * geom.taps, P)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offsets", ["random", "integer", "zero"])
def test_columns_bitwise_equal_to_numpy_backend(cy, dtype, offsets):
    """Same operations in the same order as the vectorised reference: the same bits.

    The input has inf and NaN pixels, to check that a corner outside the image
    reads exactly 0 (never 0 * inf) and an inside one propagates.
    """
    case = _odd_case(dtype, offsets=offsets)
    case.input[0, 1, 0, 0] = np.inf
    case.input[1, 4, -1, -1] = np.nan
    geom = _geom(case)
    rows = (geom.batch, geom.in_channels * geom.taps, geom.out_pixels)
    for mask in (case.mask, None):
        got, want = np.empty(_columns_shape(geom), dtype), np.empty(rows, dtype)
        cy.im2col(case.input, case.offset, mask, geom, got)
        numpy_backend.im2col(case.input, case.offset, mask, geom, want)
        assert np.array_equal(_as_rows(got, geom), want, equal_nan=True)


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_bitwise_equal_to_numba_backend_on_conformance_cases(cy, mode, monkeypatch):
    """The numba backend's kernels, ported: bitwise its results on every conformance case.

    Both dtypes, both conventions; ``parallel`` runs every kernel of both
    backends in ranges on the worker threads.
    """
    if "numba" not in backends.available():
        pytest.skip(f"'numba' backend unavailable: {backends.unavailable()['numba']}")
    numba_backend = backends.get("numba")
    if mode == "parallel":
        monkeypatch.setattr(cy, "SERIAL_WORK", 0)
        monkeypatch.setattr(numba_backend, "SERIAL_WORK", 0)
    differ = []
    for named in conformance.CASES:
        for dtype in (np.float32, np.float64):
            case = named.build().astype(dtype)
            for convention in CONVENTIONS:
                want = all_results(case, "numba", convention)
                got = all_results(case, "cython", convention)
                differ += [(named.name, dtype.__name__, convention, i)
                           for i, (a, b) in enumerate(zip(got, want))
                           if (a is None) != (b is None)
                           or (a is not None and (a.dtype != b.dtype
                                                  or a.tobytes() != b.tobytes()))]
    assert not differ, f"(case, dtype, convention, result index) that differ: {differ}"


def test_reused_column_buffer_is_never_shared(cy):
    """The spare column buffer goes back only when no array or view of it is left."""
    a = _odd_case(np.float32, seed=1)
    b = _odd_case(np.float32, seed=2)
    geom = _geom(a)
    shape = _columns_shape(geom)
    size = int(np.prod(shape))

    def im2col(case):
        columns = cy._columns_buffer(size, np.dtype(np.float32))[:size].reshape(shape)
        cy.im2col(case.input, case.offset, case.mask, geom, columns)
        return columns

    first = im2col(a)
    kept = first.copy()
    view = first[1, 1, 3:5]
    del first
    second = im2col(b)   # must not reuse it
    assert np.array_equal(view, kept[1, 1, 3:5])
    del view
    third = im2col(a)    # may reuse it now
    assert not np.shares_memory(third, second)
    assert np.array_equal(third, kept)


def _results(case, backend, convention):
    out = refdcn.deform_conv2d(*case.args(), backend=backend)
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend,
                                      convention=convention)
    return {"output": out, **g._asdict()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_agrees_with_reference_across_chunk_and_block_boundaries(cy, dtype, convention,
                                                                 monkeypatch):
    """Output and five gradients within the package tolerances with 7-pixel chunks,
    one-channel col2im blocks and every kernel on the worker threads, so that every
    task and range boundary of the kernels is crossed on these small images (the
    default tasks are tested for every backend in tests/test_backends.py)."""
    monkeypatch.setattr(cy, "CHUNK", 7)
    monkeypatch.setattr(_tasks, "channel_block", lambda batch, channels: 1)
    monkeypatch.setattr(cy, "SERIAL_WORK", 0)
    for seed, offsets, modulated in ((5, "random", True), (6, "integer", True),
                                     (7, "zero", False)):
        case = _odd_case(dtype, seed=seed, offsets=offsets, modulated=modulated)
        report = compare(_results(case, "cython", convention),
                         reference_results(case, convention), case, dtype)
        bad = {q: r for q, r in report.items() if not r[0]}
        assert not bad, f"{dtype.__name__} {convention} {offsets}: {bad}"


def _blocked(cy, case, convention):
    """The output and the five gradients of ``case`` on the cython backend."""
    geom, dtype = _geom(case), case.input.dtype
    out = cy.forward(case.input, case.offset, case.mask, case.weight, case.bias, geom, dtype)
    grads = cy.backward(case.grad_output, case.input, case.offset, case.mask, case.weight,
                        case.bias, geom, dtype, CONVENTIONS[convention])
    return (out,) + tuple(grads)


def test_bitwise_independent_of_thread_count(cy, monkeypatch):
    """1, 2 and 3 of refdcn's threads, every kernel in ranges on them: the same bits."""
    monkeypatch.setattr(cy, "SERIAL_WORK", 0)
    case = _odd_case(np.float64, batch=3)
    saved = parallel.num_threads()
    try:
        parallel.set_num_threads(1)
        want = _blocked(cy, case, "torchvision")
        for threads in (2, 3):
            parallel.set_num_threads(threads)
            assert cy.threads() == threads
            got = _blocked(cy, case, "torchvision")
            for i, (g, w) in enumerate(zip(got, want)):
                assert g.tobytes() == w.tobytes(), (threads, i)
    finally:
        parallel.set_num_threads(saved)


def test_no_openmp(cy, kernels):
    """The kernels run on refdcn's threads: no OpenMP runtime linked, none of its knobs left."""
    for name in ("OPENMP", "max_threads", "_set_tile", "_set_col2im_table_bytes"):
        assert not hasattr(kernels, name) and not hasattr(cy, name), name
    assert cy.CAPABILITIES.threads and cy.threads() == parallel.num_threads()
    assert cy.KERNELS.layout == "channels_last"
    binary = pathlib.Path(kernels.__file__).read_bytes()
    assert b"GOMP_" not in binary and b"omp_get_" not in binary
