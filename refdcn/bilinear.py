"""The scalar mathematics of deformable convolution, written once.

Every backend of refdcn evaluates the functions of this module and no other
copy of them:

* the loop reference (:mod:`refdcn.reference.loops`) calls them as plain
  Python on scalars;
* the NumPy backend (:mod:`refdcn.backends.numpy_cpu`) calls the purely
  arithmetic ones (:func:`sampling_point`, :func:`corner_weights`,
  :func:`interpolate`, :func:`interpolate_gradient`, :func:`scatter_corners`)
  on whole arrays (``tests/test_bilinear.py`` checks these vectorised forms
  against the scalar ones on the awkward-coordinate grid);
* the Numba CPU backend wraps them with ``numba.njit``;
* the Numba CUDA backend compiles them as CUDA device functions;
* the Cython backend's ``refdcn/_cy/bilinear.pxd`` mirrors them line for line.

Therefore the code here uses only what Python, NumPy broadcasting (for the
arithmetic helpers), Numba's CPU target and Numba's CUDA target all accept:
scalar arithmetic, comparisons, ``int(math.floor(v))``, tuples.  No NumPy
calls, no lists, no exceptions.

Notation
--------
An image plane ``plane`` has shape ``(H, W)``; pixel centres sit at integer
coordinates, ``(y, x) = (row, column)``, origin at the centre of pixel
``(0, 0)``.  A sampling point ``(y, x)`` has the floor corner
``(y0, x0) = (floor(y), floor(x))`` and the fractional parts
``ly = y - y0``, ``lx = x - x0``.  The bilinear sample is

.. math::

    S(y, x) = (1-l_y)(1-l_x) v_{00} + (1-l_y) l_x v_{01}
              + l_y (1-l_x) v_{10} + l_y l_x v_{11},

where ``v_ab = plane[y0 + a, x0 + b]`` if that pixel is inside the image and
``0`` otherwise (torchvision's rule: the image is zero-padded by one pixel;
there is no renormalisation).  Consequently ``S = 0`` whenever ``y <= -1``,
``y >= H``, ``x <= -1`` or ``x >= W``.

Its derivatives with respect to the sampling coordinates are

.. math::

    \\partial S / \\partial y = (1-l_x)(v_{10} - v_{00}) + l_x (v_{11} - v_{01}),
    \\qquad
    \\partial S / \\partial x = (1-l_y)(v_{01} - v_{00}) + l_y (v_{11} - v_{10}).

At an integer coordinate these are the one-sided derivatives from above
(the floor puts the point at the left end of its cell).  The two conventions
of the offset gradient differ only in which points are "active":

* ``BORDER_TORCHVISION``: points with ``-1 <= y < H`` and ``-1 <= x < W``;
  at exactly ``y = -1`` the value is 0 but the derivative is the inward
  one-sided derivative, i.e. the values of row 0 (torchvision's
  ``get_coordinate_weight`` has no range check).
* ``BORDER_MMCV``: points inside the open square ``-1 < y < H``,
  ``-1 < x < W``; everything else has derivative 0 (mmcv, MSRA DCNv2_op,
  CharlesShang/DCNv2, DCNv4).

Non-finite coordinates: ``+-inf`` and huge values are simply outside (value
and derivatives 0, nothing is read).  A NaN coordinate makes the sample and
its derivatives NaN (the NaN propagates; nothing is read).
"""

import math

#: Offset-gradient convention codes (integers so that compiled code can take them).
BORDER_TORCHVISION = 0
BORDER_MMCV = 1

#: Index used for the floor corner of an inactive point: both ``-2`` and
#: ``-2 + 1`` are outside every image, so no pixel is ever read for it.
OUTSIDE = -2


def sampling_point(out_index, stride, padding, tap, dilation, delta):
    """One coordinate of a sampling point.

    ``out_index * stride - padding + tap * dilation + delta``: the position
    of kernel tap ``tap`` of output pixel ``out_index`` on the regular grid,
    moved by the learned offset ``delta``.  Works on scalars and on
    broadcastable arrays.
    """
    return out_index * stride - padding + tap * dilation + delta


