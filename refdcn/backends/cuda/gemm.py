"""Matrix products: a tiled Numba GEMM kernel, and cuBLAS through CuPy when installed.

``settings.GEMM = "auto"`` (default; env ``REFDCN_CUDA_GEMM``) uses cuBLAS
(``cupy.cublas.gemm`` on zero-copy views) when CuPy is installed and the
product has at least ``settings.CUBLAS_MIN_MACS`` multiply-adds; otherwise the
Numba kernel of :func:`make_gemm_kernel`.  Without CuPy every product uses the
Numba GEMM: expect it to be several times slower than cuBLAS on large shapes
(a simple tiled kernel reaches a fraction of the card's FP32 peak;
``scripts/gpu_check.sh`` measures it), while for tiny products it avoids
CuPy's per-call overhead.  ``"cublas"`` or ``"numba"`` forces one.  cuBLAS
computes float32 products in float32 (TF32 stays off unless ``CUPY_TF32=1`` or
``NVIDIA_TF32_OVERRIDE=1`` says otherwise).
"""

import numpy as np

from ...driver import stack_chunks
from . import settings
from .interop import cupy
from .launch import launch_blocks
from .probe import cuda


def make_gemm_kernel(dtype, threads=None, per_thread=None, tile_k=None):
    """The tiled GEMM kernel for ``dtype`` (np.float32 or np.float64).

    ``c[z] = op(a[z]) @ op(b[z]) (+ c[z] if accumulate)`` for every batch
    index ``z`` (the convolution group), ``op`` a transpose when ``ta``/``tb``.
    Grid ``(ceil(N/tile), ceil(M/tile), batch)``, block ``(threads, threads)``
    with ``tile = threads * per_thread``: each block computes a tile x tile
    block of ``c``, each thread a ``per_thread x per_thread`` sub-tile (rows
    ``ty + threads*u``, columns ``tx + threads*v``), stepping through ``k``
    ``tile_k`` at a time in shared memory.  Accumulates in ``dtype``.
    Defaults: ``settings.GEMM_THREADS``, ``GEMM_PER_THREAD``, ``TILE_K``.
    """
    nt = settings.GEMM_THREADS if threads is None else threads
    pt = settings.GEMM_PER_THREAD if per_thread is None else per_thread
    tk = settings.TILE_K if tile_k is None else tile_k
    tile = nt * pt
    nthreads = nt * nt

    @cuda.jit(device=True)
    def load_tile(src, z, k_major, k0, kd, start, extent, tile_smem, tid):
        """tile_smem[kk, i] = op(src)[z, start + i, k0 + kk], 0 outside (shape (tk, tile)).

        ``op(src)`` is the (extent x kd) operand: ``src[z]`` itself when it is
        stored (extent, kd), its transpose when it is stored (kd, extent)
        (``k_major``).  The load order follows the memory order of ``src``,
        so consecutive threads read consecutive addresses (coalesced).
        """
        for e in range(tid, tk * tile, nthreads):
            if k_major:
                i = e % tile
                kk = e // tile
            else:
                kk = e % tk
                i = e // tk
            gi = start + i
            gk = k0 + kk
            if gi < extent and gk < kd:
                if k_major:
                    tile_smem[kk, i] = src[z, gk, gi]
                else:
                    tile_smem[kk, i] = src[z, gi, gk]
            else:
                tile_smem[kk, i] = 0

    @cuda.jit
    def gemm_kernel(a, b, c, ta, tb, accumulate):
        As = cuda.shared.array((tk, tile), dtype)
        Bs = cuda.shared.array((tk, tile), dtype)
        acc = cuda.local.array((pt, pt), dtype)
        z = cuda.blockIdx.z
        M = c.shape[1]
        N = c.shape[2]
        Kd = a.shape[1] if ta else a.shape[2]
        m0 = cuda.blockIdx.y * tile
        n0 = cuda.blockIdx.x * tile
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * nt + tx
        for u in range(pt):
            for v in range(pt):
                acc[u, v] = 0
        for k0 in range(0, Kd, tk):
            # op(a) is (M x Kd), op(b)^T is (N x Kd): both loaded as (k, row) tiles
            load_tile(a, z, ta, k0, Kd, m0, M, As, tid)
            load_tile(b, z, not tb, k0, Kd, n0, N, Bs, tid)
            cuda.syncthreads()
            for kk in range(tk):
                for u in range(pt):
                    av = As[kk, ty + nt * u]
                    for v in range(pt):
                        acc[u, v] += av * Bs[kk, tx + nt * v]
            cuda.syncthreads()
        for u in range(pt):
            gm = m0 + ty + nt * u
            if gm < M:
                for v in range(pt):
                    gn = n0 + tx + nt * v
                    if gn < N:
                        if accumulate:
                            c[z, gm, gn] += acc[u, v]
                        else:
                            c[z, gm, gn] = acc[u, v]
    return gemm_kernel


#: dtype -> the Numba GEMM kernel of that dtype.
GEMM_KERNELS = {np.dtype(np.float32): make_gemm_kernel(np.float32),
                np.dtype(np.float64): make_gemm_kernel(np.float64)}


def gemm_engine(macs):
    """Which engine ("cublas" or "numba") multiplies a product of ``macs`` multiply-adds.

    Raises
    ------
    ValueError
        If ``settings.GEMM`` is not "auto", "cublas" or "numba".
    RuntimeError
        If it is "cublas" and CuPy is not importable.
    """
    engine = settings.GEMM
    if engine == "numba":
        return "numba"
    if engine == "cublas":
        if cupy() is None:
            raise RuntimeError("GEMM='cublas' needs CuPy (pip install cupy-cuda12x or "
                               "cupy-cuda13x); it is not importable here")
        return "cublas"
    if engine != "auto":
        raise ValueError(f"GEMM must be 'auto', 'cublas' or 'numba'; got {engine!r}")
    return "cublas" if cupy() is not None and macs >= settings.CUBLAS_MIN_MACS else "numba"


def matmul(a, b, out, trans_a=False, trans_b=False, accumulate=False):
    """Products of 3-D device stacks, the :mod:`refdcn.driver` contract
    (``out[z % len(out)] (+)= op(a[z % len(a)]) @ op(b[z % len(b)])``): each chunk of
    equal stacks (:func:`refdcn.driver.stack_chunks`) is one launch (or cuBLAS loop);
    ``op`` transposes when asked."""
    for ai, bi, ci in stack_chunks(a, b, out):
        _equal_stacks(ai, bi, ci, trans_a, trans_b, accumulate)


def _equal_stacks(a, b, c, trans_a, trans_b, accumulate):
    ta, tb, accumulate = bool(trans_a), bool(trans_b), bool(accumulate)
    M, N = c.shape[1], c.shape[2]
    kd = a.shape[1] if ta else a.shape[2]
    if gemm_engine(c.shape[0] * M * N * kd) == "cublas":
        cp = cupy()
        A, B, C = cp.asarray(a), cp.asarray(b), cp.asarray(c)
        for z in range(c.shape[0]):
            cp.cublas.gemm("T" if ta else "N", "T" if tb else "N", A[z], B[z], out=C[z],
                           alpha=1.0, beta=1.0 if accumulate else 0.0)
        return
    kernel = GEMM_KERNELS[np.dtype(c.dtype)]
    tile = settings.TILE
    grid = (-(-N // tile), -(-M // tile), c.shape[0])
    launch_blocks(kernel, grid, (settings.GEMM_THREADS, settings.GEMM_THREADS))(
        a, b, c, ta, tb, accumulate)
