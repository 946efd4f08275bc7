"""Backend ``"cuda"``: deformable convolution on an NVIDIA GPU with numba-cuda kernels.

This is the only module of refdcn that imports ``numba.cuda``.  Importing it
raises :class:`ImportError` when numba-cuda is not installed and
:class:`~refdcn.backends.BackendUnavailable` when there is no usable GPU and
the CUDA simulator is off (``NUMBA_ENABLE_CUDASIM=1`` turns it on: every
kernel then runs as Python threads, which is slow but exact; the test suite
uses it on machines without a GPU).  :data:`SIMULATED` says which one runs.

Arrays
------
:func:`coerce` decides what the public API hands to :func:`forward` and
:func:`backward`:

* NumPy arrays (and anything :func:`numpy.asarray` accepts) stay on the host;
  they are copied to the device, converted to the compute dtype, and the
  results are copied back: the functions return NumPy arrays.
* Any object with ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA
  tensors, Numba device arrays, ...) is wrapped with
  ``numba.cuda.from_cuda_array_interface``: no copy and no host round trip.
  When any input is a device array the results are **Numba device arrays**
  (``numba.cuda.cudadrv.devicearray.DeviceNDArray``); they export
  ``__cuda_array_interface__`` themselves, so ``cupy.asarray(r)`` or
  ``torch.as_tensor(r, device="cuda")`` view them without a copy, and
  ``r.copy_to_host()`` gives a NumPy array.  Device inputs of another dtype
  (float16) or with non-contiguous strides are converted on the device.

All work is queued on the CUDA legacy default stream (the one CuPy and
PyTorch use unless told otherwise).  Arrays exported on another stream are
synchronised with that stream once, when they are wrapped.

How the work is organised
-------------------------
The computation is im2col + matrix product, as in :mod:`refdcn.driver`,
over blocks of whole images whose column buffer fits in
:func:`refdcn.column_memory` bytes:

forward
    ``_im2col``: one thread per (image, offset group ``d``, tap ``k``,
    output pixel ``p``).  It reads the offsets and the mask once, forms the
    sampling point in float64 and calls :func:`refdcn.bilinear.locate` once,
    then loops over the ``C_in / D`` channels of its offset group, reading
    the four corners of each channel's plane and writing
    ``columns[c*K + k, b*P + p] = m * S``.  Consecutive threads handle
    consecutive output pixels, so offset reads and column writes coalesce.
    The corner weights are loop-invariant in the channel loop; the compiler
    hoists them, so they are computed once per sample as well.
    Then one GEMM per convolution group, ``tmp_g = W_g @ columns_g``
    (``(C_out/g) x (C_in*K/g)`` times ``(C_in*K/g) x (B*P)``), and
    ``_store_output`` adds the bias and transposes ``tmp`` to
    ``(B, C_out, H_out, W_out)``.
backward
    ``columns`` again (recomputed, not stored), ``grad_W_g += G_g @
    columns_g^T`` and ``grad_columns_g = W_g^T @ G_g`` (two GEMMs, the second
    one overwrites the column buffer).  Then ``_coordinate_gradients``, one
    thread per (image, offset group, tap, pixel) again: one ``locate`` per
    sample, a loop over the channels that accumulates ``dS/dy``, ``dS/dx``
    and ``S`` times ``grad_columns`` in float64 (``grad_offset``,
    ``grad_mask``) and, in the default mode, scatters ``m * w_ab *
    grad_columns`` to the four corners of ``grad_input`` with atomic adds.
    ``_bias_gradient`` sums ``grad_output`` per output channel (one block per
    channel, fixed order).

The scalar mathematics is not written here: the functions of
:mod:`refdcn.bilinear` are compiled as CUDA device functions from their one
source (:func:`~refdcn.backends._shared_math.compile_bilinear`;
:data:`DEVICE_SOURCES` are the Python
functions compiled).

Determinism
-----------
The forward pass and the offset, mask, weight and bias gradients are
deterministic (every element is computed by one thread in a fixed order, or
by a GEMM).  The input gradient is, by default, accumulated with atomic adds:
fast, but the order of the floating-point additions changes from run to run,
so ``grad_input`` can differ in the last bits between runs.  The
deterministic mode (``REFDCN_CUDA_DETERMINISTIC=1`` in the environment, or
:func:`set_deterministic`) computes it as a gather instead: the samples are
bucketed by the image cell their floor corner lies in (counting sort, then
every bucket sorted by sample index), and one thread per (image, offset group,
input pixel) adds the contributions of the samples of the four cells around
its pixel in that fixed order, for all channels of the offset group.  It is
bitwise reproducible and slower (an adversarial offset field that sends many
samples to one cell makes it much slower: each bucket is sorted by one thread).

Matrix products
---------------
``GEMM = "auto"`` (default; env ``REFDCN_CUDA_GEMM``) uses cuBLAS through
CuPy (``cupy.cublas.gemm`` on zero-copy views) when CuPy is installed and
the product has at least :data:`CUBLAS_MIN_MACS` multiply-adds; otherwise
``_gemm_kernel``, a tiled shared-memory GEMM written with Numba (on the GPU
16 x 16 threads per block, 64 x 64 tiles of C, 4 x 4 outputs per thread, K
in steps of 16; accumulates in the compute dtype).  Without CuPy every
product uses the Numba GEMM: expect it to be several times slower than
cuBLAS on the large shapes (a simple tiled kernel reaches a fraction of the
card's FP32 peak; the exact factor is measured by ``scripts/gpu_check.sh``),
while for tiny products it avoids CuPy's per-call overhead.
``GEMM = "cublas"`` or ``"numba"`` forces one.  cuBLAS computes float32
products in float32 (TF32 stays off unless ``CUPY_TF32=1`` or
``NVIDIA_TF32_OVERRIDE=1`` says otherwise).  Scratch buffers and outputs are
allocated from CuPy's memory pool when CuPy is installed (no
``cudaMalloc``/``cudaFree`` per call), else with ``numba.cuda.device_array``.

Settings (module attributes, read at every call)
------------------------------------------------
:data:`THREADS_PER_BLOCK`, :data:`MAX_BLOCKS` (the element-wise kernels use
grid-stride loops), :data:`GEMM`,
:data:`DETERMINISTIC`.  Launch configurations and scratch buffers
(columns, temporaries) are cached between calls; :func:`clear_cache` frees
them.  The cached scratch buffers make the backend unsafe to call from
several host threads at once.
"""

