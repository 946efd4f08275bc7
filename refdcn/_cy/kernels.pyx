# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The column kernels of the ``"cython"`` backend: channels last, over task ranges, no OpenMP.

The same kernels as :mod:`refdcn.backends.numba_cpu` (read its docstring: the
padded channels-last planes, the ``"channels_last"`` column layout of
:mod:`refdcn.driver`, the zero border, the tasks), compiled by Cython from
the same operations in the same order, so that the results are bitwise those
of the ``"numba"`` backend (``tests/test_cython.py``)::

    channels_last(input, padded, first, last)
    im2col(padded, offset, mask, has_mask, geo, columns, pixel0, chunk, first, last)
    col2im(grad_columns, offset, mask, has_mask, geo, grad_input, block, scratch, first, last)
    coordinate_gradients(grad_columns, padded, offset, mask, has_mask, geo, closed,
                         grad_offset, grad_mask, has_grad_mask, chunk, first, last)

Shapes (``B`` images of the block, ``K`` taps, ``P`` output pixels, ``D``
offset groups, ``G`` groups, ``Cg = C_in/G``): input / grad_input (B, C_in,
H, W); padded (B, (H+3)*(W+3), C_stride), pixel ``(y, x)`` in row
``(y+2)*(W+3) + x+2``; offset / grad_offset (B, 2*D*K, P); mask / grad_mask
(B, D*K, P); columns / grad_columns (B, G, P, K*Cg), ``[b, g, p, k*Cg + cl]``
for channel ``g*Cg + cl``; scratch (tasks, (H+3)*(W+3), stride >= block)
float64.  All C-contiguous in the compute dtype (the fused type ``real``),
outputs overwritten; ``mask`` / ``grad_mask`` are not touched when
``has_mask`` / ``has_grad_mask`` is false (pass any array of the dtype);
``geo`` is a :class:`refdcn.geometry.KernelGeometry`.

Each kernel is a ``def`` function over the tasks ``[first, last)`` whose body
runs ``with nogil``: :mod:`refdcn.backends.cython_cpu` hands the ranges to
refdcn's own threads (:func:`refdcn.backends._tasks.run`, the dispatch of the
numba backend too).  Tasks: (image, ``chunk`` output pixels) for im2col and
the coordinate gradients, (image, ``block`` channels) for col2im, (image,
padded row) for ``channels_last``.  Every task writes only its own outputs
and its own scratch (col2im's ``scratch[t]``; the coordinate gradients'
terms, allocated per call), so the results are the same for every range,
thread and thread count.

