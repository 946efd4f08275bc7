# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# MIRROR OF refdcn/bilinear.py -- CHANGE BOTH FILES TOGETHER.
#
# The scalar mathematics of deformable convolution for the Cython backend.
# Every function below is the C translation of the function of the same name
# in refdcn/bilinear.py, in the same order, line for line and with the same
# order of floating-point operations (so that, compiled without FMA
# contraction, the results are bitwise identical to the Python ones).
# tests/test_cython.py checks that the names and their order agree and that
# the compiled helpers (the ``_py_*`` wrappers of kernels.pyx) return exactly
# what the Python functions return, including for -1, H, huge, inf and NaN
# coordinates.  See refdcn/bilinear.py for the documentation of each function.
#
# Types: coordinates and fractions are double (as in Python, where they are
# floats), indices Py_ssize_t, flags bint; ``plane`` is a C-contiguous typed
# memoryview of the compute dtype (float or double), read only; the corner values of
# interpolate_gradient keep their dtype (``value_t``: float or double), like NumPy scalars.

from libc.math cimport floor

ctypedef fused real:
    float
    double

# The dtype of corner values where a function subtracts them (interpolate_gradient): a
# fused type of its own, so that a caller fused over ``real`` may pass doubles.
ctypedef fused value_t:
    float
    double

cdef enum:
    BORDER_TORCHVISION = 0
    BORDER_MMCV = 1
    OUTSIDE = -2


cdef inline double sampling_point(Py_ssize_t out_index, Py_ssize_t stride, Py_ssize_t padding,
                                  Py_ssize_t tap, Py_ssize_t dilation,
                                  double delta) noexcept nogil:
    return out_index * stride - padding + tap * dilation + delta


cdef inline double scaled_sampling_point(Py_ssize_t out_index, Py_ssize_t stride,
                                         Py_ssize_t padding, Py_ssize_t tap,
                                         Py_ssize_t dilation, double delta, Py_ssize_t centre,
                                         double scale) noexcept nogil:
    return sampling_point(out_index, stride, padding, centre, 1,
                          (tap * dilation - centre + delta) * scale)


cdef inline (bint, Py_ssize_t, Py_ssize_t, double, double) locate(
        double y, double x, Py_ssize_t height, Py_ssize_t width,
        bint closed_at_minus_one) noexcept nogil:
    cdef bint inside
    cdef Py_ssize_t y0, x0
    if y != y or x != x:
        # NaN in, NaN out: active, no corner inside, NaN fractions.
        return True, OUTSIDE, OUTSIDE, y + x, y + x
    if closed_at_minus_one:
        inside = y >= -1.0 and y < height and x >= -1.0 and x < width
    else:
        inside = y > -1.0 and y < height and x > -1.0 and x < width
    if not inside:
        return False, OUTSIDE, OUTSIDE, 0.0, 0.0
    y0 = <Py_ssize_t>floor(y)
    x0 = <Py_ssize_t>floor(x)
    return True, y0, x0, y - y0, x - x0


cdef inline bint in_image(Py_ssize_t yy, Py_ssize_t xx, Py_ssize_t height,
                          Py_ssize_t width) noexcept nogil:
    return yy >= 0 and yy < height and xx >= 0 and xx < width


cdef inline double pixel(const real[:, ::1] plane, Py_ssize_t yy, Py_ssize_t xx,
                         Py_ssize_t height, Py_ssize_t width) noexcept nogil:
    if in_image(yy, xx, height, width):
        return plane[yy, xx]
    return 0.0


cdef inline (double, double, double, double) corners(
        const real[:, ::1] plane, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t height,
        Py_ssize_t width) noexcept nogil:
    return (pixel(plane, y0, x0, height, width),
            pixel(plane, y0, x0 + 1, height, width),
            pixel(plane, y0 + 1, x0, height, width),
            pixel(plane, y0 + 1, x0 + 1, height, width))