import importlib.util
import os
import warnings

import numpy as np

from . import BackendUnavailable, Capabilities
from .. import bilinear
from ._shared_math import compile_bilinear
from .. import driver

try:
    _spec = importlib.util.find_spec("numba_cuda")
except (ImportError, ValueError):   # blocked or half-installed
    _spec = None
if _spec is None:
    raise ImportError("numba-cuda is not installed (pip install numba-cuda, "
                      "or pip install 'refdcn[cuda]')")
try:
    from numba import cuda
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError(f"numba.cuda cannot be imported ({exc})") from exc

#: True when the kernels run on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATED = bool(cuda.config.ENABLE_CUDASIM)

if not SIMULATED and not cuda.is_available():
    raise BackendUnavailable(
        "no usable NVIDIA GPU: numba.cuda.is_available() is False (no CUDA driver or no "
        "device here); set NUMBA_ENABLE_CUDASIM=1 to run the kernels on the CUDA simulator")

if SIMULATED:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _DeviceArray
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArrayBase as _DeviceArray

NAME = "cuda"
DEVICE = "cuda"
#: ``blocked=False`` until the backend runs on :mod:`refdcn.driver`; the input
#: gradient uses atomic adds unless :data:`DETERMINISTIC` is set.
CAPABILITIES = Capabilities(device="cuda", compute_dtype="input", simulated=SIMULATED,
                            blocked=False, deterministic=False, deterministic_option=True)


def _numba_cuda_version():
    try:
        from importlib.metadata import version
        return version("numba-cuda")
    except Exception:   # pragma: no cover
        return "?"


if SIMULATED:
    DESCRIPTION = (f"numba-cuda {_numba_cuda_version()} kernels on the CUDA SIMULATOR "
                   f"(NUMBA_ENABLE_CUDASIM=1: Python threads, slow; for testing only)")
else:
    DESCRIPTION = (f"numba-cuda {_numba_cuda_version()} GPU kernels (im2col + cuBLAS via CuPy "
                   f"when installed, else a Numba GEMM); returns device arrays for device inputs")

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

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
_MAX_THREADS = 1024
#: Fixed partial sums of the bias-gradient reduction (independent of the block size).
_REDUCE_LANES = 256

#: Tiles of the Numba GEMM: each block of GEMM_THREADS x GEMM_THREADS threads computes a
#: TILE x TILE block of C (TILE = GEMM_THREADS * GEMM_PER_THREAD), stepping K by TILE_K.
#: The simulator (which runs one Python thread per CUDA thread) uses smaller tiles.
GEMM_THREADS, GEMM_PER_THREAD, TILE_K = (4, 4, 16) if SIMULATED else (16, 4, 16)
TILE = GEMM_THREADS * GEMM_PER_THREAD


def set_deterministic(flag=True):
    """Choose the deterministic gather (True) or the atomic scatter (False) for grad_input."""
    global DETERMINISTIC
    DETERMINISTIC = bool(flag)


# ---------------------------------------------------------------------------------------------
# The shared scalar mathematics, as device functions
# ---------------------------------------------------------------------------------------------

_SHARED = ("sampling_point", "locate", "in_image", "pixel", "corners", "corner_weights",
           "interpolate", "interpolate_gradient", "bilinear_sample", "bilinear_gradient")


#: name -> the Python function (bilinear's code object) compiled as a device function.
DEVICE_SOURCES, DEVICE_FUNCTIONS = compile_bilinear(cuda.jit(device=True), _SHARED)
sampling_point = DEVICE_FUNCTIONS["sampling_point"]
locate = DEVICE_FUNCTIONS["locate"]
in_image = DEVICE_FUNCTIONS["in_image"]
corners = DEVICE_FUNCTIONS["corners"]
corner_weights = DEVICE_FUNCTIONS["corner_weights"]
interpolate = DEVICE_FUNCTIONS["interpolate"]
interpolate_gradient = DEVICE_FUNCTIONS["interpolate_gradient"]

_TORCHVISION = bilinear.BORDER_TORCHVISION


@cuda.jit(device=True)
def _sample_index(t, g):
    """Sample index t -> (image in block bl, offset group d, tap k, output pixel p), p fastest."""
    P, K, D = g[3], g[4], g[12]
    p = t % P
    r = t // P
    k = r % K
    r = r // K
    return r // D, r % D, k, p


