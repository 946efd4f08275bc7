"""The one block driver: im2col + matrix products over tiles, for every im2col backend.

Every fast deformable convolution is built the same way, and so are refdcn's
``"numpy"``, ``"numba"``, ``"cython"`` and ``"cuda"`` backends.  Each supplies a
:class:`KernelSet` (the deformable sampling steps, and for device arrays the
allocation and matrix-product functions); this module owns the rest:

forward, per tile
    ``columns = im2col(input, offset, mask)``
    ``out[b, group g] = W_g @ columns[b, g]``          the GEMMs of a tile's images at once
fused forward (kernel sets with ``im2col_pixels``), per tile of pixels of one image
    ``tile = im2col_pixels(...)``                      a few hundred KiB, in one thread
    ``out[b, group g, pixels] = W_g @ tile[g]``        at once, while the tile is in cache
backward, per tile
    ``columns = im2col(...)``                          (recomputed, not stored)
    ``grad_W_g += G[b, g] @ columns[b, g]^T``          tiles in a fixed order
    ``columns[b, g] = W_g^T @ G[b, g]``                the column gradient, in place
    ``grad_input  += col2im(grad_columns, offset, mask)`` the adjoint of sampling
    ``grad_offset, grad_mask = coordinate_gradients(grad_columns, input, offset, mask)``

The column gradient overwrites the columns of the same image once that
image's weight-gradient product has read them, so forward and backward hold
one column buffer, allocated once per call for the largest tile and reused.

Column layouts (:attr:`KernelSet.layout`)
-----------------------------------------
``"rows"``
    columns (B, C_in*K, P): row ``c*K + k`` holds channel ``c``, tap
    ``k = i*kw + j``; column ``oy*W_out + ox`` holds output pixel ``(oy, ox)``;
    the weight is used as (groups, C_out/groups, C_in/groups*K) (a reshape).
``"channels_last"``
    columns (B, groups, P, K*Cg) with ``Cg = C_in/groups``, in (tap, channel)
    order: ``columns[b, g, p, k*Cg + cl]`` is ``rows``'s
    ``columns[b, (g*Cg + cl)*K + k, p]``; the weight is used as (groups,
    C_out/groups, K*Cg) in the same (tap, channel) order (a transposed copy).

Tiles and the memory bound
--------------------------
What one tile holds at its peak stays under :func:`column_memory` bytes: the
column buffer, plus what the kernel set declares (its transient arrays per
column element and its per-block workspace: :meth:`KernelSet.tile_bytes`).  A *tile* is either a block of whole images
or, when one image's columns exceed :data:`TILE_COLUMN_BYTES` or the bound, a
range of output rows of one image (:meth:`refdcn.geometry.Geometry.output_rows`;
the input stays whole, the offset, mask and output rows are sliced).

Results are bitwise identical for every bound from one fixed tile up: the
tiles are blocks of whole images, or, for images whose columns exceed
:data:`TILE_COLUMN_BYTES`, ranges of rows that depend only on the geometry,
never on the bound; each image (or row range) is always computed by the same
kernel and GEMM calls with the same operands; the weight gradient is
accumulated tile by tile in batch and row order, and the input gradient of a
split image is the sum of its ranges' contributions in that same order.  The
one exception: a bound smaller than one fixed tile's :meth:`KernelSet.tile_bytes`
makes the tiles smaller to keep the bound, and the results of those images
may then differ in the last bits (a GEMM over fewer columns need not round
like the wider one; all within the derived tolerances of the loop reference).
The smallest tile is one output row: a bound below one row's columns
(``C_in*K*W_out*itemsize`` bytes) is exceeded by that row.

The kernel-set contract
-----------------------
A backend builds a :class:`KernelSet` from its kernels and hooks, and exports
its ``forward``/``backward``::

    KERNELS = driver.KernelSet(im2col, col2im, coordinate_gradients, layout="rows")
    forward, backward = KERNELS.forward, KERNELS.backward

Kernels (all arrays C-contiguous in the compute dtype; ``mask`` may be None;
``geom`` is the tile's :class:`~refdcn.geometry.Geometry`, ``geom.batch`` its
images, ``geom.out_h`` its output rows; ``prepared`` is what
``prepare_input(input, geom)`` returned for the tile's images, or None)::

    im2col(input, offset, mask, geom, columns, prepared)       # writes columns
    col2im(grad_columns, offset, mask, geom, grad_input, prepared)
        # writes grad_input (B, C_in, H, W); with col2im_accumulates=True it adds
        # to it (grad_input is zero before the first tile of an image)
    coordinate_gradients(grad_columns, input, offset, mask, geom, convention,
                         grad_offset, grad_mask, prepared)    # writes them; grad_mask may be None

Optional declarations and hooks (defaults: NumPy host arrays):

``im2col_pixels(input, offset, mask, geom, tile, image, pixel0, prepared)``
                        the fused forward's serial sampling step, for
                        ``"channels_last"`` kernel sets on host arrays: in
                        the calling thread, writes ``tile`` (groups, n, K*Cg)
                        with im2col's ``columns[image, :, pixel0:pixel0+n]``
                        (arguments as for im2col; ``geom`` the whole images').
                        ``tile`` is C-contiguous.  When declared, the
                        forward runs fused (:func:`pixel_tile`), unless
                        ``matmul`` is not :func:`numpy_matmul` or the
                        BLAS's threads cannot be set (no threadpoolctl).

``layout``              ``"rows"`` or ``"channels_last"`` (above).
``col2im_accumulates``  col2im adds into ``grad_input`` (e.g. atomic adds)
                        rather than overwriting it.  Kernel sets that
                        overwrite must work on host (NumPy) arrays.
``temporary_bytes``     transient bytes the kernels allocate per column
                        element, besides the columns (counted against the bound).
``workspace(geom, itemsize) -> bytes``  what the kernels hold per block of
                        ``geom.batch`` images besides the columns (e.g. a padded
                        input copy, col2im scratch; counted against the bound).
``prepare_input(input, geom) -> prepared``  once per block of images (once per
                        image for a split image), e.g. a padded channels-last copy.
``empty(shape, dtype)``, ``zeros(shape, dtype)``  allocation (on the device).
``column_buffer(size, dtype)``  the 1-D column buffer (default ``empty``).
``matmul(a, b, out, trans_a=False, trans_b=False, accumulate=False)``
                        products of 3-D stacks: for ``z`` in ``0 .. Z-1``
                        (``Z`` the longest stack), ``out[z % len(out)] =
                        op(a[z % len(a)]) @ op(b[z % len(b)])``; ``op``
                        transposes when asked.  Each stack has length ``Z``
                        or a common length ``L`` that divides ``Z`` (stack
                        ``z = b*G + g`` is image ``b``, group ``g``; the
                        weight is a stack of ``G``).  With ``accumulate``
                        the products are added (``+=``), and a shorter
                        ``out`` receives its products in ``z`` order (the
                        weight gradient, summed over the images);
                        :func:`stack_chunks` splits such a call into
                        products of equal stacks.  ``a``/``b`` may be
                        strided views of C-contiguous arrays only through the
                        leading (stack) index; so may ``out``, except in the
                        fused forward, whose ``out`` is a range of pixels of
                        the output (rows strided, elements contiguous).
``contiguous(array)``   a C-contiguous copy of a strided slice.
``assign(dst, src)``    ``dst[...] = src`` (dst may be a strided slice).
``add_bias(out, bias)`` ``out (N, C_out, P) += bias[:, None]``.
``bias_gradient(grad_output) -> (C_out,)``  sum over images and pixels of
                        ``grad_output`` (N, C_out, P), in the compute dtype.
"""