def scaled_sampling_point(out_index, stride, padding, tap, dilation, delta, centre, scale):
    """One coordinate of a DCNv3/DCNv4 sampling point: the footprint scaled about its centre.

    ``centre = (dilation * (k - 1)) // 2`` is the kernel centre's distance from
    tap 0; the point is ``c + (tap * dilation - centre + delta) * scale`` with
    ``c = out_index * stride - padding + centre``, i.e. the regular tap
    position plus the learned offset, both scaled by ``offset_scale`` about
    the kernel centre (InternImage ``dcnv3_im2col_cuda.cuh`` /
    OpenGVLab/DCNv4 ``dcnv4_im2col_cuda.cuh``: ``p0_ + (tap*dil + off) *
    offset_scale`` with ``p0_ = c - centre * offset_scale``).  With
    ``scale = 1`` it is :func:`sampling_point` (up to the order of the
    additions).  Works on scalars and on broadcastable arrays.
    """
    return sampling_point(out_index, stride, padding, centre, 1,
                          (tap * dilation - centre + delta) * scale)


def locate(y, x, height, width, closed_at_minus_one):
    """Floor corner and fractional parts of the sampling point ``(y, x)``.

    Parameters
    ----------
    y, x : float
        Sampling point.
    height, width : int
        Size of the image plane.
    closed_at_minus_one : bool
        ``False``: a point is active inside the open square
        ``(-1, H) x (-1, W)`` (the forward rule, and the mmcv gradient rule).
        ``True``: also on the lines ``y = -1`` and ``x = -1`` (the torchvision
        gradient rule).

    Returns
    -------
    active : bool
        ``False`` when the point is outside (its value and derivatives are 0).
    y0, x0 : int
        ``floor(y)``, ``floor(x)``; :data:`OUTSIDE` for inactive or NaN points.
    ly, lx : float
        ``y - y0`` and ``x - x0`` in ``[0, 1)``; NaN for a NaN point.
    """
    if y != y or x != x:
        # NaN in, NaN out: active, no corner inside, NaN fractions.
        return True, OUTSIDE, OUTSIDE, y + x, y + x
    if closed_at_minus_one:
        inside = y >= -1.0 and y < height and x >= -1.0 and x < width
    else:
        inside = y > -1.0 and y < height and x > -1.0 and x < width
    if not inside:
        return False, OUTSIDE, OUTSIDE, 0.0, 0.0
    y0 = int(math.floor(y))
    x0 = int(math.floor(x))
    return True, y0, x0, y - y0, x - x0


def in_image(yy, xx, height, width):
    """Whether the integer pixel ``(yy, xx)`` lies inside an ``H x W`` image."""
    return yy >= 0 and yy < height and xx >= 0 and xx < width


def pixel(plane, yy, xx, height, width):
    """``plane[yy, xx]`` inside the image, ``0`` outside (the zero border)."""
    if in_image(yy, xx, height, width):
        return plane[yy, xx]
    return 0.0


def corners(plane, y0, x0, height, width):
    """The four corner values ``(v00, v01, v10, v11)`` around ``(y0, x0)``.

    ``v_ab = plane[y0 + a, x0 + b]``, or 0 for a corner outside the image.
    """
    return (pixel(plane, y0, x0, height, width),
            pixel(plane, y0, x0 + 1, height, width),
            pixel(plane, y0 + 1, x0, height, width),
            pixel(plane, y0 + 1, x0 + 1, height, width))


def corner_weights(ly, lx):
    """Bilinear weights ``(w00, w01, w10, w11)`` of the four corners.

    Products of the 1-D hat functions: ``w_ab = h_a(ly) * h_b(lx)`` with
    ``h_0(t) = 1 - t`` and ``h_1(t) = t``.  Works on scalars and on arrays.
    """
    hy = 1.0 - ly
    hx = 1.0 - lx
    return hy * hx, hy * lx, ly * hx, ly * lx


def weighted_sum(v00, v01, v10, v11, w00, w01, w10, w11):
    """``w00*v00 + w01*v01 + w10*v10 + w11*v11``: the corners times their weights.

    The last step of :func:`interpolate`, on its own so that a kernel that
    reuses one point's :func:`corner_weights` for many channels can call it.
    Works on scalars and on arrays.
    """
    return w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11


