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
For every image, offset group and *tile* of output pixels, a table is filled
once per (tap, pixel): the sampling point (:func:`sampling_point`), its
floor corner and fractions (:func:`locate`), the corner weights
(:func:`corner_weights`) and the mask.  The table is then reused by every
channel of the offset group.  All scalar math comes from ``bilinear.pxd``,
the mirror of :mod:`refdcn.bilinear`.

Corner reads go to a *padded* copy of each image plane: two zero rows/columns
before and one after, shape (H+3, W+3).  Every corner :func:`locate` can
return -- ``OUTSIDE = -2`` for inactive and NaN points, ``-1 .. H-1`` for
active ones -- then has its 2x2 block inside the padded plane, so the inner
loops read four values without any test, and a corner outside the image reads
exactly 0, which is what :func:`corners` returns for it.  Huge, infinite and
NaN offsets are never turned into an index other than ``OUTSIDE``.

Parallel structure (OpenMP ``prange`` when compiled with it, serial loops
otherwise, from the same source)
* im2col: over rows (channel, tap) of the column matrix;
* col2im: over input channels -- each thread scatters into its own planes, so
  the scatter is race-free, and each plane receives its contributions in a
  fixed order (tile, tap, pixel) whatever the number of threads;
* coordinate gradients: over (tap, chunk of pixels); each output element sums
  its channels in channel order.
Every image is computed independently of the others, so results are bitwise
identical for every block size and every number of threads.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from refdcn._cy.bilinear cimport (BORDER_TORCHVISION, OUTSIDE, bilinear_gradient,
                                  bilinear_sample, corner_weights, corners, in_image,
                                  interpolate, interpolate_gradient, locate, pixel, real,
                                  sampling_point)

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

#: Zero rows/columns of the padded planes before (= -OUTSIDE) and after the image.
DEF PAD_BEFORE = 2
DEF PAD_AFTER = 1

#: Output pixels per table tile (the table of one tile stays in the L2 cache).
cdef Py_ssize_t TILE = 1024
#: Pixels per work item of the coordinate gradients.
DEF CHUNK = 128


def max_threads():
    """Threads a parallel loop uses (1 for a serial build)."""
    return refdcn_max_threads()


cdef struct Geom:
    Py_ssize_t C, H, W, D, K, kw, sh, sw, ph, pw, dh, dw, out_w, P, cpg, Hp, Wp, plane


cdef Geom _geom(g) except *:
    """The sizes of a :class:`refdcn.geometry.Geometry` as a C struct."""
    cdef Geom s
    s.C = g.in_channels
    s.H = g.height
    s.W = g.width
    s.D = g.offset_groups
    s.K = g.kh * g.kw
    s.kw = g.kw
    s.sh, s.sw = g.stride
    s.ph, s.pw = g.padding
    s.dh, s.dw = g.dilation
    s.out_w = g.out_w
    s.P = g.out_h * g.out_w
    s.cpg = g.in_channels // g.offset_groups
    s.Hp = g.height + PAD_BEFORE + PAD_AFTER
    s.Wp = g.width + PAD_BEFORE + PAD_AFTER
    s.plane = s.Hp * s.Wp
    return s


# --------------------------------------------------------------------------- tables

cdef void _fill_table(const real[:, :, ::1] offset, const real[:, :, ::1] mask, bint has_mask,
                      Py_ssize_t b, Py_ssize_t d, Py_ssize_t t0, Py_ssize_t n, Geom* g,
                      bint closed, Py_ssize_t* idx, double* frac, double* wt,
                      double* mk) noexcept nogil:
    """Sampling location of every (tap k, pixel t0 + q) of a tile, entry ``e = k*n + q``.

    ``idx[e]``: flat index of the floor corner in a padded plane; ``frac[2e],
    frac[2e+1]``: ``ly, lx`` (if frac is not NULL); ``wt[4e..4e+3]``: the four
    corner weights (if wt is not NULL); ``mk[e]``: the mask (1 without one).
    """
    cdef Py_ssize_t e, k, q, p, i, j, oy, ox, kk, y0, x0
    cdef double y, x, ly, lx, w00, w01, w10, w11
    cdef bint active
    for e in prange(g.K * n, schedule="static"):
        k = e // n
        q = e - k * n
        p = t0 + q
        i = k // g.kw
        j = k - i * g.kw
        oy = p // g.out_w
        ox = p - oy * g.out_w
        kk = d * g.K + k
        y = sampling_point(oy, g.sh, g.ph, i, g.dh, offset[b, 2 * kk, p])
        x = sampling_point(ox, g.sw, g.pw, j, g.dw, offset[b, 2 * kk + 1, p])
        active, y0, x0, ly, lx = locate(y, x, g.H, g.W, closed)
        # inactive and NaN points have y0 = x0 = OUTSIDE: the all-zero corner block
        idx[e] = (y0 + PAD_BEFORE) * g.Wp + (x0 + PAD_BEFORE)
        if frac != NULL:
            frac[2 * e] = ly
            frac[2 * e + 1] = lx
        if wt != NULL:
            w00, w01, w10, w11 = corner_weights(ly, lx)
            wt[4 * e] = w00
            wt[4 * e + 1] = w01
            wt[4 * e + 2] = w10
            wt[4 * e + 3] = w11
        mk[e] = mask[b, kk, p] if has_mask else 1.0