from collections import namedtuple
from dataclasses import dataclass
import functools
import inspect
import numbers
import os
import re
from typing import Callable, Optional

import numpy as np

from . import parallel

__all__ = ["KernelSet", "column_memory", "set_column_memory", "parse_bytes", "plan", "Tile",
           "DEFAULT_COLUMN_MEMORY", "TILE_COLUMN_BYTES", "LAYOUTS", "pixel_tile",
           "PIXEL_TILE_BYTES", "PIXEL_TILE_MIN"]

#: The default bound on the column buffer, in bytes.
DEFAULT_COLUMN_MEMORY = 256 * 2**20

#: Images whose columns exceed this many bytes are split into ranges of output
#: rows of at most this size (at least one row).  A property of the geometry,
#: not of the bound, so that results do not depend on the bound.
TILE_COLUMN_BYTES = 16 * 2**20

#: Bytes of the columns of one tile of output pixels in the fused forward
#: (:func:`pixel_tile`): the tile goes from the sampling to the products
#: through the caches.  Measured on a 2-core AMD EPYC (512 KiB L2 per core,
#: 32 MiB L3), 2026-12-08, fastest of 256 KiB..2 MiB: on 1x256x256x64x64 k=3
#: the forward took 0.84x the unfused one (min of 15 calls).
PIXEL_TILE_BYTES = 2**20