def interpolate(v00, v01, v10, v11, ly, lx):
    """Bilinear value from the four corner values and the fractional parts."""
    w00, w01, w10, w11 = corner_weights(ly, lx)
    return weighted_sum(v00, v01, v10, v11, w00, w01, w10, w11)


def interpolate_gradient(v00, v01, v10, v11, ly, lx):
    """Derivatives ``(dS/dy, dS/dx)`` of the bilinear value inside one cell.

    One-sided (from above) at integer coordinates.  Works on scalars and on
    arrays.
    """
    d_dy = (1.0 - lx) * (v10 - v00) + lx * (v11 - v01)
    d_dx = (1.0 - ly) * (v01 - v00) + ly * (v11 - v10)
    return d_dy, d_dx


def weighted_targets(y0, x0, w00, w01, w10, w11):
    """The adjoint of :func:`weighted_sum`: ``(row, col, weight)`` of the four corners.

    The last step of :func:`scatter_corners`, on its own so that a kernel that
    reuses one point's :func:`corner_weights` for many channels can call it.
    ``(y0, x0)`` may also be ``(0, 0)``: the targets relative to the floor corner.
    """
    return ((y0, x0, w00), (y0, x0 + 1, w01), (y0 + 1, x0, w10), (y0 + 1, x0 + 1, w11))


def scatter_corners(y0, x0, ly, lx):
    """The adjoint of sampling: the four corners a sample's gradient goes to.

    Sampling is linear in the image, ``S = sum_ab w_ab * plane[y0+a, x0+b]``,
    so its adjoint (the input gradient of one sample with upstream gradient
    ``g``) adds ``g * w_ab`` to pixel ``(y0 + a, x0 + b)`` for each corner
    inside the image (corners outside are the zero border: dropped).

    Parameters
    ----------
    y0, x0 : int
        Floor corner from :func:`locate` (forward rule: ``closed_at_minus_one=False``).
    ly, lx : float
        Fractional parts from :func:`locate`.

    Returns
    -------
    tuple of four ``(row, col, weight)``
        In the order ``00, 01, 10, 11`` of :func:`corner_weights`.  Works on
        scalars and on broadcastable arrays (``row``/``col`` then are arrays).
    """
    w00, w01, w10, w11 = corner_weights(ly, lx)
    return weighted_targets(y0, x0, w00, w01, w10, w11)


def scatter_add(grad_plane, height, width, y, x, value):
    """Add the adjoint of ``S(y, x)`` times ``value`` into ``grad_plane`` (shape (H, W)).

    ``grad_plane[y0+a, x0+b] += value * w_ab`` for each corner inside the
    image; nothing for a point outside (on or beyond ``-1``/``H``/``W``) or
    a NaN point (no corner is located for it).
    """
    # closed_at_minus_one=False: the forward's open square (-1, H) x (-1, W)
    active, y0, x0, ly, lx = locate(y, x, height, width, False)
    if active:
        for row, col, weight in scatter_corners(y0, x0, ly, lx):
            if in_image(row, col, height, width):
                grad_plane[row, col] += value * weight


def bilinear_sample(plane, height, width, y, x):
    """The zero-border bilinear sample ``S(y, x)`` of ``plane`` (shape (H, W))."""
    # closed_at_minus_one=False: the open square (-1, H) x (-1, W)
    active, y0, x0, ly, lx = locate(y, x, height, width, False)
    if not active:
        return 0.0
    v00, v01, v10, v11 = corners(plane, y0, x0, height, width)
    return interpolate(v00, v01, v10, v11, ly, lx)


def bilinear_gradient(plane, height, width, y, x, convention):
    """``(dS/dy, dS/dx)`` at ``(y, x)`` under an offset-gradient convention.

    ``convention`` is :data:`BORDER_TORCHVISION` or :data:`BORDER_MMCV`.
    """
    active, y0, x0, ly, lx = locate(y, x, height, width,
                                    convention == BORDER_TORCHVISION)
    if not active:
        return 0.0, 0.0
    v00, v01, v10, v11 = corners(plane, y0, x0, height, width)
    return interpolate_gradient(v00, v01, v10, v11, ly, lx)