cdef void _pad_image(const real[:, :, :, ::1] input, Py_ssize_t b, real* padded,
                     Geom* g) noexcept nogil:
    """Copy image ``b`` into the interiors of the padded planes (borders stay 0)."""
    cdef Py_ssize_t c, yy
    for c in prange(g.C, schedule="static"):
        for yy in range(g.H):
            memcpy(padded + c * g.plane + (yy + PAD_BEFORE) * g.Wp + PAD_BEFORE,
                   &input[b, c, yy, 0], g.W * sizeof(real))


cdef real* _alloc_padded(Geom* g, real dummy) except NULL:
    cdef size_t nbytes = g.C * g.plane * sizeof(real)
    cdef real* p = <real*>malloc(nbytes if nbytes else 1)
    if p == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes of padded image planes")
    memset(p, 0, nbytes)
    return p


cdef void* _alloc(size_t nbytes) except NULL:
    cdef void* p = malloc(nbytes if nbytes else 1)
    if p == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes of sampling tables")
    return p


# --------------------------------------------------------------------------- im2col

def im2col_into(const real[:, :, :, ::1] input, const real[:, :, ::1] offset,
                const real[:, :, ::1] mask, bint has_mask, real[:, :, ::1] columns, geom):
    """Deformable im2col: ``columns[b, c*K + k, p] = m * S(input[b, c], y, x)``.

    Shapes: input (B, C_in, H, W), offset (B, 2*D*K, P), mask (B, D*K, P),
    columns (B, C_in*K, P) (written).
    """
    cdef Geom g = _geom(geom)
    cdef Py_ssize_t B = input.shape[0]
    cdef Py_ssize_t T = min(TILE, g.P)
    cdef Py_ssize_t b, d, t0, n, r, c, k, q, e, ii, Wp = g.Wp
    cdef const real* src
    cdef real* dst
    cdef double v
    cdef real* padded = _alloc_padded(&g, 0)
    cdef Py_ssize_t* idx = NULL
    cdef double* wt = NULL
    cdef double* mk = NULL
    try:
        idx = <Py_ssize_t*>_alloc(g.K * T * sizeof(Py_ssize_t))
        wt = <double*>_alloc(4 * g.K * T * sizeof(double))
        mk = <double*>_alloc(g.K * T * sizeof(double))
        with nogil:
            for b in range(B):
                _pad_image(input, b, padded, &g)
                for d in range(g.D):
                    for t0 in range(0, g.P, T):
                        n = min(T, g.P - t0)
                        _fill_table(offset, mask, has_mask, b, d, t0, n, &g, False,
                                    idx, NULL, wt, mk)
                        # one row (channel c, tap k) of the columns per iteration
                        for r in prange(g.cpg * g.K, schedule="static"):
                            c = d * g.cpg + r // g.K
                            k = r - (r // g.K) * g.K
                            src = padded + c * g.plane
                            dst = &columns[b, c * g.K + k, t0]
                            for q in range(n):
                                e = k * n + q
                                ii = idx[e]
                                # the last line of bilinear.interpolate, with the weights
                                # of corner_weights computed once per sampling point
                                v = (wt[4 * e] * src[ii] + wt[4 * e + 1] * src[ii + 1]
                                     + wt[4 * e + 2] * src[ii + Wp]
                                     + wt[4 * e + 3] * src[ii + Wp + 1])
                                dst[q] = <real>(mk[e] * v)
    finally:
        free(padded)
        free(idx)
        free(wt)
        free(mk)


# --------------------------------------------------------------------------- col2im

def col2im_into(const real[:, :, ::1] grad_columns, const real[:, :, ::1] offset,
                const real[:, :, ::1] mask, bint has_mask, real[:, :, :, ::1] grad_input, geom):
    """Adjoint of :func:`im2col_into`: ``grad_input[b, c, corner] += m * w_ab * grad_columns``.

    Shapes: grad_columns (B, C_in*K, P), offset (B, 2*D*K, P), mask (B, D*K, P),
    grad_input (B, C_in, H, W) (overwritten).  Parallel over input channels:
    each plane is written by one thread, in the fixed order (tile, tap, pixel).
    """
    cdef Geom g = _geom(geom)
    cdef Py_ssize_t B = grad_columns.shape[0]
    cdef Py_ssize_t T = min(TILE, g.P)
    cdef Py_ssize_t b, d, t0, n, c, k, q, e, ii, yy, Wp = g.Wp
    cdef const real* gsrc
    cdef real* acc
    cdef double gv
    cdef real* padded = _alloc_padded(&g, 0)
    cdef Py_ssize_t* idx = NULL
    cdef double* wt = NULL
    cdef double* mk = NULL
    try:
        idx = <Py_ssize_t*>_alloc(g.K * T * sizeof(Py_ssize_t))
        wt = <double*>_alloc(4 * g.K * T * sizeof(double))
        mk = <double*>_alloc(g.K * T * sizeof(double))
        with nogil:
            for b in range(B):
                for c in prange(g.C, schedule="static"):
                    memset(padded + c * g.plane, 0, g.plane * sizeof(real))
                for d in range(g.D):
                    for t0 in range(0, g.P, T):
                        n = min(T, g.P - t0)
                        _fill_table(offset, mask, has_mask, b, d, t0, n, &g, False,
                                    idx, NULL, wt, mk)
                        # fold the mask into the weights: m * w_ab, once per point
                        for e in prange(g.K * n, schedule="static"):
                            wt[4 * e] = mk[e] * wt[4 * e]
                            wt[4 * e + 1] = mk[e] * wt[4 * e + 1]
                            wt[4 * e + 2] = mk[e] * wt[4 * e + 2]
                            wt[4 * e + 3] = mk[e] * wt[4 * e + 3]
                        for c in prange(d * g.cpg, (d + 1) * g.cpg, schedule="static"):
                            acc = padded + c * g.plane
                            for k in range(g.K):
                                gsrc = &grad_columns[b, c * g.K + k, t0]
                                for q in range(n):
                                    e = k * n + q
                                    ii = idx[e]
                                    gv = gsrc[q]
                                    acc[ii] += <real>(wt[4 * e] * gv)
                                    acc[ii + 1] += <real>(wt[4 * e + 1] * gv)
                                    acc[ii + Wp] += <real>(wt[4 * e + 2] * gv)
                                    acc[ii + Wp + 1] += <real>(wt[4 * e + 3] * gv)
                # the interiors are the gradient; the border collected what fell outside
                for c in prange(g.C, schedule="static"):
                    for yy in range(g.H):
                        memcpy(&grad_input[b, c, yy, 0],
                               padded + c * g.plane + (yy + PAD_BEFORE) * Wp + PAD_BEFORE,
                               g.W * sizeof(real))
    finally:
        free(padded)
        free(idx)
        free(wt)
        free(mk)


# --------------------------------------------------------------------------- coordinate gradients

def coordinate_gradients_into(const real[:, :, ::1] grad_columns,
                              const real[:, :, :, ::1] input, const real[:, :, ::1] offset,
                              const real[:, :, ::1] mask, bint has_mask, int convention,
                              real[:, :, ::1] grad_offset, real[:, :, ::1] grad_mask, geom):
    """Offset and mask gradients, summed over the channels of each offset group.

    ``grad_offset[b, 2kk]   = m * sum_c grad_columns[b, c*K+k, p] * dS_c/dy``,
    ``grad_offset[b, 2kk+1] = m * sum_c grad_columns[b, c*K+k, p] * dS_c/dx``,
    ``grad_mask[b, kk]      =     sum_c grad_columns[b, c*K+k, p] * S_c``
    (``kk = d*K + k``; the sums run over the channels ``c`` of offset group
    ``d`` in increasing order, in double precision).  Shapes: grad_columns
    (B, C_in*K, P), input (B, C_in, H, W), offset / grad_offset (B, 2*D*K, P),
    mask / grad_mask (B, D*K, P); grad_mask is written only if ``has_mask``.
    """
    cdef Geom g = _geom(geom)
    cdef Py_ssize_t B = input.shape[0]
    cdef Py_ssize_t T = min(TILE, g.P)
    cdef Py_ssize_t nchunks, it, s0, s1, s, b, d, t0, n, c, k, q, e, ii, kk, Wp = g.Wp
    cdef bint closed = convention == BORDER_TORCHVISION
    cdef const real* src
    cdef const real* grow
    cdef double* acc
    cdef double v00, v01, v10, v11, d_dy, d_dx, gv
    cdef real* padded = _alloc_padded(&g, 0)
    cdef Py_ssize_t* idx = NULL
    cdef double* frac = NULL
    cdef double* wt = NULL
    cdef double* mk = NULL
    try:
        idx = <Py_ssize_t*>_alloc(g.K * T * sizeof(Py_ssize_t))
        frac = <double*>_alloc(2 * g.K * T * sizeof(double))
        wt = <double*>_alloc(4 * g.K * T * sizeof(double))
        mk = <double*>_alloc(g.K * T * sizeof(double))
        with nogil:
            for b in range(B):
                _pad_image(input, b, padded, &g)
                for d in range(g.D):
                    for t0 in range(0, g.P, T):
                        n = min(T, g.P - t0)
                        _fill_table(offset, mask, has_mask, b, d, t0, n, &g, closed,
                                    idx, frac, wt, mk)
                        nchunks = (n + CHUNK - 1) // CHUNK
                        with parallel():
                            acc = <double*>malloc(3 * CHUNK * sizeof(double))
                            if acc != NULL:
                                for it in prange(g.K * nchunks, schedule="static"):
                                    k = it // nchunks
                                    s0 = (it - k * nchunks) * CHUNK
                                    s1 = min(n, s0 + CHUNK)
                                    memset(acc, 0, 3 * CHUNK * sizeof(double))
                                    for c in range(d * g.cpg, (d + 1) * g.cpg):
                                        src = padded + c * g.plane
                                        grow = &grad_columns[b, c * g.K + k, t0]
                                        for q in range(s0, s1):
                                            e = k * n + q
                                            ii = idx[e]
                                            v00 = src[ii]
                                            v01 = src[ii + 1]
                                            v10 = src[ii + Wp]
                                            v11 = src[ii + Wp + 1]
                                            d_dy, d_dx = interpolate_gradient(
                                                v00, v01, v10, v11, frac[2 * e], frac[2 * e + 1])
                                            gv = grow[q]
                                            s = q - s0
                                            acc[s] += gv * d_dy
                                            acc[CHUNK + s] += gv * d_dx
                                            if has_mask:
                                                # bilinear.interpolate with precomputed weights
                                                acc[2 * CHUNK + s] += gv * (
                                                    wt[4 * e] * v00 + wt[4 * e + 1] * v01
                                                    + wt[4 * e + 2] * v10 + wt[4 * e + 3] * v11)
                                    kk = d * g.K + k
                                    for q in range(s0, s1):
                                        e = k * n + q
                                        s = q - s0
                                        grad_offset[b, 2 * kk, t0 + q] = <real>(mk[e] * acc[s])
                                        grad_offset[b, 2 * kk + 1, t0 + q] = <real>(
                                            mk[e] * acc[CHUNK + s])
                                        if has_mask:
                                            grad_mask[b, kk, t0 + q] = <real>acc[2 * CHUNK + s]
                            free(acc)
    finally:
        free(padded)
        free(idx)
        free(frac)
        free(wt)
        free(mk)


# --------------------------------------------------------------------------- mirror checks

def _py_sampling_point(Py_ssize_t out_index, Py_ssize_t stride, Py_ssize_t padding,
                       Py_ssize_t tap, Py_ssize_t dilation, double delta):
    """bilinear.pxd's sampling_point, callable from Python (for the mirror test)."""
    return sampling_point(out_index, stride, padding, tap, dilation, delta)


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