#: The fewest output pixels of a tile of the fused forward: narrower products
#: run below the BLAS's rate (on the same machine, 32-pixel tiles of the shape
#: above were no faster than the unfused forward).
PIXEL_TILE_MIN = 128

#: The column layouts a kernel set can declare.
LAYOUTS = ("rows", "channels_last")

_column_memory = None

_UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(value, name="nbytes"):
    """A positive number of bytes from an int or a string such as ``"512MiB"``.

    Accepts ints (Python or NumPy) and strings of digits with an optional unit
    ``B``, ``K``/``KB``/``KiB``, ``M``..., ``G``..., ``T``... (binary
    multiples: ``1KB == 1KiB == 1024``); fractional strings (``"1.5GiB"``) are
    rounded down to whole bytes.

    Raises
    ------
    TypeError
        For bools, floats and other types; the message names ``name``.
    ValueError
        For zero, negative sizes and unparsable strings.
    """
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kKmMgGtT])i?[bB]?|[bB])?\s*", value)
        if not m:
            raise ValueError(f"{name} must be a size such as 268435456 or '256MiB'; "
                             f"got {value!r}")
        nbytes = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    elif isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool,
                                                                                      np.bool_)):
        nbytes = int(value)
    else:
        raise TypeError(f"{name} must be a positive int or a size string such as '512MiB'; "
                        f"got {value!r} ({type(value).__name__})")
    if nbytes < 1:
        raise ValueError(f"{name} must be at least 1 byte; got {value!r}")
    return nbytes


def column_memory():
    """Upper bound in bytes on the column buffer of every backend (default 256 MiB).

    Set with :func:`set_column_memory` or the environment variable
    ``REFDCN_COLUMN_MEMORY`` (bytes, or with a unit: ``512MiB``, ``1GiB``).
    ``REFDCN_CUDA_COLUMN_MEMORY`` is read as an alias when
    ``REFDCN_COLUMN_MEMORY`` is not set (older releases had a separate CUDA
    bound).
    """
    if _column_memory is not None:
        return _column_memory
    for var in ("REFDCN_COLUMN_MEMORY", "REFDCN_CUDA_COLUMN_MEMORY"):
        env = os.environ.get(var)
        if env:
            return parse_bytes(env, var)
    return DEFAULT_COLUMN_MEMORY


def set_column_memory(nbytes):
    """Set the column-buffer bound of every backend.

    Parameters
    ----------
    nbytes : int, str or None
        Bytes (a positive int), or a size string as accepted by
        ``REFDCN_COLUMN_MEMORY`` (``"512MiB"``, ``"1GiB"``); None restores the
        environment's value or the default (:data:`DEFAULT_COLUMN_MEMORY`).

    Raises
    ------
    TypeError
        For bools, floats and other types.
    ValueError
        For zero, negative and unparsable sizes.
    """
    global _column_memory
    _column_memory = None if nbytes is None else parse_bytes(nbytes, "nbytes")


# --------------------------------------------------------------------------- tiles

#: Images ``start .. stop-1``, output rows ``row0 .. row1-1``.
Tile = namedtuple("Tile", ["start", "stop", "row0", "row1"])


def plan(ks, geom, itemsize, limit=None):
    """The tiles of one call, in order (see the module docstring).

    Remembered for the last few distinct arguments (with the thread count,
    which a kernel set's workspace may depend on, and
    :data:`TILE_COLUMN_BYTES`): a layer called again and again plans once.

    Parameters
    ----------
    ks : KernelSet
        Its :meth:`KernelSet.tile_bytes` is what a tile costs.
    geom : Geometry
    itemsize : int
        Bytes per column element (the compute dtype's).
    limit : int, optional
        The bound; default :func:`column_memory`.

    Returns
    -------
    tuple of Tile
    """
    limit = column_memory() if limit is None else limit
    return _plan(ks, geom, itemsize, limit, TILE_COLUMN_BYTES, parallel.num_threads())