@cuda.jit(device=True)
def _tap_sample(offset, mask, has_mask, b, d, k, p, g):
    """Where tap k of offset group d samples for output pixel p of image b, and its mask.

    Returns ``(kk, oy, ox, y, x, m)``: the tap's index among all offset groups'
    taps, the output pixel, the sampling point (float64) and the modulation.
    """
    H, W, Wo, P, K, kw, sh, sw, ph, pw, dh, dw, D, Cd = g
    kk = d * K + k
    oy = p // Wo
    ox = p - oy * Wo
    i = k // kw
    j = k - i * kw
    y = sampling_point(oy, sh, ph, i, dh, float(offset[b, 2 * kk, oy, ox]))
    x = sampling_point(ox, sw, pw, j, dw, float(offset[b, 2 * kk + 1, oy, ox]))
    m = float(mask[b, kk, oy, ox]) if has_mask else 1.0
    return kk, oy, ox, y, x, m

# ---------------------------------------------------------------------------------------------
# Kernels.  ``g`` is the geometry tuple of :func:`_geometry_tuple`:
#   (H, W, W_out, P, K, kw, sh, sw, ph, pw, dh, dw, D, C_in/D)
# A sample index t enumerates (image in block bl, offset group d, tap k, pixel p), p fastest.
# Array reads that enter float64 arithmetic go through float() so that the
# simulator (NumPy scalars) computes in float64 like the GPU.
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _im2col(input, offset, mask, has_mask, columns, b0, nb, g):
    """columns[c*K + k, bl*P + p] = m * S(input[b0 + bl, c], y, x)  (shape (C_in*K, nb*P))."""
    H, W, Wo, P, K, kw, sh, sw, ph, pw, dh, dw, D, Cd = g
    n = nb * D * K * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        bl, d, k, p = _sample_index(t, g)
        b = b0 + bl
        kk, oy, ox, y, x, m = _tap_sample(offset, mask, has_mask, b, d, k, p, g)
        active, y0, x0, ly, lx = locate(y, x, H, W, False)
        col = bl * P + p
        for ci in range(Cd):
            c = d * Cd + ci
            s = 0.0
            if active:
                v00, v01, v10, v11 = corners(input[b, c], y0, x0, H, W)
                s = interpolate(v00, v01, v10, v11, ly, lx)
            columns[c * K + k, col] = m * s


@cuda.jit
def _store_output(tmp, bias, has_bias, out, b0, nb, Wo):
    """out[b0 + bl, o, oy, ox] = tmp[o, bl*P + p] + bias[o]  (tmp shape (C_out, nb*P))."""
    O = out.shape[1]
    P = out.shape[2] * Wo
    n = nb * O * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        p = t % P
        r = t // P
        o = r % O
        bl = r // O
        v = tmp[o, bl * P + p]
        if has_bias:
            v += bias[o]
        oy = p // Wo
        out[b0 + bl, o, oy, p - oy * Wo] = v


@cuda.jit
def _gather_grad_output(grad_output, gt, b0, nb, Wo):
    """gt[o, bl*P + p] = grad_output[b0 + bl, o, oy, ox]  (gt shape (C_out, nb*P))."""
    O = grad_output.shape[1]
    P = grad_output.shape[2] * Wo
    n = nb * O * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        p = t % P
        r = t // P
        o = r % O
        bl = r // O
        oy = p // Wo
        gt[o, bl * P + p] = grad_output[b0 + bl, o, oy, p - oy * Wo]


@cuda.jit
def _bias_gradient(grad_output, grad_bias):
    """grad_bias[o] = sum over (n, y, x) of grad_output[n, o, y, x]; one block per channel.

    The ``B*P`` terms are split into :data:`_REDUCE_LANES` fixed lanes (lane
    ``L`` sums terms ``L, L + lanes, ...`` in order, in float64), then thread
    0 adds the lanes in order: the same sums in the same order whatever the
    block size, so the result is deterministic.
    """
    partial = cuda.shared.array(_REDUCE_LANES, np.float64)
    B, O, Ho, Wo = grad_output.shape
    P = Ho * Wo
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for o in range(cuda.blockIdx.x, O, cuda.gridDim.x):
        for lane in range(tid, _REDUCE_LANES, nt):
            acc = 0.0
            for t in range(lane, B * P, _REDUCE_LANES):
                b = t // P
                p = t - b * P
                oy = p // Wo
                acc += float(grad_output[b, o, oy, p - oy * Wo])
            partial[lane] = acc
        cuda.syncthreads()
        if tid == 0:
            total = 0.0
            for q in range(_REDUCE_LANES):
                total += partial[q]
            grad_bias[o] = total
        cuda.syncthreads()


