"""The memory bound holds: what one call allocates stays under ``refdcn.column_memory()``.

Measured with :mod:`tracemalloc` (NumPy reports its array allocations to it) for every
blocked CPU backend, forward and backward, over several bounds and shapes (whole images per
block, and images split into output-row ranges).  What is measured is the peak of the
traced memory during the call, less the arrays the call returns; what may remain besides
the bounded tiles is a few weight-sized matrices (the grouped weight, the weight
gradient's accumulator and one product) and a few KiB of bookkeeping.
"""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import refdcn
from refdcn import backends, driver
from refdcn.geometry import check_arguments
from refdcn.testing import make_case

BLOCKED = [b for b in backends.available()
           if backends.capabilities(b).blocked and backends.capabilities(b).device == "cpu"]

SHAPES = {
    "mixed": dict(batch=4, in_channels=16, out_channels=8, height=24, width=22, kernel=3,
                  padding=1, groups=2, offset_groups=2),
    "per-channel offsets": dict(batch=3, in_channels=6, out_channels=4, height=20, width=17,
                                kernel=(3, 2), padding=(1, 0), groups=1, offset_groups=6),
}


def _traced_peak(function):
    """(result, peak traced bytes during ``function()`` less the bytes it returns)."""
    tracemalloc.start()
    try:
        result = function()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    arrays = result if isinstance(result, tuple) else (result,)
    return result, peak - sum(a.nbytes for a in arrays if a is not None)


@pytest.mark.parametrize("backend", BLOCKED)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_peak_memory_stays_under_the_bound(backend, shape, dtype, monkeypatch):
    case = make_case(seed=4, **SHAPES[shape]).astype(dtype)
    geom = check_arguments(*case.args())
    ks, itemsize = backends.get(backend).KERNELS, np.dtype(dtype).itemsize
    slack = 4 * case.weight.nbytes + 32 * 2**10
    args = case.args()
    # warm up (Numba compiles on the first call of each signature; not part of the bound)
    refdcn.deform_conv2d(*args, backend=backend)
    refdcn.deform_conv2d_backward(case.grad_output, *args, backend=backend)
    one_image = ks.tile_bytes(geom.with_batch(1), itemsize)
    bounds = [one_image, 2 * one_image + one_image // 2, ks.tile_bytes(geom, itemsize)]
    three_rows = geom.output_rows(1, 0, 3)                         # images split in rows
    row = ks.tile_bytes(three_rows, itemsize) + driver.split_bytes(three_rows, itemsize)
    for bound in bounds + [row]:
        refdcn.set_column_memory(bound)
        try:
            # warm up again: smaller tiles may run the serial copies of Numba kernels,
            # loaded from the disk cache on first use
            refdcn.deform_conv2d(*args, backend=backend)
            refdcn.deform_conv2d_backward(case.grad_output, *args, backend=backend)
            out, forward_peak = _traced_peak(lambda: refdcn.deform_conv2d(*args,
                                                                          backend=backend))
            grads, backward_peak = _traced_peak(lambda: tuple(refdcn.deform_conv2d_backward(
                case.grad_output, *args, backend=backend)))
        finally:
            refdcn.set_column_memory(None)
        assert forward_peak <= bound + slack, (bound, forward_peak)
        assert backward_peak <= bound + slack, (bound, backward_peak)


def test_row_ranges_keep_the_bound_when_one_image_is_too_big(monkeypatch):
    """A bound of a few rows: the plan splits every image into row ranges under it."""
    case = make_case(seed=5, **SHAPES["mixed"])
    geom = check_arguments(*case.args())
    ks = backends.get("numpy").KERNELS
    five = geom.output_rows(1, 0, 5)
    bound = ks.tile_bytes(five, 4) + driver.split_bytes(five, 4)
    tiles = driver.plan(ks, geom, 4, bound)
    assert all(t.stop - t.start == 1 and t.row1 - t.row0 == min(5, geom.out_h - t.row0)
               for t in tiles)
    assert sum(t.row1 - t.row0 for t in tiles) == geom.batch * geom.out_h


_RSS_SCRIPT = """
import gc, sys
import numpy as np
import refdcn
from refdcn import backends
from refdcn.geometry import check_arguments
from refdcn.testing import make_case

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

backend, images = sys.argv[1], int(sys.argv[2])
case = make_case(seed=6, batch=4, in_channels=32, out_channels=16, height=40, width=36,
                 kernel=3, padding=1, groups=2, offset_groups=4).astype(np.float32)
geom = check_arguments(*case.args())
bound = backends.get(backend).KERNELS.tile_bytes(geom.with_batch(images), 4)
refdcn.set_column_memory(bound)
args = case.args()
for _ in range(2):       # compile and warm up every path first
    refdcn.deform_conv2d_backward(case.grad_output, *args, backend=backend)
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")          # reset the peak resident set size (VmHWM)
base = status("VmRSS")
out = refdcn.deform_conv2d(*args, backend=backend)
grads = refdcn.deform_conv2d_backward(case.grad_output, *args, backend=backend)
peak = status("VmHWM") - base
returned = out.nbytes + sum(g.nbytes for g in grads if g is not None)
print(bound, peak - returned)
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.parametrize("backend", BLOCKED)
def test_peak_resident_memory_stays_under_the_bound(backend):
    """The same bound seen by the operating system (peak RSS, in a fresh process), which
    also counts what compiled kernels allocate outside NumPy (Cython's ``malloc``)."""
    # glibc: large blocks mmapped and given back when freed, so the RSS follows the arrays
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(refdcn.__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    for images in (1, 2):
        # cwd: the directory holding the refdcn under test (``python -c`` puts the cwd first
        # on sys.path, so a source tree without the compiled extension must not be the cwd)
        done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, backend, str(images)],
                              env=env, capture_output=True, text=True, timeout=600,
                              cwd=os.path.dirname(os.path.dirname(refdcn.__file__)))
        assert done.returncode == 0, done.stderr[-3000:]
        bound, peak = map(int, done.stdout.split()[-2:])
        # page granularity, allocator arenas, weight-sized matrices: under 1 MiB
        assert peak <= bound + 2**20, (images, bound, peak)