@functools.lru_cache(maxsize=64)
def _plan(ks, geom, itemsize, limit, tile_column_bytes, threads):
    row_bytes = max(1, geom.in_channels * geom.taps * geom.out_w * itemsize)
    fixed_rows = (geom.out_h if row_bytes * geom.out_h <= tile_column_bytes
                  else max(1, tile_column_bytes // row_bytes))

    def fits(images, rows):
        tile = geom.output_rows(images, 0, rows)
        extra = 0 if rows == geom.out_h else split_bytes(tile, itemsize)
        return ks.tile_bytes(tile, itemsize) + extra <= limit

    if fixed_rows == geom.out_h and fits(1, geom.out_h):
        size = _largest(lambda n: fits(n, geom.out_h), geom.batch)
        return tuple(Tile(s, min(geom.batch, s + size), 0, geom.out_h)
                     for s in range(0, geom.batch, size))
    rows = fixed_rows if fits(1, fixed_rows) else _largest(lambda r: fits(1, r), fixed_rows)
    return tuple(Tile(b, b + 1, r0, min(geom.out_h, r0 + rows))
                 for b in range(geom.batch) for r0 in range(0, geom.out_h, rows))


def split_bytes(tile, itemsize):
    """What the driver holds besides the kernels for a range of rows of one image.

    Contiguous copies of the range's offsets and mask and their gradients, of
    its ``grad_output`` and output, and one image's input-gradient scratch.
    """
    samples = tile.offset_groups * tile.taps * tile.out_pixels
    return itemsize * (2 * 3 * samples + 2 * tile.out_channels * tile.out_pixels
                       + tile.in_channels * tile.height * tile.width)


def _largest(fits, high):
    """The largest n in 1..high with fits(n) (fits is monotone); 1 if none."""
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def pixel_tile(geom, itemsize):
    """Output pixels per tile of the fused forward: a property of the geometry alone.

    As many pixels as :data:`PIXEL_TILE_BYTES` of columns hold (``C_in*K``
    elements per pixel), at least :data:`PIXEL_TILE_MIN`, at most the
    image's.  The fused forward takes at most the pixels of one of
    :func:`plan`'s tiles: fewer only for images split into rows of more than
    :data:`TILE_COLUMN_BYTES` of columns when ``C_in*K`` is huge, or for a
    bound below one fixed tile.  So neither a bound from one fixed tile up
    nor the threads change the tiles, nor the fused forward's results.  (What
    one fixed tile costs includes the kernel set's workspace, which may grow
    with the threads, e.g. col2im's scratch: at a bound within that margin
    the thread count can shrink the tiles, as it shrinks :func:`plan`'s.)

    Parameters
    ----------
    geom : Geometry
    itemsize : int
        Bytes per column element.

    Returns
    -------
    int
        Output pixels per tile, ``1 <= n <= geom.out_pixels``.
    """
    per_pixel = max(1, geom.in_channels * geom.taps * itemsize)
    return max(1, min(geom.out_pixels, max(PIXEL_TILE_MIN, PIXEL_TILE_BYTES // per_pixel)))


# --------------------------------------------------------------------------- NumPy hooks

#: Output columns per task of :func:`numpy_matmul` (fixed: the split never depends on
#: the threads or the tiles, so neither do the results).  Each slice packs the
#: weight again, so slices stay wide.
GEMM_COLUMNS = 1024


def stack_chunks(a, b, out):
    """A :attr:`KernelSet.matmul` call as chunks ``(a_i, b_i, out_i)`` of equal stacks.

    For hooks that multiply stacks of equal length only: the stacks of
    length ``Z`` (the longest) are cut into chunks of the common shorter
    length ``L``, in ``z`` order; stacks of length ``L`` are passed whole to
    every chunk.  Products of a chunk may run together; an ``out`` of length
    ``L`` shorter than ``Z`` takes the chunks one after the other
    (accumulating).
    """
    Z = max(a.shape[0], b.shape[0], out.shape[0])
    L = min(a.shape[0], b.shape[0], out.shape[0])
    for stack in (a, b, out):
        if stack.shape[0] not in (L, Z) or Z % L:
            raise ValueError(f"stacks of {a.shape[0]}, {b.shape[0]} and {out.shape[0]} "
                             f"products do not repeat evenly")
    for i in range(Z // L):
        yield tuple(x if x.shape[0] == L < Z else x[i * L:(i + 1) * L] for x in (a, b, out))


def numpy_matmul(a, b, out, trans_a=False, trans_b=False, accumulate=False):
    """The :attr:`KernelSet.matmul` contract with NumPy's BLAS, on refdcn's threads.

    Every product (stack entry ``z``) is split into slices of
    :data:`GEMM_COLUMNS` output columns, and all the slices of all the
    entries (every image and group of a tile) are multiplied on
    :mod:`refdcn.parallel`'s threads, each slice one BLAS call (the driver
    runs the BLAS single-threaded, :func:`refdcn.parallel.single_threaded_blas`),
    so the products share the dynamic schedule of the kernels: a starved
    thread's slices are taken over instead of waited for.  When ``out`` is
    shorter than the stacks (the weight gradient), the products of up to
    ``threads * len(out)`` entries are formed in parallel in scratch arrays
    and added to ``out`` in ``z`` order: the same bits as ``out += product``
    one entry after the other.  Calls of fewer than
    :data:`refdcn.parallel.SMALL_GEMM_FLOPS`, and every call when the BLAS's
    threads cannot be set (no threadpoolctl), run in the calling thread.
    """
    Z = max(a.shape[0], b.shape[0], out.shape[0])
    M, N = out.shape[1], out.shape[2]
    inner = a.shape[-2] if trans_a else a.shape[-1]
    slices = -(-N // GEMM_COLUMNS)
    # without threadpoolctl the BLAS keeps its own threads: do not multiply them by ours
    small = 2 * Z * M * N * inner < parallel.SMALL_GEMM_FLOPS
    threads = 1 if small or not parallel.blas_is_controllable() else parallel.num_threads()

    def product(z, j, dst, add):
        az = a[z % a.shape[0]]
        bz = b[z % b.shape[0]]
        az = az.T if trans_a else az
        bz = (bz.T if trans_b else bz)[:, j * GEMM_COLUMNS:(j + 1) * GEMM_COLUMNS]
        dst = dst[:, j * GEMM_COLUMNS:(j + 1) * GEMM_COLUMNS]
        if add:
            dst += az @ bz
        else:
            np.matmul(az, bz, out=dst)

    if out.shape[0] == Z:
        parallel.run(Z * slices, lambda t: product(*divmod(t, slices), out[t // slices],
                                                   accumulate), threads)
        return
    if not accumulate:
        raise ValueError(f"{Z} products into {out.shape[0]} outputs need accumulate=True")
    chunk = min(Z, out.shape[0] * threads)
    scratch = np.empty((chunk, M, N), out.dtype)
    for z0 in range(0, Z, chunk):
        n = min(chunk, Z - z0)
        parallel.run(n * slices, lambda t: product(z0 + t // slices, t % slices,
                                                   scratch[t // slices], False), threads)
        for i in range(n):
            out[(z0 + i) % out.shape[0]] += scratch[i]


def _assign(dst, src):
    dst[...] = src


def _add_bias(out, bias):
    out += bias[:, None]


def _bias_gradient(grad_output):
    return grad_output.sum(axis=(0, 2)).astype(grad_output.dtype)


def _column_buffer(size, dtype):
    return np.empty((size,), dtype)


@dataclass(frozen=True)
class KernelSet:
    """The kernels of one backend, their column layout and hooks (module docstring)."""
    im2col: Callable
    col2im: Callable
    coordinate_gradients: Callable
    layout: str = "rows"
    col2im_accumulates: bool = False
    temporary_bytes: float = 0.0
    workspace: Optional[Callable] = None
    prepare_input: Optional[Callable] = None
    empty: Callable = np.empty
    zeros: Callable = np.zeros
    column_buffer: Callable = _column_buffer
    im2col_pixels: Optional[Callable] = None
    matmul: Callable = numpy_matmul
    contiguous: Callable = np.ascontiguousarray
    assign: Callable = _assign
    add_bias: Callable = _add_bias
    bias_gradient: Callable = _bias_gradient

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {self.layout!r}")
        if self.im2col_pixels is not None and self.layout != "channels_last":
            raise ValueError(f"im2col_pixels needs the 'channels_last' layout; "
                             f"got {self.layout!r}")

    def tile_bytes(self, geom, itemsize):
        """Bytes a tile of geometry ``geom`` holds at its peak (what the bound limits).

        The column buffer (``itemsize`` per element), the kernels' transient
        arrays (``temporary_bytes`` per column element) and their per-block
        workspace (``workspace(geom)``).
        """
        elements = geom.batch * geom.in_channels * geom.taps * geom.out_pixels
        extra = 0 if self.workspace is None else self.workspace(geom, itemsize)
        return int(elements * (itemsize + self.temporary_bytes)) + extra

    def forward(self, input, offset, mask, weight, bias, geom, dtype):
        """Forward pass of the backend; see :func:`forward`."""
        return forward(self, input, offset, mask, weight, bias, geom, dtype)

    def backward(self, grad_output, input, offset, mask, weight, bias, geom, dtype, convention):
        """The five gradients of the backend; see :func:`backward`."""
        return backward(self, grad_output, input, offset, mask, weight, bias, geom, dtype,
                        convention)


# --------------------------------------------------------------------------- the driver

def _columns_shape(ks, geom):
    if ks.layout == "rows":
        return (geom.batch, geom.in_channels * geom.taps, geom.out_pixels)
    return (geom.batch, geom.groups, geom.out_pixels, geom.taps * geom.in_per_group)


def _column_stack(ks, columns, geom):
    """The tile's columns as a (images*groups, ., .) stack (entry ``b*groups + g``)."""
    if ks.layout == "rows":
        return columns.reshape(geom.batch * geom.groups, geom.in_per_group * geom.taps,
                               geom.out_pixels)
    return columns.reshape(geom.batch * geom.groups, geom.out_pixels,
                           geom.taps * geom.in_per_group)


def weight_matrix(ks, weight, geom):
    """``weight`` (C_out, Cg, kh, kw) as (groups, C_out/groups, Cg*K) in the layout's order."""
    G, O, K, Cg = geom.groups, geom.out_per_group, geom.taps, geom.in_per_group
    if ks.layout == "rows":
        return weight.reshape(G, O, Cg * K)
    w = weight.reshape(G, O, Cg, K).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(w).reshape(G, O, K * Cg)


def _weight_from_matrix(ks, wmat, weight_shape, geom):
    if ks.layout == "rows":
        return wmat.reshape(weight_shape)
    G, O, K, Cg = geom.groups, geom.out_per_group, geom.taps, geom.in_per_group
    return np.ascontiguousarray(wmat.reshape(G, O, K, Cg).transpose(0, 1, 3, 2)
                                ).reshape(weight_shape)


class _Call:
    """The tiles of one call, the reused buffers, and the per-tile slices."""

    def __init__(self, ks, geom, dtype):
        self.ks, self.geom, self.dtype = ks, geom, np.dtype(dtype)
        self.tiles = plan(ks, geom, self.dtype.itemsize)
        largest = max(((t.stop - t.start) * (t.row1 - t.row0) for t in self.tiles), default=0)
        size = largest * geom.out_w * geom.in_channels * geom.taps
        self.buffer = ks.column_buffer(size, self.dtype) if size else None
        self.split = any(t.row1 - t.row0 < geom.out_h for t in self.tiles)
        self._prepared_key = self._prepared = None

    def tile_geometry(self, t):
        return self.geom.output_rows(t.stop - t.start, t.row0, t.row1 - t.row0)

    def columns(self, tg):
        shape = _columns_shape(self.ks, tg)
        return self.buffer[:int(np.prod(shape))].reshape(shape)

    def rows(self, array, t):
        """(N, X, H_out, W_out) -> the tile's images and rows, C-contiguous (None stays)."""
        if array is None:
            return None
        if t.row0 == 0 and t.row1 == self.geom.out_h:
            return array[t.start:t.stop]
        return self.ks.contiguous(array[t.start:t.stop, :, t.row0:t.row1])

    def prepared(self, input, t, tg):
        if self.ks.prepare_input is None:
            return None
        key = (t.start, t.stop)
        if key != self._prepared_key:
            self._prepared = None      # free the previous one first
            self._prepared = self.ks.prepare_input(input[t.start:t.stop], tg)
            self._prepared_key = key
        return self._prepared


def forward(ks, input, offset, mask, weight, bias, geom, dtype):
    """Forward pass over tiles; output (N, C_out, H_out, W_out) in ``dtype``.

    ``input``, ``offset``, ``mask``, ``weight``, ``bias`` are C-contiguous
    arrays of ``dtype`` of the shapes of :func:`refdcn.deform_conv2d`.
    """
    out = ks.empty((geom.batch, geom.out_channels, geom.out_pixels), dtype)
    shape4 = (geom.batch, geom.out_channels, geom.out_h, geom.out_w)
    if geom.batch == 0:
        return out.reshape(shape4)
    host = _host_blas(ks)
    with parallel.single_threaded_blas(host):
        # fused only where refdcn sets the BLAS's threads (NumPy's BLAS, through
        # threadpoolctl): else each tile's products would start the BLAS's own threads
        # on top of refdcn's
        if ks.im2col_pixels is None or not host or not parallel.blas_is_controllable():
            _forward_tiles(ks, out, input, offset, mask, weight, geom, dtype)
        else:
            _forward_fused(ks, out, input, offset, mask, weight, geom, dtype)
    if bias is not None:
        ks.add_bias(out, bias)
    return out.reshape(shape4)


def _host_blas(ks):
    """Whether this kernel set multiplies with NumPy's BLAS (:func:`numpy_matmul`).

    Its products are then split over refdcn's threads, so the BLAS itself
    runs on one thread for the call (:func:`refdcn.parallel.single_threaded_blas`).
    """
    return inspect.unwrap(ks.matmul) is numpy_matmul


def _forward_tiles(ks, out, input, offset, mask, weight, geom, dtype):
    call = _Call(ks, geom, dtype)
    wmat = weight_matrix(ks, weight, geom)
    G, O, W_out = geom.groups, geom.out_per_group, geom.out_w
    trans_b = ks.layout == "channels_last"
    # 1-D, so that every tile's (C_out, P) view of it is contiguous (device arrays
    # reshape only contiguous views)
    tile_out = ks.empty((geom.out_channels * max(t.row1 - t.row0 for t in call.tiles) * W_out,),
                        dtype) if call.split else None
    for t in call.tiles:
        tg = call.tile_geometry(t)
        columns = call.columns(tg)
        ks.im2col(input[t.start:t.stop], call.rows(offset, t), call.rows(mask, t), tg, columns,
                  call.prepared(input, t, tg))
        whole = t.row0 == 0 and t.row1 == geom.out_h
        # every product of the tile's images and groups at once (a row range: one image's)
        dst = (out[t.start:t.stop] if whole else tile_out[:geom.out_channels * tg.out_pixels]
               ).reshape((t.stop - t.start) * G, O, tg.out_pixels)
        ks.matmul(wmat, _column_stack(ks, columns, tg), dst, trans_b=trans_b)
        if not whole:
            ks.assign(out[t.start, :, t.row0 * W_out:t.row1 * W_out],
                      dst.reshape(geom.out_channels, tg.out_pixels))


def _forward_fused(ks, out, input, offset, mask, weight, geom, dtype):
    """The forward in tiles of output pixels, each sampled and multiplied at once.

    A task samples one tile of :func:`pixel_tile` output pixels of one image
    into a buffer (``im2col_pixels``) and multiplies it by every group's
    weight right away (``matmul``, nested in the task: one thread), so the
    columns go from the sampling to the BLAS through the cache instead of
    through memory.  The tasks of a block of images (:func:`plan`'s blocks,
    which bound the prepared input) share the threads; every output element
    is written by one task, with operands that depend on the geometry only.

    Memory: besides the block's workspace, one tile buffer per task in
    flight, and no more tasks in flight than the bound holds buffers for (at
    least one).  A tile never holds more pixels than one of :func:`plan`'s
    tiles, so a bound from one fixed tile up always leaves room for a buffer
    and the tiles stay those of :func:`pixel_tile` (smaller bounds shrink
    them, as they shrink the plan's tiles).  Products of fewer than
    :data:`refdcn.parallel.SMALL_GEMM_FLOPS` in all run in the calling thread.
    """
    dtype = np.dtype(dtype)
    limit = column_memory()
    tiles = plan(ks, geom, dtype.itemsize, limit)
    wmat = weight_matrix(ks, weight, geom)
    G, O, P = geom.groups, geom.out_per_group, geom.out_pixels
    width = geom.taps * geom.in_per_group
    T = min(pixel_tile(geom, dtype.itemsize), (tiles[0].row1 - tiles[0].row0) * geom.out_w)
    per_image = -(-P // T)
    tile_bytes = G * T * width * dtype.itemsize
    out_g = out.reshape(geom.batch, G, O, P)
    threads = 1 if geom.flops() < parallel.SMALL_GEMM_FLOPS else parallel.num_threads()
    free = []                   # tile buffers not in use (list.pop/append: atomic)
    for start, stop in dict.fromkeys((t.start, t.stop) for t in tiles):
        tg = geom.output_rows(stop - start, 0, geom.out_h)
        inp, off = input[start:stop], offset[start:stop]
        m = None if mask is None else mask[start:stop]
        room = limit - (0 if ks.workspace is None else ks.workspace(tg, dtype.itemsize))
        prepared = None if ks.prepare_input is None else ks.prepare_input(inp, tg)

        def task(i):
            b, j = divmod(i, per_image)
            p0 = j * T
            n = min(T, P - p0)
            try:
                buffer = free.pop()
            except IndexError:          # none free (checking first would race)
                buffer = ks.empty((G * T * width,), dtype)
            tile = buffer[:G * n * width].reshape(G, n, width)
            ks.im2col_pixels(inp, off, m, tg, tile, b, p0, prepared)
            ks.matmul(wmat, tile, out_g[start + b, :, :, p0:p0 + n], trans_b=True)
            free.append(buffer)

        parallel.run((stop - start) * per_image, task,
                     max(1, min(threads, room // tile_bytes)))
        prepared = None


def backward(ks, grad_output, input, offset, mask, weight, bias, geom, dtype, convention):
    """The five gradients over tiles; see the module docstring for the steps.

    Returns ``(grad_input, grad_offset, grad_mask, grad_weight, grad_bias)``
    (``grad_mask``/``grad_bias`` None without mask/bias), in ``dtype``.
    """
    grad_input = ks.zeros(input.shape, dtype)
    grad_offset = ks.zeros(offset.shape, dtype)
    grad_mask = None if mask is None else ks.zeros(mask.shape, dtype)
    wmat = weight_matrix(ks, weight, geom)
    grad_wmat = ks.zeros(wmat.shape, dtype)
    go_all = grad_output.reshape(geom.batch, geom.out_channels, geom.out_pixels)
    grad_bias = None if bias is None else ks.bias_gradient(go_all)
    if geom.batch == 0:
        return (grad_input, grad_offset, grad_mask,
                _weight_from_matrix(ks, grad_wmat, weight.shape, geom), grad_bias)
    with parallel.single_threaded_blas(_host_blas(ks)):
        _backward_tiles(ks, grad_output, input, offset, mask, geom, dtype, convention, wmat,
                        grad_wmat, grad_input, grad_offset, grad_mask)
    return (grad_input, grad_offset, grad_mask,
            _weight_from_matrix(ks, grad_wmat, weight.shape, geom), grad_bias)


def _backward_tiles(ks, grad_output, input, offset, mask, geom, dtype, convention, wmat,
                    grad_wmat, grad_input, grad_offset, grad_mask):
    call = _Call(ks, geom, dtype)
    G, O = geom.groups, geom.out_per_group
    channels_last = ks.layout == "channels_last"
    scratch = None
    for t in call.tiles:
        tg = call.tile_geometry(t)
        whole = t.row0 == 0 and t.row1 == geom.out_h
        columns = call.columns(tg)
        off, m = call.rows(offset, t), call.rows(mask, t)
        prepared = call.prepared(input, t, tg)
        inp = input[t.start:t.stop]
        ks.im2col(inp, off, m, tg, columns, prepared)
        go = call.rows(grad_output, t).reshape((t.stop - t.start) * G, O, tg.out_pixels)
        cols = _column_stack(ks, columns, tg)
        # grad_W += G_b @ columns_b^T over the images in order, then the columns
        # become grad_columns (in place)
        ks.matmul(go, cols, grad_wmat, trans_b=not channels_last, accumulate=True)
        if channels_last:
            ks.matmul(go, wmat, cols, trans_a=True)
        else:
            ks.matmul(wmat, go, cols, trans_a=True)
        # input gradient: the first (or only) tile of an image writes, later ones add
        if whole or ks.col2im_accumulates or t.row0 == 0:
            ks.col2im(columns, off, m, tg, grad_input[t.start:t.stop], prepared)
        else:
            if scratch is None:
                scratch = ks.zeros((1,) + tuple(input.shape[1:]), dtype)
            ks.col2im(columns, off, m, tg, scratch, prepared)
            np.add(grad_input[t.start:t.stop], scratch, out=grad_input[t.start:t.stop])
        if whole:
            ks.coordinate_gradients(columns, inp, off, m, tg, convention,
                                    grad_offset[t.start:t.stop],
                                    None if grad_mask is None else grad_mask[t.start:t.stop],
                                    prepared)
        else:
            g_off = ks.empty(off.shape, dtype)
            g_m = None if m is None else ks.empty(m.shape, dtype)
            ks.coordinate_gradients(columns, inp, off, m, tg, convention, g_off, g_m, prepared)
            ks.assign(grad_offset[t.start:t.stop, :, t.row0:t.row1], g_off)
            if g_m is not None:
                ks.assign(grad_mask[t.start:t.stop, :, t.row0:t.row1], g_m)