@cuda.jit
def _coordinate_gradients(input, offset, mask, has_mask, gcols, b0, nb, g, convention, scatter,
                          grad_input, grad_offset, grad_mask):
    """Offset and mask gradients of one block of images, and the atomic input scatter.

    Per sample (bl, d, k, p), with ``G_c = grad_columns[c*K + k, bl*P + p]``::

        grad_offset[b, 2kk]   = m * sum_c G_c * dS_c/dy      (convention's border rule)
        grad_offset[b, 2kk+1] = m * sum_c G_c * dS_c/dx
        grad_mask[b, kk]      =     sum_c G_c * S_c
        grad_input[b, c, y0+a, x0+b] += G_c * m * w_ab      (if ``scatter``; atomic)
    """
    H, W, Wo, P, K, kw, sh, sw, ph, pw, dh, dw, D, Cd = g
    closed = convention == _TORCHVISION
    n = nb * D * K * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        bl, d, k, p = _sample_index(t, g)
        b = b0 + bl
        kk, oy, ox, y, x, m = _tap_sample(offset, mask, has_mask, b, d, k, p, g)
        # The gradient rule may also admit the lines y = -1 / x = -1; where the
        # forward rule admits the point too, both give the same corner and fractions.
        active, y0, x0, ly, lx = locate(y, x, H, W, closed)
        forward_active = locate(y, x, H, W, False)[0]
        w00, w01, w10, w11 = corner_weights(ly, lx)
        in00 = in_image(y0, x0, H, W)
        in01 = in_image(y0, x0 + 1, H, W)
        in10 = in_image(y0 + 1, x0, H, W)
        in11 = in_image(y0 + 1, x0 + 1, H, W)
        col = bl * P + p
        acc_y = 0.0
        acc_x = 0.0
        acc_m = 0.0
        for ci in range(Cd):
            c = d * Cd + ci
            gv = float(gcols[c * K + k, col])
            d_dy = 0.0
            d_dx = 0.0
            s = 0.0
            if active:
                v00, v01, v10, v11 = corners(input[b, c], y0, x0, H, W)
                d_dy, d_dx = interpolate_gradient(v00, v01, v10, v11, ly, lx)
                if forward_active:
                    s = interpolate(v00, v01, v10, v11, ly, lx)
            acc_y += gv * d_dy
            acc_x += gv * d_dx
            acc_m += gv * s
            if scatter and forward_active:
                gm = gv * m
                if in00:
                    cuda.atomic.add(grad_input, (b, c, y0, x0), gm * w00)
                if in01:
                    cuda.atomic.add(grad_input, (b, c, y0, x0 + 1), gm * w01)
                if in10:
                    cuda.atomic.add(grad_input, (b, c, y0 + 1, x0), gm * w10)
                if in11:
                    cuda.atomic.add(grad_input, (b, c, y0 + 1, x0 + 1), gm * w11)
        grad_offset[b, 2 * kk, oy, ox] = m * acc_y
        grad_offset[b, 2 * kk + 1, oy, ox] = m * acc_x
        if has_mask:
            grad_mask[b, kk, oy, ox] = acc_m


# --- the deterministic gather of grad_input -------------------------------------------------
# Cells: the floor corner (y0, x0) of an active sample lies in [-1, H-1] x [-1, W-1];
# cell index (bl*D + d)*(H+1)*(W+1) + (y0+1)*(W+1) + (x0+1).


@cuda.jit
def _sample_cells(offset, b0, nb, g, cell_of, counts):
    """cell_of[t] = the cell of sample t (-1 if it touches no pixel); counts[cell] += 1."""
    H, W, Wo, P, K, kw, sh, sw, ph, pw, dh, dw, D, Cd = g
    cells = (H + 1) * (W + 1)
    n = nb * D * K * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        bl, d, k, p = _sample_index(t, g)
        b = b0 + bl
        kk, oy, ox, y, x, _ = _tap_sample(offset, offset, False, b, d, k, p, g)
        active, y0, x0, ly, lx = locate(y, x, H, W, False)
        if active and y0 >= -1 and x0 >= -1:      # NaN points are active but touch nothing
            cell = (bl * D + d) * cells + (y0 + 1) * (W + 1) + (x0 + 1)
            cell_of[t] = cell
            cuda.atomic.add(counts, cell, 1)
        else:
            cell_of[t] = -1


