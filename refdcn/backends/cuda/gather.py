"""The deterministic input gradient: a gather in a fixed order instead of atomic adds.

The default input gradient (:func:`.kernels.coordinate_gradients`) is
accumulated with atomic adds: fast, but the order of the floating-point
additions changes from run to run, so ``grad_input`` can differ in the last
bits between runs.  In deterministic mode it is computed here instead:

1. :func:`sample_cells` buckets the samples by the image *cell* their floor
   corner lies in (cells ``(y0, x0)`` in ``[-1, H-1] x [-1, W-1]``, one set per
   image and offset group) and counts each bucket;
2. :func:`exclusive_scan` turns the counts into bucket starts;
3. :func:`place_samples` writes each sample's index into its bucket;
4. :func:`sort_buckets` sorts every bucket by sample index (the fixed order);
5. :func:`gather_input_gradient`: one thread per (image, offset group, input
   pixel) adds, for all channels of the offset group, the contributions of
   the samples of the four cells around its pixel, in that fixed order, with
   the weights of :func:`refdcn.bilinear.scatter_corners`.

It is bitwise reproducible and slower (an adversarial offset field that sends
many samples to one cell makes it much slower: each bucket is sorted by one
thread).
"""

import numpy as np

from . import settings
from .kernels import fill
from .launch import launch, launch_blocks
from .memory import empty
from .probe import cuda
from .settings import MAX_THREADS
from .sampling import locate, sample, sample_count, scatter_corners, tap_sample, unravel

# Cell index: (b*D + d)*(H+1)*(W+1) + (y0+1)*(W+1) + (x0+1).


@cuda.jit
def sample_cells(offset, geo, cell_of, counts):
    """cell_of[t] = the cell of sample t (-1 if it touches no pixel); counts[cell] += 1."""
    H, W = geo.height, geo.width
    cells = (H + 1) * (W + 1)
    for t in range(cuda.grid(1), sample_count(geo), cuda.gridsize(1)):
        b, d, k, p, kk, oy, ox, y, x, _ = sample(t, offset, offset, False, geo)
        active, y0, x0, ly, lx = locate(y, x, H, W, False)
        if active and y0 >= -1 and x0 >= -1:      # NaN points are active but touch nothing
            cell = (b * geo.offset_groups + d) * cells + (y0 + 1) * (W + 1) + (x0 + 1)
            cell_of[t] = cell
            cuda.atomic.add(counts, cell, 1)
        else:
            cell_of[t] = -1


@cuda.jit
def exclusive_scan(counts, starts):
    """starts[q] = sum(counts[:q]) for q <= n; one block, deterministic (integers)."""
    partial = cuda.shared.array(MAX_THREADS, np.int64)
    n = counts.shape[0]
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    chunk = (n + nt - 1) // nt
    lo = min(n, tid * chunk)
    hi = min(n, lo + chunk)
    s = 0
    for q in range(lo, hi):
        s += counts[q]
    partial[tid] = s
    cuda.syncthreads()
    if tid == 0:
        running = 0
        for q in range(nt):
            v = partial[q]
            partial[q] = running
            running += v
        starts[n] = running
    cuda.syncthreads()
    running = partial[tid]
    for q in range(lo, hi):
        starts[q] = running
        running += counts[q]


@cuda.jit
def place_samples(cell_of, starts, counts, order):
    """order[starts[cell] : starts[cell + 1]] = the samples of each cell (any order).

    Uses ``counts`` as a down-counter (it ends at zero).
    """
    n = cell_of.shape[0]
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        cell = cell_of[t]
        if cell >= 0:
            slot = cuda.atomic.sub(counts, cell, 1) - 1
            order[starts[cell] + slot] = t


@cuda.jit
def sort_buckets(starts, order):
    """Sort every bucket ``order[starts[c] : starts[c+1]]`` ascending (insertion sort)."""
    cells = starts.shape[0] - 1
    for c in range(cuda.grid(1), cells, cuda.gridsize(1)):
        lo = starts[c]
        hi = starts[c + 1]
        for q in range(lo + 1, hi):
            v = order[q]
            r = q - 1
            while r >= lo and order[r] > v:
                order[r + 1] = order[r]
                r -= 1
            order[r + 1] = v


@cuda.jit
def gather_input_gradient(offset, mask, has_mask, grad_columns, geo, starts, order, grad_input):
    """grad_input[b, c, iy, ix] += sum of G_c * m * weight over the samples of its four cells.

    One thread per (b, d, iy, ix); cells in the order (iy, ix), (iy, ix-1),
    (iy-1, ix), (iy-1, ix-1): the pixel is target ``00``, ``01``, ``10``,
    ``11`` of :func:`refdcn.bilinear.scatter_corners` for the samples of that
    cell, whose ``weight`` it takes; the samples of a cell in increasing
    index: a fixed order.
    """
    H, W, K, P = geo.height, geo.width, geo.taps, geo.out_pixels
    D = geo.offset_groups
    cells = (H + 1) * (W + 1)
    for t in range(cuda.grid(1), geo.batch * D * H * W, cuda.gridsize(1)):
        b, d, iy, ix = unravel(t, D, H, W)
        base = (b * D + d) * cells
        for corner in range(4):
            a = corner // 2
            e = corner - 2 * a
            cell = base + (iy - a + 1) * (W + 1) + (ix - e + 1)
            for q in range(starts[cell], starts[cell + 1]):
                s = order[q]
                p = s % P
                k = (s // P) % K
                kk, oy, ox, y, x, m = tap_sample(offset, mask, has_mask, b, d, k, p, geo)
                active, y0, x0, ly, lx = locate(y, x, H, W, False)
                weight = scatter_corners(y0, x0, ly, lx)[corner][2]
                for ci in range(geo.in_per_offset_group):
                    c = d * geo.in_per_offset_group + ci
                    gm = float(grad_columns[b, c * K + k, p]) * m
                    grad_input[b, c, iy, ix] += gm * weight


def bucket_sizes(geom):
    """``(samples, cells)`` of a tile (a :class:`~refdcn.geometry.Geometry` or its record)."""
    samples = geom.batch * geom.offset_groups * geom.taps * geom.out_pixels
    cells = geom.batch * geom.offset_groups * (geom.height + 1) * (geom.width + 1)
    return samples, cells


def workspace_bytes(geom):
    """Bytes of the buckets of a tile: cell and order of every sample, count and start
    of every cell (int64)."""
    samples, cells = bucket_sizes(geom)
    return 8 * (2 * samples + 2 * cells + 1)


def input_gradient(offset, mask, has_mask, grad_columns, geo, grad_input):
    """Add the input gradient of a tile to ``grad_input`` in a fixed order (the steps above).

    ``mask`` is read only if ``has_mask``.  The buckets are allocated for this
    call (nothing is shared between calls).
    """
    i64 = np.dtype(np.int64)
    samples, cells = bucket_sizes(geo)
    cell_of = empty((samples,), i64)
    counts = empty((cells,), i64)
    starts = empty((cells + 1,), i64)
    order = empty((max(samples, 1),), i64)
    launch(fill, cells)(counts, 0)
    launch(sample_cells, samples)(offset, geo, cell_of, counts)
    launch_blocks(exclusive_scan, 1, min(settings.MAX_THREADS, settings.THREADS_PER_BLOCK))(
        counts, starts)
    launch(place_samples, samples)(cell_of, starts, counts, order)
    launch(sort_buckets, cells)(starts, order)
    pixels = geo.batch * geo.offset_groups * geo.height * geo.width
    launch(gather_input_gradient, pixels)(offset, mask, has_mask, grad_columns, geo, starts,
                                          order, grad_input)
