"""Settings of the "cuda" backend: module attributes, read at every call.

``THREADS_PER_BLOCK``, ``MAX_BLOCKS`` (the element-wise kernels loop
grid-stride), ``GEMM`` (env ``REFDCN_CUDA_GEMM``), ``CUBLAS_MIN_MACS`` and
``DETERMINISTIC`` (env ``REFDCN_CUDA_DETERMINISTIC=1``, or
:func:`set_deterministic`) may be changed at run time.  The column-memory
bound is the one of every backend, :func:`refdcn.set_column_memory`.
"""

import os

from .probe import SIMULATED

#: Threads per block of the element-wise kernels (any value 1..1024; tests use odd ones).
THREADS_PER_BLOCK = 256
#: Upper bound on the blocks of an element-wise launch (the kernels loop grid-stride).
MAX_BLOCKS = 65535
#: Matrix products: "auto", "cublas" (CuPy) or "numba".
GEMM = os.environ.get("REFDCN_CUDA_GEMM", "auto")
#: "auto" uses cuBLAS only for products with at least this many multiply-adds.
CUBLAS_MIN_MACS = 1 << 22
#: Input gradient by a deterministic gather instead of atomic adds (env
#: ``REFDCN_CUDA_DETERMINISTIC=1``).
DETERMINISTIC = os.environ.get("REFDCN_CUDA_DETERMINISTIC", "0").strip().lower() in (
    "1", "true", "yes", "on")

#: The largest block size CUDA allows (and the shared memory of the scan).
MAX_THREADS = 1024
#: Fixed partial sums of the bias-gradient reduction (independent of the block size).
REDUCE_LANES = 256

#: Tiles of the Numba GEMM: each block of GEMM_THREADS x GEMM_THREADS threads computes a
#: TILE x TILE block of C (TILE = GEMM_THREADS * GEMM_PER_THREAD), stepping K by TILE_K.
#: The simulator (which runs one Python thread per CUDA thread) uses smaller tiles.
GEMM_THREADS, GEMM_PER_THREAD, TILE_K = (4, 4, 16) if SIMULATED else (16, 4, 16)
TILE = GEMM_THREADS * GEMM_PER_THREAD


def set_deterministic(flag=True):
    """Choose the deterministic gather (True) or the atomic scatter (False) for grad_input.

    Returns
    -------
    bool
        The previous setting (to restore it).
    """
    global DETERMINISTIC
    previous, DETERMINISTIC = DETERMINISTIC, bool(flag)
    return previous
