# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The column kernels of the ``"cython"`` backend (see :mod:`refdcn.blocking`).

Three kernels, each for float32 and float64 (the fused type ``real``)::

    im2col_into(input, offset, mask, has_mask, columns, geom)
    col2im_into(grad_columns, offset, mask, has_mask, grad_input, geom)
    coordinate_gradients_into(grad_columns, input, offset, mask, has_mask, convention,
                              grad_offset, grad_mask, geom)

Shapes (``B`` images of the block, ``K = kh*kw``, ``P = H_out*W_out``,
``D`` offset groups): input / grad_input (B, C_in, H, W); offset /
grad_offset (B, 2*D*K, P); mask / grad_mask (B, D*K, P); columns /
grad_columns (B, C_in*K, P).  All C-contiguous in the compute dtype; the
output arrays are overwritten.  ``mask`` is ignored when ``has_mask`` is
false (pass any array of the right dtype).

How they are organised
----------------------
A *sampling point* is one (image, offset group, tap, output pixel).  Its
location -- :func:`sampling_point`, :func:`locate`, :func:`corner_weights`,
the mask -- is computed once, into a small table (``Point``), and reused by
every channel of its offset group.  All scalar math comes from
``bilinear.pxd``, the mirror of :mod:`refdcn.bilinear`, also in the inner
loops: im2col calls :func:`weighted_sum` (the last step of
:func:`interpolate`) on the four corners, col2im adds to the four
``(row, col, weight)`` targets of :func:`weighted_targets` (the last step of
:func:`scatter_corners`, the adjoint), the
coordinate gradients call :func:`interpolate_gradient` and :func:`weighted_sum`
(interpolate).  These are ``inline nogil`` C functions, so the compiler
sees the arithmetic as if written in place.  im2col's columns are bitwise
those of the "numpy" backend (same functions, double precision, same order).

Corner reads go to a *padded* copy of each image plane: two zero rows/columns
before and one after, shape (H+3, W+3).  Every corner :func:`locate` can
return -- ``OUTSIDE = -2`` for inactive and NaN points, ``-1 .. H-1`` for
active ones -- then has its 2x2 block inside the padded plane, so the inner
loops read four values without a test, and a corner outside the image reads
exactly 0, which is what :func:`corners` returns for it.  Huge, infinite and
NaN offsets never become an index other than ``OUTSIDE``.

Parallel structure (OpenMP ``prange`` with dynamic scheduling when compiled
with it, serial loops from the same source otherwise):

* im2col and the coordinate gradients: over *tiles* (image, offset group,
  ``TILE`` output pixels); a tile fills its table, then sweeps it once per
  channel of the group (one channel's plane stays in L1).  The coordinate
  gradients call :func:`interpolate_gradient` (and, with a mask,
  :func:`interpolate`) per channel and point, and accumulate their products
  with the column gradient over the channels (in channel order, in double
  precision); the mask multiplies the channel sum.
* col2im: per image, the table of all its points (in pixel chunks if it
  would exceed ``COL2IM_TABLE_BYTES``), filled in parallel; then parallel over
  input channels: each plane is scattered by exactly one thread, in the fixed
  order (chunk, tap, pixel), so the scatter is race-free and deterministic.

Every image is computed on its own and every sum has a fixed order, so results
are bitwise identical for every block size and every number of threads.

Idle OpenMP threads should sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``,
set by :mod:`refdcn.backends.cython_cpu` while it imports this module): the
matrix products between the kernels need the cores.
"""

from cython.parallel cimport prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from refdcn._cy.bilinear cimport (BORDER_TORCHVISION, OUTSIDE, Target, bilinear_gradient,
                                  bilinear_sample, corner_weights, corners, in_image,
                                  interpolate, interpolate_gradient, locate, pixel, real,
                                  sampling_point, scaled_sampling_point, scatter_add,
                                  scatter_corners, weighted_sum, weighted_targets)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define REFDCN_OPENMP_ON 1
    static int refdcn_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define REFDCN_OPENMP_ON 0
    static int refdcn_max_threads(void) { return 1; }
    #endif
    """
    int REFDCN_OPENMP_ON
    int refdcn_max_threads() noexcept nogil

#: Whether this build runs its loops in parallel with OpenMP.
OPENMP = bool(REFDCN_OPENMP_ON)

cdef enum:
    # zero rows/columns of the padded planes before (= -OUTSIDE) and after the image
    PAD_BEFORE = 2
    PAD_AFTER = 1