@cuda.jit
def _exclusive_scan(counts, starts):
    """starts[q] = sum(counts[:q]) for q <= n; one block, deterministic (integers)."""
    partial = cuda.shared.array(_MAX_THREADS, np.int64)
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
def _place_samples(cell_of, starts, counts, order):
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
def _sort_buckets(starts, order):
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
def _gather_input_gradient(offset, mask, has_mask, gcols, b0, nb, g, starts, order,
                           grad_input):
    """grad_input[b, c, iy, ix] = sum of G_c * m * w_ab over the samples of its four cells.

    One thread per (bl, d, iy, ix); cells in the order (iy, ix), (iy, ix-1),
    (iy-1, ix), (iy-1, ix-1) (the pixel is corner (0,0), (0,1), (1,0), (1,1) of
    the cell), the samples of a cell in increasing index: a fixed order.
    ``grad_input`` must be zero on entry.
    """
    H, W, Wo, P, K, kw, sh, sw, ph, pw, dh, dw, D, Cd = g
    cells = (H + 1) * (W + 1)
    n = nb * D * H * W
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        ix = t % W
        r = t // W
        iy = r % H
        r = r // H
        d = r % D
        bl = r // D
        b = b0 + bl
        base = (bl * D + d) * cells
        for corner in range(4):
            a = corner // 2
            e = corner - 2 * a
            cell = base + (iy - a + 1) * (W + 1) + (ix - e + 1)
            for q in range(starts[cell], starts[cell + 1]):
                s = order[q]
                p = s % P
                k = (s // P) % K
                kk, oy, ox, y, x, m = _tap_sample(offset, mask, has_mask, b, d, k, p, g)
                active, y0, x0, ly, lx = locate(y, x, H, W, False)
                w = corner_weights(ly, lx)[corner]
                col = bl * P + p
                for ci in range(Cd):
                    c = d * Cd + ci
                    gm = float(gcols[c * K + k, col]) * m
                    grad_input[b, c, iy, ix] += gm * w


@cuda.jit
def _fill(array, value):
    """array[:] = value for a 1-D array."""
    for t in range(cuda.grid(1), array.shape[0], cuda.gridsize(1)):
        array[t] = value


@cuda.jit
def _convert4(src, dst):
    """dst[...] = src[...] for 4-D arrays of any strides and dtypes (dst C-contiguous)."""
    n0, n1, n2, n3 = dst.shape
    n = n0 * n1 * n2 * n3
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        i3 = t % n3
        r = t // n3
        i2 = r % n2
        r = r // n2
        i1 = r % n1
        i0 = r // n1
        dst[i0, i1, i2, i3] = src[i0, i1, i2, i3]


@cuda.jit
def _convert1(src, dst):
    """dst[:] = src[:] for 1-D arrays of any stride and dtype."""
    for t in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[t] = src[t]


def _make_gemm_kernel(dtype, threads=None, per_thread=None, tile_k=None):
    """The tiled GEMM kernel for ``dtype`` (np.float32 or np.float64).

    ``c[z] = op(a[z]) @ op(b[z]) (+ c[z] if accumulate)`` for every batch
    index ``z`` (the convolution group), ``op`` a transpose when ``ta``/``tb``.
    Grid ``(ceil(N/tile), ceil(M/tile), batch)``, block ``(threads, threads)``
    with ``tile = threads * per_thread``: each block computes a tile x tile
    block of ``c``, each thread a ``per_thread x per_thread`` sub-tile (rows
    ``ty + threads*u``, columns ``tx + threads*v``), stepping through ``k``
    ``tile_k`` at a time in shared memory.  Accumulates in ``dtype``.
    Defaults: :data:`GEMM_THREADS`, :data:`GEMM_PER_THREAD`, :data:`TILE_K`.
    """
    nt = GEMM_THREADS if threads is None else threads
    pt = GEMM_PER_THREAD if per_thread is None else per_thread
    tk = TILE_K if tile_k is None else tile_k
    tile = nt * pt
    nthreads = nt * nt

    @cuda.jit
    def _gemm_kernel(a, b, c, ta, tb, accumulate):
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
            for e in range(tid, tk * tile, nthreads):
                # load order follows the memory order of the operand (coalesced)
                if ta:
                    mm = e % tile
                    kk = e // tile
                else:
                    kk = e % tk
                    mm = e // tk
                gm = m0 + mm
                gk = k0 + kk
                if gm < M and gk < Kd:
                    if ta:
                        As[kk, mm] = a[z, gk, gm]
                    else:
                        As[kk, mm] = a[z, gm, gk]
                else:
                    As[kk, mm] = 0
                if tb:
                    kk = e % tk
                    nn = e // tk
                else:
                    nn = e % tile
                    kk = e // tile
                gn = n0 + nn
                gk = k0 + kk
                if gn < N and gk < Kd:
                    if tb:
                        Bs[kk, nn] = b[z, gn, gk]
                    else:
                        Bs[kk, nn] = b[z, gk, gn]
                else:
                    Bs[kk, nn] = 0
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
    return _gemm_kernel


#: dtype -> the Numba GEMM kernel of that dtype.
GEMM_KERNELS = {np.dtype(np.float32): _make_gemm_kernel(np.float32),
                np.dtype(np.float64): _make_gemm_kernel(np.float64)}

#: name -> kernel dispatcher (the element-wise, reduction and sorting kernels).
KERNELS = {k.py_func.__name__ if hasattr(k, "py_func") else k.fn.__name__: k for k in (
    _im2col, _store_output, _gather_grad_output, _bias_gradient, _coordinate_gradients,
    _sample_cells, _exclusive_scan, _place_samples, _sort_buckets, _gather_input_gradient,
    _fill, _convert4, _convert1)}


def kernel_signatures(dtype):
    """``{name: (python_function, argument_types)}`` of every kernel for ``dtype``.

    The types a call of :func:`forward`/:func:`backward` passes (C-contiguous
    arrays of the compute dtype, int64 indices, a UniTuple geometry); used to
    compile every kernel ahead of time with ``numba.cuda.compile_ptx``.
    """
    from numba import types as nt
    f = nt.float64 if np.dtype(dtype) == np.float64 else nt.float32
    a1, a2, a3, a4 = (nt.Array(f, nd, "C") for nd in (1, 2, 3, 4))
    i1 = nt.Array(nt.int64, 1, "C")
    i64, flag = nt.int64, nt.boolean
    geo = nt.UniTuple(nt.int64, 14)
    py = lambda k: k.py_func
    return {
        "_im2col": (py(_im2col), (a4, a4, a4, flag, a2, i64, i64, geo)),
        "_store_output": (py(_store_output), (a2, a1, flag, a4, i64, i64, i64)),
        "_gather_grad_output": (py(_gather_grad_output), (a4, a2, i64, i64, i64)),
        "_bias_gradient": (py(_bias_gradient), (a4, a1)),
        "_coordinate_gradients": (py(_coordinate_gradients),
                                  (a4, a4, a4, flag, a2, i64, i64, geo, i64, flag,
                                   a4, a4, a4)),
        "_sample_cells": (py(_sample_cells), (a4, i64, i64, geo, i1, i1)),
        "_exclusive_scan": (py(_exclusive_scan), (i1, i1)),
        "_place_samples": (py(_place_samples), (i1, i1, i1, i1)),
        "_sort_buckets": (py(_sort_buckets), (i1, i1)),
        "_gather_input_gradient": (py(_gather_input_gradient),
                                   (a4, a4, flag, a2, i64, i64, geo, i1, i1, a4)),
        "_fill": (py(_fill), (a1, f)),
        "_convert4": (py(_convert4), (nt.Array(nt.float16, 4, "A"), a4)),
        "_convert1": (py(_convert1), (nt.Array(nt.float16, 1, "A"), a1)),
        "_gemm_kernel": (py(GEMM_KERNELS[np.dtype(dtype)]), (a3, a3, a3, flag, flag, flag)),
    }


# ---------------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------------

_configs = {}


def _configured(kernel, key, blocks, threads):
    """``kernel[blocks, threads]``, cached under ``key`` (not on the simulator, whose
    ``kernel[...]`` reconfigures and returns the kernel object itself)."""
    if SIMULATED:
        return kernel[blocks, threads]
    cfg = _configs.get(key)
    if cfg is None:
        if len(_configs) > 4096:
            _configs.clear()
        with warnings.catch_warnings():
            # small grids are deliberate here (tiny problems, one block per channel)
            warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
            cfg = _configs[key] = kernel[blocks, threads]
    return cfg


def _launch(kernel, n):
    """``kernel[blocks, threads]`` for ``n`` work items (grid-stride kernels).

    ``THREADS_PER_BLOCK`` threads per block, at most ``MAX_BLOCKS`` blocks;
    the configured launcher is cached per (kernel, n, settings).
    """
    threads = THREADS_PER_BLOCK
    if not 1 <= threads <= _MAX_THREADS:
        raise ValueError(f"THREADS_PER_BLOCK must be in 1..{_MAX_THREADS}; got {threads}")
    blocks = max(1, min(MAX_BLOCKS, -(-n // threads)))
    return _configured(kernel, (kernel, n, threads, MAX_BLOCKS), blocks, threads)


def _launch_blocks(kernel, blocks, threads):
    """``kernel[blocks, threads]`` with an explicit grid, cached."""
    return _configured(kernel, (kernel, "grid", blocks, threads), blocks, threads)


_workspace = {}
_views = {}
_dummies = {}


def clear_cache():
    """Free the cached scratch buffers and forget the cached launch configurations."""
    _workspace.clear()
    _views.clear()
    _dummies.clear()
    _configs.clear()


def _empty(shape, dtype):
    cp = _cupy() if not SIMULATED else None
    if cp is not None:
        return _wrap(cp.empty(shape, dtype))
    return cuda.device_array(shape, dtype)


def _scratch(name, shape, dtype):
    """A cached device buffer viewed as ``shape`` (contents undefined).

    The buffer grows when needed and is kept between calls; the views are
    cached too (creating a device-array view costs Python time on every call).
    """
    key = (name, shape, dtype)
    view = _views.get(key)
    if view is not None:
        return view
    size = int(np.prod(shape))
    buf = _workspace.get(name)
    if buf is None or buf.dtype != dtype or buf.shape[0] < size:
        _workspace[name] = buf = _empty((max(size, 1),), dtype)
        for k in [k for k in _views if k[0] == name]:
            del _views[k]
    if len(_views) > 256:
        _views.clear()
    view = _views[key] = buf[:size].reshape(shape)
    return view


def _dummy(ndim, dtype):
    """A 1-element array standing in for a missing mask/bias (never read)."""
    key = (ndim, np.dtype(dtype))
    arr = _dummies.get(key)
    if arr is None:
        arr = _dummies[key] = cuda.to_device(np.zeros((1,) * ndim, dtype))
    return arr


def _zeros(shape, dtype):
    """A new device array of zeros."""
    arr = _empty(shape, dtype)
    size = int(np.prod(shape))
    if size:
        _launch(_fill, size)(arr.reshape(size), np.dtype(dtype).type(0))
    return arr


def _geometry_tuple(geom):
    return (geom.height, geom.width, geom.out_w, geom.out_pixels, geom.taps, geom.kw,
            geom.stride[0], geom.stride[1], geom.padding[0], geom.padding[1],
            geom.dilation[0], geom.dilation[1], geom.offset_groups, geom.in_per_offset_group)


def _images_per_block(geom, itemsize):
    per_image = geom.in_channels * geom.taps * geom.out_pixels * itemsize
    return max(1, min(geom.batch, driver.column_memory() // max(per_image, 1)))


# ---------------------------------------------------------------------------------------------
# Matrix products
# ---------------------------------------------------------------------------------------------

_CUPY = []


def _cupy():
    """The cupy module, or None if it is not installed (or unusable); imported once."""
    if not _CUPY:
        module = None
        if not SIMULATED and importlib.util.find_spec("cupy") is not None:
            try:
                import cupy
                import cupy.cublas   # noqa: F401  (cuBLAS bindings, imported lazily by CuPy)
                module = cupy
            except Exception:   # pragma: no cover - broken CuPy install
                module = None
        _CUPY.append(module)
    return _CUPY[0]


def gemm_engine(macs):
    """Which engine ("cublas" or "numba") multiplies a product of ``macs`` multiply-adds."""
    if GEMM == "numba":
        return "numba"
    if GEMM == "cublas":
        if _cupy() is None:
            raise RuntimeError("GEMM='cublas' needs CuPy (pip install cupy-cuda12x or "
                               "cupy-cuda13x); it is not importable here")
        return "cublas"
    if GEMM != "auto":
        raise ValueError(f"GEMM must be 'auto', 'cublas' or 'numba'; got {GEMM!r}")
    return "cublas" if _cupy() is not None and macs >= CUBLAS_MIN_MACS else "numba"


def _matmul(a, b, c, ta, tb, accumulate):
    """``c[z] = op(a[z]) @ op(b[z]) (+ c[z])`` for 3-D C-contiguous device arrays."""
    M, N = c.shape[1], c.shape[2]
    kd = a.shape[1] if ta else a.shape[2]
    if gemm_engine(c.shape[0] * M * N * kd) == "cublas":
        cp = _cupy()
        A, B, C = cp.asarray(a), cp.asarray(b), cp.asarray(c)
        for z in range(c.shape[0]):
            cp.cublas.gemm("T" if ta else "N", "T" if tb else "N", A[z], B[z], out=C[z],
                           alpha=1.0, beta=1.0 if accumulate else 0.0)
        return
    kernel = GEMM_KERNELS[np.dtype(c.dtype)]
    grid = (-(-N // TILE), -(-M // TILE), c.shape[0])
    _launch_blocks(kernel, grid, (GEMM_THREADS, GEMM_THREADS))(a, b, c, ta, tb, accumulate)


# ---------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------

def _wrap(obj):
    """A Numba device array viewing ``obj``'s ``__cuda_array_interface__`` (no copy)."""
    desc = dict(obj.__cuda_array_interface__)
    stream = desc.pop("stream", None)
    array = cuda.from_cuda_array_interface(desc, owner=obj, sync=False)
    if stream not in (None, 1):
        # Produced on a stream other than the legacy default one, on which
        # refdcn works: wait for it once.
        cuda.external_stream(stream).synchronize()
    return array


def coerce(array):
    """What the public API validates and hands to :func:`forward`/:func:`backward`.

    Numba device arrays are returned as they are; other objects with
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors) are wrapped as
    Numba device arrays without a copy; everything else goes through
    :func:`numpy.asarray` (copied to the device later).
    """
    if array is None or isinstance(array, _DeviceArray):
        return array
    if isinstance(array, np.ndarray):
        return array
    try:
        has_interface = getattr(array, "__cuda_array_interface__", None) is not None
    except Exception as exc:   # e.g. a PyTorch tensor that requires grad
        raise TypeError(f"cannot read {type(array).__name__} as a CUDA array: {exc} "
                        f"(for a PyTorch tensor that requires grad, pass tensor.detach())"
                        ) from exc
    if has_interface:
        if SIMULATED:
            raise TypeError(f"the CUDA simulator cannot read real device memory "
                            f"({type(array).__name__}); pass NumPy arrays or simulator "
                            f"device arrays (numba.cuda.to_device)")
        return _wrap(array)
    return np.asarray(array)


def _is_device(array):
    return isinstance(array, _DeviceArray)


def _to_device(array, dtype):
    """``array`` as a C-contiguous device array of ``dtype`` (no copy if it already is one)."""
    if array is None:
        return None
    if not _is_device(array):
        return cuda.to_device(np.ascontiguousarray(array, dtype=dtype))
    if array.dtype == dtype and array.is_c_contiguous():
        return array
    out = _empty(array.shape, dtype)
    if array.size:
        kernel = _convert4 if array.ndim == 4 else _convert1
        if array.ndim not in (1, 4):   # pragma: no cover - the API only passes 1-D and 4-D
            raise ValueError(f"cannot convert a {array.ndim}-D device array")
        _launch(kernel, array.size)(array, out)
    return out


def _results(arrays, on_device):
    if on_device:
        return arrays
    return tuple(None if a is None else a.copy_to_host() for a in arrays)


# ---------------------------------------------------------------------------------------------
# The backend protocol
# ---------------------------------------------------------------------------------------------

def forward(input, offset, mask, weight, bias, geom, dtype):
    """Deformable convolution on the GPU.

    Parameters
    ----------
    input : ndarray or device array, shape (N, C_in, H, W)
    offset : ndarray or device array, shape (N, 2*D*kh*kw, H_out, W_out)
    mask : ndarray or device array, shape (N, D*kh*kw, H_out, W_out), or None
    weight : ndarray or device array, shape (C_out, C_in/groups, kh, kw)
    bias : ndarray or device array, shape (C_out,), or None
    geom : refdcn.geometry.Geometry
    dtype : numpy dtype (float32 or float64), the compute dtype

    Returns
    -------
    output : shape (N, C_out, H_out, W_out), ``dtype``
        A Numba device array if any input was a device array, else a NumPy array.
    """
    dtype = np.dtype(dtype)
    on_device = any(_is_device(a) for a in (input, offset, mask, weight, bias))
    input, offset, mask, weight, bias = (_to_device(a, dtype)
                                         for a in (input, offset, mask, weight, bias))
    out = _empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w), dtype)
    if out.size == 0:
        return _results((out,), on_device)[0]
    G, O, P = geom.groups, geom.out_channels, geom.out_pixels
    R = geom.in_channels * geom.taps
    g = _geometry_tuple(geom)
    mask_arg = offset if mask is None else mask
    bias_arg = _dummy(1, dtype) if bias is None else bias
    wg = weight.reshape(G, O // G, R // G)
    nb_max = _images_per_block(geom, dtype.itemsize)
    for b0 in range(0, geom.batch, nb_max):
        nb = min(nb_max, geom.batch - b0)
        columns = _scratch("columns", (R, nb * P), dtype)
        tmp = _scratch("tmp", (O, nb * P), dtype)
        _launch(_im2col, nb * geom.offset_groups * geom.taps * P)(
            input, offset, mask_arg, mask is not None, columns, b0, nb, g)
        _matmul(wg, _scratch("columns", (G, R // G, nb * P), dtype),
                _scratch("tmp", (G, O // G, nb * P), dtype), False, False, False)
        _launch(_store_output, nb * O * P)(tmp, bias_arg, bias is not None, out, b0, nb,
                                           geom.out_w)
    return _results((out,), on_device)[0]


def backward(grad_output, input, offset, mask, weight, bias, geom, dtype, convention):
    """The five gradients of :func:`forward` on the GPU.

    Parameters
    ----------
    grad_output : ndarray or device array, shape (N, C_out, H_out, W_out)
    input, offset, mask, weight, bias, geom, dtype : as in :func:`forward`
    convention : int
        :data:`refdcn.bilinear.BORDER_TORCHVISION` or ``BORDER_MMCV``.

    Returns
    -------
    (grad_input, grad_offset, grad_mask, grad_weight, grad_bias)
        Shapes of the corresponding inputs, ``dtype``; ``grad_mask`` /
        ``grad_bias`` are None when ``mask`` / ``bias`` are None.  Numba device
        arrays if any input was a device array, else NumPy arrays.
        ``grad_input`` is accumulated with atomic adds (run-to-run differences
        in the last bits) unless :data:`DETERMINISTIC` is set.
    """
    dtype = np.dtype(dtype)
    on_device = any(_is_device(a) for a in (grad_output, input, offset, mask, weight, bias))
    grad_output, input, offset, mask, weight, bias = (
        _to_device(a, dtype) for a in (grad_output, input, offset, mask, weight, bias))
    deterministic = DETERMINISTIC
    G, O, P, K, D = (geom.groups, geom.out_channels, geom.out_pixels, geom.taps,
                     geom.offset_groups)
    R = geom.in_channels * K
    grad_input = _zeros(input.shape, dtype)
    grad_offset = _empty(offset.shape, dtype)
    grad_mask = None if mask is None else _empty(mask.shape, dtype)
    grad_weight = _empty(weight.shape, dtype)
    grad_bias = None if bias is None else _empty(bias.shape, dtype)
    if grad_bias is not None:
        threads = min(_MAX_THREADS, THREADS_PER_BLOCK)
        _launch_blocks(_bias_gradient, max(1, min(O, MAX_BLOCKS)), threads)(grad_output,
                                                                           grad_bias)
    if geom.batch == 0:
        grad_weight = _zeros(weight.shape, dtype)
        return _results((grad_input, grad_offset, grad_mask, grad_weight, grad_bias), on_device)
    g = _geometry_tuple(geom)
    mask_arg = offset if mask is None else mask
    grad_mask_arg = grad_offset if grad_mask is None else grad_mask
    wg = weight.reshape(G, O // G, R // G)
    grad_wg = grad_weight.reshape(G, O // G, R // G)
    nb_max = _images_per_block(geom, dtype.itemsize)
    for b0 in range(0, geom.batch, nb_max):
        nb = min(nb_max, geom.batch - b0)
        samples = nb * D * K * P
        columns = _scratch("columns", (R, nb * P), dtype)
        _launch(_im2col, samples)(input, offset, mask_arg, mask is not None, columns, b0, nb, g)
        if nb == 1:       # grad_output[b0] is already (C_out, P)
            gt3 = grad_output[b0].reshape(G, O // G, P)
        else:             # (nb, C_out, P) -> (C_out, nb*P)
            _launch(_gather_grad_output, nb * O * P)(
                grad_output, _scratch("tmp", (O, nb * P), dtype), b0, nb, geom.out_w)
            gt3 = _scratch("tmp", (G, O // G, nb * P), dtype)
        cols3 = _scratch("columns", (G, R // G, nb * P), dtype)
        _matmul(gt3, cols3, grad_wg, False, True, b0 > 0)       # grad_W += G @ columns^T
        _matmul(wg, gt3, cols3, True, False, False)             # grad_columns = W^T @ G
        _launch(_coordinate_gradients, samples)(
            input, offset, mask_arg, mask is not None, columns, b0, nb, g, convention,
            not deterministic, grad_input, grad_offset, grad_mask_arg)
        if deterministic:
            _gather_block(offset, mask, mask_arg, columns, b0, nb, geom, g, grad_input)
    return _results((grad_input, grad_offset, grad_mask, grad_weight, grad_bias), on_device)


def _gather_block(offset, mask, mask_arg, columns, b0, nb, geom, g, grad_input):
    """The deterministic input gradient of one block of images (see the module notes)."""
    samples = nb * geom.offset_groups * geom.taps * geom.out_pixels
    cells = nb * geom.offset_groups * (geom.height + 1) * (geom.width + 1)
    cell_of = _scratch("cell_of", (samples,), np.dtype(np.int64))
    counts = _scratch("counts", (cells,), np.dtype(np.int64))
    starts = _scratch("starts", (cells + 1,), np.dtype(np.int64))
    order = _scratch("order", (samples,), np.dtype(np.int64))
    _launch(_fill, cells)(counts, 0)
    _launch(_sample_cells, samples)(offset, b0, nb, g, cell_of, counts)
    _launch_blocks(_exclusive_scan, 1, min(_MAX_THREADS, THREADS_PER_BLOCK))(counts, starts)
    _launch(_place_samples, samples)(cell_of, starts, counts, order)
    _launch(_sort_buckets, cells)(starts, order)
    pixels = nb * geom.offset_groups * geom.height * geom.width
    _launch(_gather_input_gradient, pixels)(offset, mask_arg, mask is not None, columns, b0, nb,
                                            g, starts, order, grad_input)
