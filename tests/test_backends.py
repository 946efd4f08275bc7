"""One suite for every backend: each available backend against the loop reference.

Cases come from one generator (:func:`refdcn.testing.case_strategy`): small shapes that
always have non-square kernels, groups or offset groups > 1, and per-axis stride, padding
and dilation.  float64 must agree to ``FLOAT64_RTOL``; float32 must stay within the
derived element-wise bounds of :mod:`refdcn.tolerances`, for both conventions.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import refdcn
from refdcn import backends
from refdcn.testing import case_strategy, compare, make_case, reference_results


def _fast_enough(name):
    module = backends.get(name)
    return name != "reference" and not getattr(module, "SIMULATED", False)


# the CUDA simulator is too slow for property-based testing; tests/test_cuda.py covers it
BACKENDS = [b for b in backends.available() if _fast_enough(b)]
BLOCKED = [b for b in BACKENDS if b in ("numpy", "numba", "cython")]
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


@pytest.mark.parametrize("backend", BLOCKED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_block_size(backend, dtype):
    """Bitwise identical for blocks of 1, 7 and the whole batch (mmcv/torchvision bug class)."""
    case = make_case(seed=12, batch=11, in_channels=4, out_channels=4, height=6, width=5,
                     kernel=(3, 2), stride=1, padding=1, groups=2, offset_groups=2).astype(dtype)
    geom = refdcn.geometry.check_arguments(*case.args())
    per_image = geom.in_channels * geom.taps * geom.out_pixels * np.dtype(dtype).itemsize
    results = []
    for images in (1, 7, 11):
        # forward keeps one column buffer per image, backward two
        refdcn.set_column_memory(per_image * images)
        try:
            out = refdcn.deform_conv2d(*case.args(), backend=backend)
            refdcn.set_column_memory(2 * per_image * images)
            g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
        finally:
            refdcn.set_column_memory(None)
        results.append([out, *g])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_run_to_run(backend):
    case = make_case(seed=13, batch=3, in_channels=4, out_channels=4, height=7, width=6,
                     kernel=(2, 3), padding=1, groups=1, offset_groups=2, offsets="integer")
    a = run(case, backend, "torchvision")
    b = run(case, backend, "torchvision")
    for q in a:
        np.testing.assert_array_equal(a[q], b[q])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
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