#: Output pixels per tile: one work item of im2col and of the coordinate gradients.
cdef Py_ssize_t TILE = 256
#: Bytes of sampling table col2im may hold for one image (it splits the pixels if more).
cdef Py_ssize_t COL2IM_TABLE_BYTES = 16 * 2**20


def max_threads():
    """Threads a parallel loop uses (1 for a serial build)."""
    return refdcn_max_threads()


def _set_tile(Py_ssize_t pixels):
    """Set the tile size in output pixels (tests use small tiles); returns the old one."""
    global TILE
    if pixels < 1:
        raise ValueError(f"pixels must be >= 1; got {pixels}")
    old, TILE = TILE, pixels
    return old


def _set_col2im_table_bytes(Py_ssize_t nbytes):
    """Set col2im's table budget per image (tests use tiny ones); returns the old one."""
    global COL2IM_TABLE_BYTES
    if nbytes < 1:
        raise ValueError(f"nbytes must be >= 1; got {nbytes}")
    old, COL2IM_TABLE_BYTES = COL2IM_TABLE_BYTES, nbytes
    return old


cdef struct Geom:
    # the fields of refdcn.geometry.KernelGeometry that the kernels read (same names), and
    # the padded planes: Hp = height + 3 rows, Wp = width + 3 columns, plane = Hp * Wp
    Py_ssize_t batch, in_channels, height, width, offset_groups, taps, kw
    Py_ssize_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    Py_ssize_t out_w, out_pixels, in_per_offset_group, Hp, Wp, plane


cdef struct Point:
    # one sampling point (image, offset group, tap, output pixel): what every channel reuses
    Py_ssize_t idx          # flat index of the floor corner (y0, x0) in a padded plane
    double ly, lx           # fractional parts (locate)
    double w00, w01, w10, w11   # corner weights (corner_weights)
    double m                # the mask, 1 without one


cdef Geom _geom(geom, Py_ssize_t batch) except *:
    """The sizes of a :class:`refdcn.geometry.Geometry` as a C struct (``batch`` images)."""
    cdef Geom geo
    geo.batch = batch
    geo.in_channels = geom.in_channels
    geo.height = geom.height
    geo.width = geom.width
    geo.offset_groups = geom.offset_groups
    geo.taps = geom.taps
    geo.kw = geom.kw
    geo.stride_h = geom.stride[0]
    geo.stride_w = geom.stride[1]
    geo.pad_h = geom.padding[0]
    geo.pad_w = geom.padding[1]
    geo.dilation_h = geom.dilation[0]
    geo.dilation_w = geom.dilation[1]
    geo.out_w = geom.out_w
    geo.out_pixels = geom.out_pixels
    geo.in_per_offset_group = geom.in_per_offset_group
    geo.Hp = geom.height + PAD_BEFORE + PAD_AFTER
    geo.Wp = geom.width + PAD_BEFORE + PAD_AFTER
    geo.plane = geo.Hp * geo.Wp
    return geo


# --------------------------------------------------------------------------- shared steps

cdef void _fill(Point* pts, Py_ssize_t row, const real[:, :, ::1] offset,
                const real[:, :, ::1] mask, bint has_mask, Py_ssize_t b, Py_ssize_t d,
                Py_ssize_t t0, Py_ssize_t n, Geom* geo, bint closed) noexcept nogil:
    """The sampling points of taps 0..K-1 and pixels t0..t0+n-1: ``pts[k*row + q]``.

    ``closed``: locate's ``closed_at_minus_one``.  Serial (called inside
    parallel loops).
    """
    cdef Py_ssize_t k, q, p, i, j, oy, ox, kk, y0, x0
    cdef double y, x, ly, lx
    cdef bint active
    cdef Point* pt
    for k in range(geo.taps):
        i = k // geo.kw
        j = k - i * geo.kw
        kk = d * geo.taps + k
        for q in range(n):
            p = t0 + q
            oy = p // geo.out_w
            ox = p - oy * geo.out_w
            y = sampling_point(oy, geo.stride_h, geo.pad_h, i, geo.dilation_h,
                               offset[b, 2 * kk, p])
            x = sampling_point(ox, geo.stride_w, geo.pad_w, j, geo.dilation_w,
                               offset[b, 2 * kk + 1, p])
            active, y0, x0, ly, lx = locate(y, x, geo.height, geo.width, closed)
            pt = pts + k * row + q
            # inactive and NaN points have y0 = x0 = OUTSIDE: the all-zero corner block
            pt.idx = (y0 + PAD_BEFORE) * geo.Wp + (x0 + PAD_BEFORE)
            pt.ly = ly
            pt.lx = lx
            pt.w00, pt.w01, pt.w10, pt.w11 = corner_weights(ly, lx)
            pt.m = mask[b, kk, p] if has_mask else 1.0


