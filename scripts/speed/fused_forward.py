"""Scratch prototype (issue 16 item 2): a tiled forward, sampled and multiplied while hot.

Not part of the package.  Compares, in one process and on the README's shapes:

* ``current``: ``backend="numba"`` through the public API;
* ``tiles``:   refdcn's threads (:mod:`refdcn.parallel`, the caller included) take
  tiles of ``T`` output pixels of one image from a shared counter (dynamic schedule);
  each tile is sampled by a serial ``nogil`` Numba kernel into a per-thread
  buffer of (T, K*C) and multiplied at once (``W @ tile.T`` into the output);
  BLAS runs single-threaded inside the tasks (threadpoolctl);
* ``blocks``:  the same tiles sampled by Numba's ``prange`` (2 threads), then
  one 2-thread BLAS product per tile (no thread pool of ours);
* NumPy's matmul rate and onnxruntime's forward, same run.

Usage: PYTHONPATH=. python scripts/speed/fused_forward.py [T]
"""

import statistics
import sys
import threading
import time

import numpy as np
from numba import njit, prange

import refdcn
from refdcn import driver
from refdcn.backends import numba_cpu as nb
from refdcn.benchmarks.cpu import OnnxRuntime, limit_threads, make_inputs
from refdcn.geometry import check_arguments

interpolate = nb.interpolate
MIN = True   # the machine is shared: the minimum is the least disturbed estimate


def _tile_body(image, offset, mask, geo, b, p0, p1, tile):
    C = geo.in_channels
    Wp = geo.width + 3
    K = geo.kh * geo.kw
    for p in range(p0, p1):
        row = tile[p - p0]
        for k in range(K):
            q, ly, lx = nb._sample(offset, b, k, p, k, geo, False)
            m = mask[b, k, p]
            v00 = image[q, :C]
            v01 = image[q + 1, :C]
            v10 = image[q + Wp, :C]
            v11 = image[q + Wp + 1, :C]
            dst = row[k * C:(k + 1) * C]
            for u in range(C):
                dst[u] = m * interpolate(v00[u], v01[u], v10[u], v11[u], ly, lx)


sample_tile = njit(nogil=True, cache=True)(_tile_body)


@njit(parallel=True, nogil=True, cache=True)
def sample_tile_parallel(image, offset, mask, geo, b, p0, p1, tile):
    n = p1 - p0
    step = 16
    for t in prange((n + step - 1) // step):
        a = p0 + t * step
        sample_tile(image, offset, mask, geo, b, a, min(p1, a + step), tile[a - p0:])


class Pool:
    """``run(n, task, buffers)``: task(i, buffer) on refdcn's threads, one buffer per thread."""

    def __init__(self, threads):
        self.threads = threads

    def run(self, n, task, buffers):
        from refdcn import parallel
        free = list(buffers)
        local = threading.local()          # this call's buffers, one per thread

        def with_buffer(i):
            if not hasattr(local, "buffer"):
                local.buffer = free.pop()
            task(i, local.buffer)
        parallel.run(n, with_buffer, self.threads)


def _operands(c, geom):
    """padded input, flat offset and mask, weight matrix, geometry record, output."""
    return (nb.channels_last(c.input), c.offset.reshape(geom.batch, -1, geom.out_pixels),
            c.mask.reshape(geom.batch, -1, geom.out_pixels),
            driver.weight_matrix(nb.KERNELS, c.weight, geom)[0], geom.kernel_record(),
            np.empty((geom.batch, geom.out_channels, geom.out_pixels), np.float32))


def tiled_forward(pool, c, geom, T, buffers, blas_one):
    padded, off, msk, wt, geo, out = _operands(c, geom)
    P = geom.out_pixels
    per = -(-P // T)

    def task(i, tile):
        b, j = divmod(i, per)
        p0 = j * T
        p1 = min(P, p0 + T)
        sample_tile(padded[b], off, msk, geo, b, p0, p1, tile)
        np.matmul(wt, tile[:p1 - p0].T, out=out[b, :, p0:p1])

    with blas_one():
        pool.run(geom.batch * per, task, buffers)
    out += c.bias[:, None]
    return out


def blocked_forward(c, geom, T, buf):
    padded, off, msk, wt, geo, out = _operands(c, geom)
    P = geom.out_pixels
    for b in range(geom.batch):
        for p0 in range(0, P, T):
            p1 = min(P, p0 + T)
            sample_tile_parallel(padded[b], off, msk, geo, b, p0, p1, buf)
            np.matmul(wt, buf[:p1 - p0].T, out=out[b, :, p0:p1])
    out += c.bias[:, None]
    return out


def med(f, r=15, w=2):
    time.sleep(0.2)
    for _ in range(w):
        f()
    ts = []
    for _ in range(r):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return (min if MIN else statistics.median)(ts) * 1e3


def main():
    from threadpoolctl import threadpool_limits
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    keep, _ = limit_threads(2)
    pool = Pool(2)
    blas_one = lambda: threadpool_limits(1, user_api="blas")
    a = np.random.rand(2048, 2048).astype(np.float32)
    o = np.empty_like(a)
    mm = 2 * 2048**3 / med(lambda: np.matmul(a, a, out=o)) / 1e6
    print(f"T={T}  numpy float32 matmul {mm:.0f} GFLOP/s")
    for shape in [(1, 16, 16, 32, 32, 3), (8, 64, 64, 28, 28, 3), (4, 128, 128, 32, 32, 3),
                  (1, 256, 256, 64, 64, 3), (2, 64, 64, 56, 56, 3)]:
        c = make_inputs(shape, "float32", True)
        geom = check_arguments(*c.args())
        KC = geom.taps * geom.in_channels
        buffers = [np.empty((T, KC), np.float32) for _ in range(2)]
        big = np.empty((max(T, 1024), KC), np.float32)
        ref = refdcn.deform_conv2d(c.input, c.offset, c.weight, c.bias, 1, geom.padding, 1,
                                   c.mask, backend="numba").reshape(geom.batch, geom.out_channels, -1)
        got = tiled_forward(pool, c, geom, T, buffers, blas_one)
        got2 = blocked_forward(c, geom, 1024, big)
        err = max(np.abs(got - ref).max(), np.abs(got2 - ref).max()) / np.abs(ref).max()
        ort = OnnxRuntime(c, 2)
        t_cur = med(lambda: refdcn.deform_conv2d(c.input, c.offset, c.weight, c.bias, 1,
                                                 geom.padding, 1, c.mask, backend="numba"))
        t_tile = med(lambda: tiled_forward(pool, c, geom, T, buffers, blas_one))
        t_blk = med(lambda: blocked_forward(c, geom, 1024, big))
        t_ort = med(ort.forward)
        fl = geom.flops() / 1e6
        print(f"{shape}: current {t_cur:.2f} ms | tiles {t_tile:.2f} | blocks1024 {t_blk:.2f} | "
              f"ort {t_ort:.2f} | best %matmul {100 * fl / min(t_tile, t_blk) / mm:.0f} "
              f"(ort {100 * fl / t_ort / mm:.0f}) | rel err {err:.1e}")


if __name__ == "__main__":
    main()