The scalar math is ``bilinear.pxd``, the mirror of :mod:`refdcn.bilinear`:
:func:`sampling_point` and :func:`locate` once per sample (image, offset
group, tap, pixel), :func:`corner_weights` once per sample too, then a
contiguous loop over the channels: im2col calls :func:`weighted_sum` (the
last step of :func:`interpolate`), col2im adds to the four ``(row, col,
weight)`` targets of :func:`weighted_targets` (the last step of
:func:`scatter_corners`), the coordinate gradients call
:func:`interpolate_gradient` and :func:`interpolate`.  Precision: sampling
coordinates, bilinear products and channel sums in double (the coordinate
gradients' channel sums in the fixed order of :func:`_fixed_order_sum`),
rounded once to the compute dtype.  Non-finite values follow the IEEE rule of
the loop reference: a corner outside the image reads the zero border (never
``0 * inf``), a NaN point reads nothing and gives NaN.
"""

from libc.stdlib cimport free, malloc
from libc.string cimport memset

from refdcn._cy.bilinear cimport (BORDER_TORCHVISION, OUTSIDE, Target, bilinear_gradient,
                                  bilinear_sample, corner_weights, corners, in_image,
                                  interpolate, interpolate_gradient, locate, pixel, real,
                                  sampling_point, scaled_sampling_point, scatter_add,
                                  scatter_corners, weighted_sum, weighted_targets)

cdef enum:
    # zero rows/columns of the padded planes before (= -OUTSIDE) and after the image
    # (refdcn.backends._tasks.PAD_BEFORE, PAD_AFTER)
    PAD_BEFORE = 2
    PAD_AFTER = 1


cdef struct Geom:
    # the fields of refdcn.geometry.KernelGeometry that the kernels read (same names), and
    # Wp = width + 3, the row length of the padded planes
    Py_ssize_t in_channels, height, width, offset_groups, taps, kw
    Py_ssize_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    Py_ssize_t out_w, in_per_group, in_per_offset_group, Wp


cdef Geom _geom(geo) except *:
    """The fields of a :class:`refdcn.geometry.KernelGeometry` as a C struct."""
    cdef Geom g
    g.in_channels = geo.in_channels
    g.height = geo.height
    g.width = geo.width
    g.offset_groups = geo.offset_groups
    g.taps = geo.taps
    g.kw = geo.kw
    g.stride_h = geo.stride_h
    g.stride_w = geo.stride_w
    g.pad_h = geo.pad_h
    g.pad_w = geo.pad_w
    g.dilation_h = geo.dilation_h
    g.dilation_w = geo.dilation_w
    g.out_w = geo.out_w
    g.in_per_group = geo.in_per_group
    g.in_per_offset_group = geo.in_per_offset_group
    g.Wp = geo.width + PAD_BEFORE + PAD_AFTER
    return g


# --------------------------------------------------------------------------- shared steps

cdef inline (Py_ssize_t, double, double) _sample(const real[:, :, ::1] offset, Py_ssize_t b,
                                                 Py_ssize_t kk, Py_ssize_t p, Py_ssize_t k,
                                                 Geom* geo, bint closed) noexcept nogil:
    """Locate the sample of tap ``k`` (offset channels ``2*kk``, ``2*kk+1``) of pixel ``p``.

    Returns ``(q, ly, lx)``: the row of the floor corner in the padded
    channels-last image (inactive and NaN points: the all-zero rows of
    ``OUTSIDE``), and the fractional parts.
    """
    cdef Py_ssize_t oy = p // geo.out_w
    cdef Py_ssize_t ox = p - oy * geo.out_w
    cdef Py_ssize_t i = k // geo.kw
    cdef Py_ssize_t j = k - i * geo.kw
    cdef Py_ssize_t y0, x0
    cdef double y, x, ly, lx
    cdef bint active
    y = sampling_point(oy, geo.stride_h, geo.pad_h, i, geo.dilation_h, offset[b, 2 * kk, p])
    x = sampling_point(ox, geo.stride_w, geo.pad_w, j, geo.dilation_w, offset[b, 2 * kk + 1, p])
    active, y0, x0, ly, lx = locate(y, x, geo.height, geo.width, closed)
    return (y0 + PAD_BEFORE) * geo.Wp + (x0 + PAD_BEFORE), ly, lx


cdef inline (Py_ssize_t, Py_ssize_t, Py_ssize_t) _segment(Py_ssize_t c, Py_ssize_t end,
                                                          Py_ssize_t k,
                                                          Py_ssize_t in_per_group) noexcept nogil:
    """The run of channels ``[c, stop)`` of one convolution group, and its column.

    Returns ``(g, stop, col)``: group ``g`` of channel ``c``, the end of the run
    (at most ``end``), and the column of ``(tap k, channel c)`` in group ``g``'s
    block of the column matrix.
    """
    cdef Py_ssize_t g = c // in_per_group
    return g, min(end, (g + 1) * in_per_group), k * in_per_group + c - g * in_per_group


cdef inline double _fixed_order_sum(const double* terms, Py_ssize_t n) noexcept nogil:
    """Sum of ``terms[0 .. n-1]`` in a fixed order: eight interleaved partial sums.

    ``s_r = terms[r] + terms[r + 8] + ...`` for ``r < 8`` over the whole
    blocks of eight, combined as ``((s0+s1)+(s2+s3)) + ((s4+s5)+(s6+s7))``,
    then the tail in order (the order of the numba backend's ``_fixed_order_sum``).
    """
    cdef Py_ssize_t whole = n - n % 8, u
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, s5 = 0.0, s6 = 0.0
    cdef double s7 = 0.0, total
    for u in range(0, whole, 8):
        s0 += terms[u]
        s1 += terms[u + 1]
        s2 += terms[u + 2]
        s3 += terms[u + 3]
        s4 += terms[u + 4]
        s5 += terms[u + 5]
        s6 += terms[u + 6]
        s7 += terms[u + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for u in range(whole, n):
        total += terms[u]
    return total


# --------------------------------------------------------------------------- kernels

def channels_last(const real[:, :, :, ::1] input, real[:, :, ::1] padded, Py_ssize_t first,
                  Py_ssize_t last):
    """``padded[b, (y+2)*(W+3) + x+2, c] = input[b, c, y, x]``, zero border.

    Tasks: (image ``b``, padded row ``yy``), ``t = b*(H+3) + yy``; channels
    ``C .. C_stride`` are left unset.
    """
    cdef Py_ssize_t C = input.shape[1], H = input.shape[2], W = input.shape[3]
    cdef Py_ssize_t Wp = W + PAD_BEFORE + PAD_AFTER, S = padded.shape[2]
    cdef Py_ssize_t Hp = padded.shape[1] // Wp
    cdef Py_ssize_t t, b, yy, y, x, c
    cdef real* row
    cdef const real* src
    with nogil:
        for t in range(first, last):
            b = t // Hp
            yy = t - b * Hp
            row = &padded[b, yy * Wp, 0]
            y = yy - PAD_BEFORE
            if y < 0 or y >= H:
                for x in range(Wp):
                    for c in range(C):
                        row[x * S + c] = 0
                continue
            for x in range(PAD_BEFORE):
                for c in range(C):
                    row[x * S + c] = 0
            for x in range(W + PAD_BEFORE, Wp):
                for c in range(C):
                    row[x * S + c] = 0
            for c in range(C):
                src = &input[b, c, y, 0]
                for x in range(W):
                    row[(x + PAD_BEFORE) * S + c] = src[x]


def im2col(const real[:, :, ::1] padded, const real[:, :, ::1] offset,
           const real[:, :, ::1] mask, bint has_mask, geo, real[:, :, :, ::1] columns,
           Py_ssize_t pixel0, Py_ssize_t chunk, Py_ssize_t first, Py_ssize_t last):
    """``columns[b, g, p - pixel0, k*Cg + cl] = m * interpolate(corners of channel g*Cg + cl)``.

    ``columns`` (B, G, n, K*Cg) holds the output pixels ``pixel0 .. pixel0+n-1``
    (all of them: ``pixel0 = 0``, ``n = P``).  Tasks: (image ``b``, output
    pixels ``pixel0 + [i*chunk, (i+1)*chunk)``), ``t = b*chunks + i``.  Per
    sample: located once, its corner weights once, then :func:`weighted_sum`
    over the contiguous channels of its offset group (split by convolution
    group), in double, times the mask, rounded once.
    """
    cdef Geom g_ = _geom(geo)
    cdef Geom* gm = &g_
    cdef Py_ssize_t P = columns.shape[2], S = padded.shape[2], Wp = g_.Wp
    cdef Py_ssize_t K = g_.taps, D = g_.offset_groups
    cdef Py_ssize_t ipg = g_.in_per_group, ipog = g_.in_per_offset_group
    cdef Py_ssize_t chunks = (P + chunk - 1) // chunk
    cdef Py_ssize_t t, b, p0, p, d, k, kk, q, c, end, g, stop, col, u, n
    cdef double ly, lx, w00, w01, w10, w11, m
    cdef const real* r00
    cdef const real* r01
    cdef const real* r10
    cdef const real* r11
    cdef real* dst
    with nogil:
        for t in range(first, last):
            b = t // chunks
            p0 = pixel0 + (t - b * chunks) * chunk
            for p in range(p0, min(pixel0 + P, p0 + chunk)):
                for d in range(D):
                    for k in range(K):
                        kk = d * K + k
                        q, ly, lx = _sample(offset, b, kk, p, k, gm, False)
                        w00, w01, w10, w11 = corner_weights(ly, lx)
                        c = d * ipog
                        end = c + ipog
                        while c < end:       # the channels of offset group d, split by group
                            g, stop, col = _segment(c, end, k, ipg)
                            n = stop - c
                            r00 = &padded[b, q, c]
                            r01 = r00 + S
                            r10 = r00 + Wp * S
                            r11 = r10 + S
                            dst = &columns[b, g, p - pixel0, col]
                            if has_mask:
                                m = mask[b, kk, p]
                                for u in range(n):
                                    dst[u] = <real>(m * weighted_sum(r00[u], r01[u], r10[u],
                                                                     r11[u], w00, w01, w10, w11))
                            else:
                                for u in range(n):
                                    dst[u] = <real>weighted_sum(r00[u], r01[u], r10[u], r11[u],
                                                                w00, w01, w10, w11)
                            c = stop


def col2im(const real[:, :, :, ::1] grad_columns, const real[:, :, ::1] offset,
           const real[:, :, ::1] mask, bint has_mask, geo, real[:, :, :, ::1] grad_input,
           Py_ssize_t block, double[:, :, ::1] scratch, Py_ssize_t first, Py_ssize_t last):
    """Scatter ``m * grad_columns`` times the corner weights; writes ``grad_input``.

    Tasks: (image ``b``, input channels ``[i*block, (i+1)*block)``),
    ``t = b*blocks + i``.  Task ``t`` accumulates into its own float64
    padded plane ``scratch[t]`` (channel ``c`` in column ``c - c0``), in the
    fixed order (pixel, offset group, tap), to the four targets of
    :func:`weighted_targets`, then writes the interior of its channels (the
    border collected what fell outside the image, and NaN points, and is
    dropped).  No two tasks share an output: race-free and deterministic.
    """
    cdef Geom g_ = _geom(geo)
    cdef Geom* gm = &g_
    cdef Py_ssize_t C = g_.in_channels, height = g_.height, width = g_.width, Wp = g_.Wp
    cdef Py_ssize_t P = grad_columns.shape[2], S = scratch.shape[2], rows = scratch.shape[1]
    cdef Py_ssize_t K = g_.taps, D = g_.offset_groups
    cdef Py_ssize_t ipg = g_.in_per_group, ipog = g_.in_per_offset_group
    cdef Py_ssize_t blocks = (C + block - 1) // block
    cdef Py_ssize_t t, b, c0, c1, p, d, k, kk, q, c, end, g, stop, col, u, n, y, x
    cdef double ly, lx, w00, w01, w10, w11, v, m
    cdef Target t00, t01, t10, t11
    cdef double* acc
    cdef double* a00
    cdef double* a01
    cdef double* a10
    cdef double* a11
    cdef const double* arow
    cdef const real* src
    cdef real* dst
    with nogil:
        for t in range(first, last):
            b = t // blocks
            c0 = (t - b * blocks) * block
            c1 = min(C, c0 + block)
            acc = &scratch[t, 0, 0]
            memset(acc, 0, rows * S * sizeof(double))
            for p in range(P):
                for d in range(c0 // ipog, (c1 - 1) // ipog + 1):
                    for k in range(K):
                        kk = d * K + k
                        q, ly, lx = _sample(offset, b, kk, p, k, gm, False)
                        w00, w01, w10, w11 = corner_weights(ly, lx)
                        # the four targets relative to the floor corner (row q)
                        t00, t01, t10, t11 = weighted_targets(0, 0, w00, w01, w10, w11)
                        c = max(c0, d * ipog)
                        end = min(c1, (d + 1) * ipog)
                        while c < end:
                            g, stop, col = _segment(c, end, k, ipg)
                            n = stop - c
                            src = &grad_columns[b, g, p, col]
                            a00 = acc + (q + t00[0] * Wp + t00[1]) * S + c - c0
                            a01 = acc + (q + t01[0] * Wp + t01[1]) * S + c - c0
                            a10 = acc + (q + t10[0] * Wp + t10[1]) * S + c - c0
                            a11 = acc + (q + t11[0] * Wp + t11[1]) * S + c - c0
                            if has_mask:
                                m = mask[b, kk, p]
                                for u in range(n):
                                    v = src[u] * m
                                    a00[u] += t00[2] * v
                                    a01[u] += t01[2] * v
                                    a10[u] += t10[2] * v
                                    a11[u] += t11[2] * v
                            else:
                                for u in range(n):
                                    v = <double>src[u]
                                    a00[u] += t00[2] * v
                                    a01[u] += t01[2] * v
                                    a10[u] += t10[2] * v
                                    a11[u] += t11[2] * v
                            c = stop
            for c in range(c0, c1):         # the interior, back to channels first
                for y in range(height):
                    dst = &grad_input[b, c, y, 0]
                    arow = acc + ((y + PAD_BEFORE) * Wp + PAD_BEFORE) * S + c - c0
                    for x in range(width):
                        dst[x] = <real>arow[x * S]


def coordinate_gradients(const real[:, :, :, ::1] grad_columns, const real[:, :, ::1] padded,
                         const real[:, :, ::1] offset, const real[:, :, ::1] mask,
                         bint has_mask, geo, bint closed, real[:, :, ::1] grad_offset,
                         real[:, :, ::1] grad_mask, bint has_grad_mask, Py_ssize_t chunk,
                         Py_ssize_t first, Py_ssize_t last):
    """Channel sums of ``grad_columns * dS/dy``, ``* dS/dx`` and ``* S`` of every sample.

    ``grad_offset[b, 2kk] = m * sum_c grad_columns * dS_c/dy`` (``2kk+1``:
    ``dS_c/dx``), ``grad_mask[b, kk] = sum_c grad_columns * S_c`` over the
    channels ``c`` of offset group ``d`` (``kk = d*K + k``), ``closed`` the
    ``locate`` rule.  The rule of :mod:`refdcn.reference.loops` in this order
    of operations (per channel :func:`interpolate_gradient` and
    :func:`interpolate`, the mask on the channel sum), so that non-finite
    values give its NaN/inf pattern; the products in double, summed in the
    fixed order of :func:`_fixed_order_sum`.  Tasks as :func:`im2col`; each
    call allocates its own terms.
    """
    cdef Geom g_ = _geom(geo)
    cdef Geom* gm = &g_
    cdef Py_ssize_t P = grad_columns.shape[2], S = padded.shape[2], Wp = g_.Wp
    cdef Py_ssize_t K = g_.taps, D = g_.offset_groups
    cdef Py_ssize_t ipg = g_.in_per_group, ipog = g_.in_per_offset_group
    cdef Py_ssize_t chunks = (P + chunk - 1) // chunk
    cdef Py_ssize_t t, b, p0, p, d, k, kk, q, c, end, g, stop, col, u, n, e
    cdef double ly, lx, gu, d_dy, d_dx, sum_y, sum_x, m
    cdef const real* r00
    cdef const real* r01
    cdef const real* r10
    cdef const real* r11
    cdef const real* src
    cdef double* ty
    cdef double* tx
    cdef double* tm
    cdef double* terms = <double*>malloc(max(1, 3 * ipog) * sizeof(double))
    if terms == NULL:
        raise MemoryError()
    try:
        with nogil:
            for t in range(first, last):
                b = t // chunks
                p0 = (t - b * chunks) * chunk
                for p in range(p0, min(P, p0 + chunk)):
                    for d in range(D):
                        for k in range(K):
                            kk = d * K + k
                            q, ly, lx = _sample(offset, b, kk, p, k, gm, closed)
                            c = d * ipog
                            end = c + ipog
                            while c < end:
                                g, stop, col = _segment(c, end, k, ipg)
                                n = stop - c
                                src = &grad_columns[b, g, p, col]
                                r00 = &padded[b, q, c]
                                r01 = r00 + S
                                r10 = r00 + Wp * S
                                r11 = r10 + S
                                e = c - d * ipog
                                ty = terms + e
                                tx = terms + ipog + e
                                tm = terms + 2 * ipog + e
                                for u in range(n):
                                    gu = <double>src[u]
                                    d_dy, d_dx = interpolate_gradient(r00[u], r01[u], r10[u],
                                                                      r11[u], ly, lx)
                                    ty[u] = gu * d_dy
                                    tx[u] = gu * d_dx
                                if has_grad_mask:
                                    for u in range(n):
                                        tm[u] = <double>src[u] * interpolate(
                                            r00[u], r01[u], r10[u], r11[u], ly, lx)
                                c = stop
                            sum_y = _fixed_order_sum(terms, ipog)
                            sum_x = _fixed_order_sum(terms + ipog, ipog)
                            if has_mask:
                                m = mask[b, kk, p]
                                grad_offset[b, 2 * kk, p] = <real>(m * sum_y)
                                grad_offset[b, 2 * kk + 1, p] = <real>(m * sum_x)
                            else:
                                grad_offset[b, 2 * kk, p] = <real>sum_y
                                grad_offset[b, 2 * kk + 1, p] = <real>sum_x
                            if has_grad_mask:
                                grad_mask[b, kk, p] = <real>_fixed_order_sum(terms + 2 * ipog,
                                                                             ipog)
    finally:
        free(terms)


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