cdef inline (double, double, double, double) corner_weights(double ly, double lx) noexcept nogil:
    cdef double hy = 1.0 - ly
    cdef double hx = 1.0 - lx
    return hy * hx, hy * lx, ly * hx, ly * lx


cdef inline double weighted_sum(double v00, double v01, double v10, double v11, double w00,
                                double w01, double w10, double w11) noexcept nogil:
    return w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11


cdef inline double interpolate(double v00, double v01, double v10, double v11,
                               double ly, double lx) noexcept nogil:
    cdef double w00, w01, w10, w11
    w00, w01, w10, w11 = corner_weights(ly, lx)
    return weighted_sum(v00, v01, v10, v11, w00, w01, w10, w11)


cdef inline (double, double) interpolate_gradient(value_t v00, value_t v01, value_t v10,
                                                  value_t v11, double ly,
                                                  double lx) noexcept nogil:
    # value_t: the corners' own dtype, as the Python function on NumPy scalars (and the Numba
    # kernels): the differences v10 - v00... are rounded to it, the products are double
    cdef double d_dy = (1.0 - lx) * (v10 - v00) + lx * (v11 - v01)
    cdef double d_dx = (1.0 - ly) * (v01 - v00) + ly * (v11 - v10)
    return d_dy, d_dx


ctypedef (Py_ssize_t, Py_ssize_t, double) Target     # (row, col, weight)


cdef inline (Target, Target, Target, Target) weighted_targets(
        Py_ssize_t y0, Py_ssize_t x0, double w00, double w01, double w10,
        double w11) noexcept nogil:
    return ((y0, x0, w00), (y0, x0 + 1, w01), (y0 + 1, x0, w10), (y0 + 1, x0 + 1, w11))


cdef inline (Target, Target, Target, Target) scatter_corners(
        Py_ssize_t y0, Py_ssize_t x0, double ly, double lx) noexcept nogil:
    cdef double w00, w01, w10, w11
    w00, w01, w10, w11 = corner_weights(ly, lx)
    return weighted_targets(y0, x0, w00, w01, w10, w11)


cdef inline void scatter_add(double[:, ::1] grad_plane, Py_ssize_t height, Py_ssize_t width,
                             double y, double x, double value) noexcept nogil:
    cdef bint active
    cdef Py_ssize_t y0, x0, row, col, corner
    cdef double ly, lx, weight
    cdef Target targets[4]
    # closed_at_minus_one=False: the forward's open square (-1, H) x (-1, W)
    active, y0, x0, ly, lx = locate(y, x, height, width, False)
    if active:
        targets[0], targets[1], targets[2], targets[3] = scatter_corners(y0, x0, ly, lx)
        for corner in range(4):          # C cannot iterate over the tuple itself
            row, col, weight = targets[corner]
            if in_image(row, col, height, width):
                grad_plane[row, col] += value * weight


cdef inline double bilinear_sample(const real[:, ::1] plane, Py_ssize_t height, Py_ssize_t width,
                                   double y, double x) noexcept nogil:
    cdef bint active
    cdef Py_ssize_t y0, x0
    cdef double ly, lx, v00, v01, v10, v11
    # closed_at_minus_one=False: the open square (-1, H) x (-1, W)
    active, y0, x0, ly, lx = locate(y, x, height, width, False)
    if not active:
        return 0.0
    v00, v01, v10, v11 = corners(plane, y0, x0, height, width)
    return interpolate(v00, v01, v10, v11, ly, lx)


cdef inline (double, double) bilinear_gradient(const real[:, ::1] plane, Py_ssize_t height,
                                               Py_ssize_t width, double y, double x,
                                               int convention) noexcept nogil:
    cdef bint active
    cdef Py_ssize_t y0, x0
    cdef double ly, lx, v00, v01, v10, v11
    active, y0, x0, ly, lx = locate(y, x, height, width,
                                    convention == BORDER_TORCHVISION)
    if not active:
        return 0.0, 0.0
    v00, v01, v10, v11 = corners(plane, y0, x0, height, width)
    return interpolate_gradient(v00, v01, v10, v11, ly, lx)