cdef inline void _scatter(double* corner, Target target, Py_ssize_t Wp, double value) noexcept nogil:
    """``corner[row, col] += weight * value`` for one ``(row, col, weight)`` of scatter_corners.

    ``corner`` points at the floor corner of a point in a padded plane (row
    length ``Wp``), and the target is relative to it (scatter_corners called
    or weighted_targets with ``y0 = x0 = 0``).  Every corner locate can return lies inside the
    padded plane; what lands on its border (outside the image) is dropped later.
    """
    corner[target[0] * Wp + target[1]] += target[2] * value


cdef inline (Py_ssize_t, Py_ssize_t) _tiling(Py_ssize_t pixels) noexcept nogil:
    """(output pixels per tile ``T``, number of tiles) for ``pixels`` output pixels."""
    cdef Py_ssize_t T = max(1, min(TILE, pixels))
    return T, (pixels + T - 1) // T


cdef inline (Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) _tile(
        Py_ssize_t it, Py_ssize_t ntiles, Py_ssize_t T, Geom* geo) noexcept nogil:
    """Work item ``it`` of im2col and the coordinate gradients: (image ``b``, offset
    group ``d``, first output pixel ``t0``, output pixels ``n``), image-major."""
    cdef Py_ssize_t t0 = (it % ntiles) * T
    return (it // (geo.offset_groups * ntiles), (it // ntiles) % geo.offset_groups, t0,
            min(T, geo.out_pixels - t0))


cdef void _pad(const real[:, :, :, ::1] input, real* padded, Geom* geo) noexcept nogil:
    """Copy every plane of ``input`` into the interior of its padded plane (borders stay 0)."""
    cdef Py_ssize_t bc, yy
    for bc in prange(geo.batch * geo.in_channels, schedule="static"):
        for yy in range(geo.height):
            memcpy(padded + bc * geo.plane + (yy + PAD_BEFORE) * geo.Wp + PAD_BEFORE,
                   &input[bc // geo.in_channels, bc % geo.in_channels, yy, 0],
                   geo.width * sizeof(real))


cdef void* _alloc(size_t nbytes) except NULL:
    """``nbytes`` of zeroed scratch memory (free with ``free``)."""
    cdef void* p = malloc(nbytes if nbytes else 1)
    if p == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes of scratch memory")
    memset(p, 0, nbytes)
    return p


# --------------------------------------------------------------------------- im2col

def im2col_into(const real[:, :, :, ::1] input, const real[:, :, ::1] offset,
                const real[:, :, ::1] mask, bint has_mask, real[:, :, ::1] columns, geom):
    """Deformable im2col: ``columns[b, c*K + k, p] = m * S(input[b, c], y, x)``.

    Shapes: input (B, C_in, H, W), offset (B, 2*D*K, P), mask (B, D*K, P),
    columns (B, C_in*K, P) (written).  Parallel over tiles (image, offset
    group, pixels t0..t0+T-1); each fills its table once and serves the
    group's channels from it.
    """
    cdef Geom geo = _geom(geom, input.shape[0])
    cdef Py_ssize_t T, ntiles
    T, ntiles = _tiling(geo.out_pixels)
    cdef Py_ssize_t it, b, d, t0, n, c, k, q, ii, Wp = geo.Wp
    cdef const real* src
    cdef real* dst
    cdef Point* pts
    cdef Point* pk
    cdef double v
    cdef real* padded = NULL
    cdef Point* tables = NULL
    try:
        padded = <real*>_alloc(geo.batch * geo.in_channels * geo.plane * sizeof(real))
        tables = <Point*>_alloc(refdcn_max_threads() * geo.taps * T * sizeof(Point))
        with nogil:
            _pad(input, padded, &geo)
            for it in prange(geo.batch * geo.offset_groups * ntiles, schedule="dynamic"):
                b, d, t0, n = _tile(it, ntiles, T, &geo)
                pts = tables + threadid() * geo.taps * T
                _fill(pts, n, offset, mask, has_mask, b, d, t0, n, &geo, False)
                for c in range(d * geo.in_per_offset_group, (d + 1) * geo.in_per_offset_group):
                    src = padded + (b * geo.in_channels + c) * geo.plane
                    for k in range(geo.taps):
                        dst = &columns[b, c * geo.taps + k, t0]
                        pk = pts + k * n
                        for q in range(n):
                            # interpolate, with the point's corner_weights computed once
                            # for all channels: corners (y0, x0), (y0, x0+1), (y0+1, x0),
                            # (y0+1, x0+1) times their weights
                            ii = pk[q].idx
                            v = weighted_sum(src[ii], src[ii + 1], src[ii + Wp], src[ii + Wp + 1],
                                             pk[q].w00, pk[q].w01, pk[q].w10, pk[q].w11)
                            dst[q] = <real>(pk[q].m * v)
    finally:
        free(padded)
        free(tables)


# --------------------------------------------------------------------------- col2im

def col2im_into(const real[:, :, ::1] grad_columns, const real[:, :, ::1] offset,
                const real[:, :, ::1] mask, bint has_mask, real[:, :, :, ::1] grad_input, geom):
    """Adjoint of :func:`im2col_into`: ``grad_input[b, c, corner] += m * w_ab * grad_columns``.

    Shapes: grad_columns (B, C_in*K, P), offset (B, 2*D*K, P), mask (B, D*K, P),
    grad_input (B, C_in, H, W) (overwritten).  Per image (and chunk of pixels,
    if its table would exceed ``COL2IM_TABLE_BYTES``): first the table of every
    sampling point, in parallel; then parallel over input channels, each
    channel's plane scattered by one thread in the fixed order (chunk, tap,
    pixel): race-free and deterministic.  The planes accumulate in double
    precision (also for float32) and are rounded once at the end.
    """
    cdef Geom geo = _geom(geom, grad_columns.shape[0])
    cdef Py_ssize_t per_pixel = geo.offset_groups * geo.taps * sizeof(Point)
    cdef Py_ssize_t PT = max(1, min(geo.out_pixels, COL2IM_TABLE_BYTES // per_pixel))
    cdef Py_ssize_t nchunks = (geo.out_pixels + PT - 1) // PT
    cdef Py_ssize_t T, ntiles
    T, ntiles = _tiling(PT)      # tiles of one chunk's table
    cdef Py_ssize_t b, chunk, p0, np_, it, d, t0, n, c, k, q, yy, xx, Wp = geo.Wp
    cdef Target t00, t01, t10, t11
    cdef const real* gsrc
    cdef double* acc
    cdef real* gout
    cdef const double* arow
    cdef Point* pk
    cdef double gv
    cdef double* padded = NULL
    cdef Point* table = NULL
    try:
        padded = <double*>_alloc(geo.in_channels * geo.plane * sizeof(double))
        table = <Point*>_alloc(geo.offset_groups * geo.taps * PT * sizeof(Point))
        with nogil:
            for b in range(geo.batch):
                for chunk in range(nchunks):
                    p0 = chunk * PT
                    np_ = min(PT, geo.out_pixels - p0)
                    # table of group d: table[d*K*np_ + k*np_ + q], filled tile by tile
                    for it in prange(geo.offset_groups * ntiles, schedule="dynamic"):
                        d = it // ntiles
                        t0 = (it % ntiles) * T
                        if t0 < np_:
                            n = min(T, np_ - t0)
                            _fill(table + d * geo.taps * np_ + t0, np_, offset, mask, has_mask, b,
                                  d, p0 + t0, n, &geo, False)
                    for c in prange(geo.in_channels, schedule="dynamic"):
                        acc = padded + c * geo.plane
                        if chunk == 0:
                            memset(acc, 0, geo.plane * sizeof(double))
                        d = c // geo.in_per_offset_group
                        for k in range(geo.taps):
                            gsrc = &grad_columns[b, c * geo.taps + k, p0]
                            pk = table + (d * geo.taps + k) * np_
                            for q in range(np_):
                                # the adjoint of sampling: m * g to the four corners, each
                                # times its weight (bilinear.scatter_corners)
                                gv = pk[q].m * gsrc[q]
                                # scatter_corners with the point's corner_weights computed
                                # once for all channels; targets relative to the floor
                                # corner at acc + idx
                                t00, t01, t10, t11 = weighted_targets(0, 0, pk[q].w00, pk[q].w01,
                                                                      pk[q].w10, pk[q].w11)
                                _scatter(acc + pk[q].idx, t00, Wp, gv)
                                _scatter(acc + pk[q].idx, t01, Wp, gv)
                                _scatter(acc + pk[q].idx, t10, Wp, gv)
                                _scatter(acc + pk[q].idx, t11, Wp, gv)
                        if chunk == nchunks - 1:
                            # the interior is the gradient; the border collected what fell
                            # outside the image (and NaN points), and is dropped
                            for yy in range(geo.height):
                                gout = &grad_input[b, c, yy, 0]
                                arow = acc + (yy + PAD_BEFORE) * Wp + PAD_BEFORE
                                for xx in range(geo.width):
                                    gout[xx] = <real>arow[xx]
    finally:
        free(padded)
        free(table)


# --------------------------------------------------------------------------- coordinate gradients

def coordinate_gradients_into(const real[:, :, ::1] grad_columns,
                              const real[:, :, :, ::1] input, const real[:, :, ::1] offset,
                              const real[:, :, ::1] mask, bint has_mask, int convention,
                              real[:, :, ::1] grad_offset, real[:, :, ::1] grad_mask, geom):
    """Offset and mask gradients, summed over the channels of each offset group.

    ``grad_offset[b, 2kk]   = m * sum_c grad_columns[b, c*K+k, p] * dS_c/dy``,
    ``grad_offset[b, 2kk+1] = m * sum_c grad_columns[b, c*K+k, p] * dS_c/dx``,
    ``grad_mask[b, kk]      =     sum_c grad_columns[b, c*K+k, p] * S_c``
    (``kk = d*K + k``, ``c`` over the channels of offset group ``d``): the rule
    of :mod:`refdcn.reference.loops` in this order of operations, so that
    infinite and NaN values give its NaN/inf pattern (README "Non-finite
    values"); the sums run in channel order, in double precision.  Shapes: grad_columns
    (B, C_in*K, P), input (B, C_in, H, W), offset / grad_offset (B, 2*D*K, P),
    mask / grad_mask (B, D*K, P); grad_mask is written only if ``has_mask``.
    Parallel over tiles (image, offset group, pixels), like :func:`im2col_into`.
    """
    cdef Geom geo = _geom(geom, input.shape[0])
    cdef Py_ssize_t T, ntiles
    T, ntiles = _tiling(geo.out_pixels)
    cdef Py_ssize_t it, b, d, t0, n, c, k, q, e, ii, kk, Wp = geo.Wp
    cdef Py_ssize_t KT = geo.taps * T
    cdef bint closed = convention == BORDER_TORCHVISION
    cdef const real* src
    cdef const real* grow
    cdef Point* pts
    cdef Point* pt
    cdef double* acc
    cdef double v00, v01, v10, v11, d_dy, d_dx, gv, m
    cdef real* padded = NULL
    cdef Point* tables = NULL
    cdef double* accs = NULL
    try:
        padded = <real*>_alloc(geo.batch * geo.in_channels * geo.plane * sizeof(real))
        tables = <Point*>_alloc(refdcn_max_threads() * KT * sizeof(Point))
        accs = <double*>_alloc(refdcn_max_threads() * 3 * KT * sizeof(double))
        with nogil:
            _pad(input, padded, &geo)
            for it in prange(geo.batch * geo.offset_groups * ntiles, schedule="dynamic"):
                b, d, t0, n = _tile(it, ntiles, T, &geo)
                pts = tables + threadid() * KT
                acc = accs + threadid() * 3 * KT
                _fill(pts, n, offset, mask, has_mask, b, d, t0, n, &geo, closed)
                memset(acc, 0, 3 * KT * sizeof(double))
                # the rule of refdcn.reference.loops: per channel dS/dy, dS/dx
                # (interpolate_gradient) and S (interpolate) of the four corner values,
                # times the column gradient, summed over the channels in channel order
                # (double precision); the mask multiplies the channel sum
                for c in range(d * geo.in_per_offset_group, (d + 1) * geo.in_per_offset_group):
                    src = padded + (b * geo.in_channels + c) * geo.plane
                    for k in range(geo.taps):
                        grow = &grad_columns[b, c * geo.taps + k, t0]
                        for q in range(n):
                            e = k * n + q
                            pt = pts + e
                            ii = pt.idx
                            v00 = src[ii]
                            v01 = src[ii + 1]
                            v10 = src[ii + Wp]
                            v11 = src[ii + Wp + 1]
                            gv = grow[q]
                            d_dy, d_dx = interpolate_gradient(v00, v01, v10, v11, pt.ly, pt.lx)
                            acc[e] += gv * d_dy
                            acc[KT + e] += gv * d_dx
                            if has_mask:
                                # interpolate, with the point's corner_weights computed once
                                acc[2 * KT + e] += gv * weighted_sum(
                                    v00, v01, v10, v11, pt.w00, pt.w01, pt.w10, pt.w11)
                for k in range(geo.taps):
                    kk = d * geo.taps + k
                    for q in range(n):
                        e = k * n + q
                        m = pts[e].m
                        grad_offset[b, 2 * kk, t0 + q] = <real>(m * acc[e])
                        grad_offset[b, 2 * kk + 1, t0 + q] = <real>(m * acc[KT + e])
                        if has_mask:
                            grad_mask[b, kk, t0 + q] = <real>acc[2 * KT + e]
    finally:
        free(padded)
        free(tables)
        free(accs)


# --------------------------------------------------------------------------- mirror checks

def _py_sampling_point(Py_ssize_t out_index, Py_ssize_t stride, Py_ssize_t padding,
                       Py_ssize_t tap, Py_ssize_t dilation, double delta):
    """bilinear.pxd's sampling_point, callable from Python (for the mirror test)."""
    return sampling_point(out_index, stride, padding, tap, dilation, delta)


def _py_scaled_sampling_point(Py_ssize_t out_index, Py_ssize_t stride, Py_ssize_t padding,
                              Py_ssize_t tap, Py_ssize_t dilation, double delta,
                              Py_ssize_t centre, double scale):
    """bilinear.pxd's scaled_sampling_point (DCNv3/DCNv4), callable from Python."""
    return scaled_sampling_point(out_index, stride, padding, tap, dilation, delta, centre, scale)


def _py_locate(double y, double x, Py_ssize_t height, Py_ssize_t width, bint closed_at_minus_one):
    """bilinear.pxd's locate."""
    return locate(y, x, height, width, closed_at_minus_one)


def _py_in_image(Py_ssize_t yy, Py_ssize_t xx, Py_ssize_t height, Py_ssize_t width):
    """bilinear.pxd's in_image."""
    return in_image(yy, xx, height, width)


def _py_pixel(const real[:, ::1] plane, Py_ssize_t yy, Py_ssize_t xx, Py_ssize_t height,
              Py_ssize_t width):
    """bilinear.pxd's pixel."""
    return pixel(plane, yy, xx, height, width)


def _py_corners(const real[:, ::1] plane, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t height,
                Py_ssize_t width):
    """bilinear.pxd's corners."""
    return corners(plane, y0, x0, height, width)


def _py_corner_weights(double ly, double lx):
    """bilinear.pxd's corner_weights."""
    return corner_weights(ly, lx)


def _py_interpolate(double v00, double v01, double v10, double v11, double ly, double lx):
    """bilinear.pxd's interpolate."""
    return interpolate(v00, v01, v10, v11, ly, lx)


def _py_interpolate_gradient(double v00, double v01, double v10, double v11, double ly,
                             double lx):
    """bilinear.pxd's interpolate_gradient."""
    return interpolate_gradient(v00, v01, v10, v11, ly, lx)


def _py_bilinear_sample(const real[:, ::1] plane, Py_ssize_t height, Py_ssize_t width,
                        double y, double x):
    """bilinear.pxd's bilinear_sample."""
    return bilinear_sample(plane, height, width, y, x)


def _py_bilinear_gradient(const real[:, ::1] plane, Py_ssize_t height, Py_ssize_t width,
                          double y, double x, int convention):
    """bilinear.pxd's bilinear_gradient."""
    return bilinear_gradient(plane, height, width, y, x, convention)


def _py_scatter_corners(Py_ssize_t y0, Py_ssize_t x0, double ly, double lx):
    """bilinear.pxd's scatter_corners."""
    return scatter_corners(y0, x0, ly, lx)


def _py_scatter_add(double[:, ::1] grad_plane, Py_ssize_t height, Py_ssize_t width, double y,
                    double x, double value):
    """bilinear.pxd's scatter_add (adds into ``grad_plane``, float64)."""
    scatter_add(grad_plane, height, width, y, x, value)


def _py_weighted_sum(double v00, double v01, double v10, double v11, double w00, double w01,
                     double w10, double w11):
    """bilinear.pxd's weighted_sum."""
    return weighted_sum(v00, v01, v10, v11, w00, w01, w10, w11)


def _py_weighted_targets(Py_ssize_t y0, Py_ssize_t x0, double w00, double w01, double w10,
                         double w11):
    """bilinear.pxd's weighted_targets."""
    return weighted_targets(y0, x0, w00, w01, w10, w11)
