"""Device functions every kernel shares: the math of :mod:`refdcn.bilinear`, and sample indexing.

The scalar mathematics is not written here: the functions of
:mod:`refdcn.bilinear` are compiled as CUDA device functions from their one
source (:func:`refdcn.backends._shared_math.compile_bilinear`);
:data:`DEVICE_SOURCES` are the Python functions handed to the compiler.

Every kernel takes the geometry as one record, :class:`refdcn.geometry.KernelGeometry`
(a namedtuple of ints that Numba passes to kernels by value), and reads its
fields by name.  A *sample* ``t`` enumerates (image in the block ``bl``,
offset group ``d``, tap ``k``, output pixel ``p``), ``p`` fastest.
Array reads that enter float64 arithmetic go through ``float()`` so that the
simulator (NumPy scalars) computes in float64 like the GPU.
"""

from .probe import cuda
from .._shared_math import compile_bilinear

#: The functions of :mod:`refdcn.bilinear` compiled as device functions (callees first).
SHARED = ("sampling_point", "locate", "in_image", "pixel", "corners", "corner_weights",
          "weighted_sum", "interpolate", "interpolate_gradient", "scatter_corners",
          "bilinear_sample", "bilinear_gradient")

#: name -> the Python function (bilinear's code object) compiled as a device function.
DEVICE_SOURCES, DEVICE_FUNCTIONS = compile_bilinear(cuda.jit(device=True), SHARED)
sampling_point = DEVICE_FUNCTIONS["sampling_point"]
locate = DEVICE_FUNCTIONS["locate"]
in_image = DEVICE_FUNCTIONS["in_image"]
corners = DEVICE_FUNCTIONS["corners"]
corner_weights = DEVICE_FUNCTIONS["corner_weights"]
weighted_sum = DEVICE_FUNCTIONS["weighted_sum"]
interpolate = DEVICE_FUNCTIONS["interpolate"]
interpolate_gradient = DEVICE_FUNCTIONS["interpolate_gradient"]
scatter_corners = DEVICE_FUNCTIONS["scatter_corners"]


@cuda.jit(device=True)
def unravel(t, n1, n2, n3):
    """Flat index ``t`` of a C-ordered ``(n0, n1, n2, n3)`` array -> ``(i0, i1, i2, i3)``."""
    i3 = t % n3
    r = t // n3
    i2 = r % n2
    r = r // n2
    return r // n1, r % n1, i2, i3


@cuda.jit(device=True)
def sample_count(geo):
    """Samples of a tile: images x offset groups x taps x output pixels."""
    return geo.batch * geo.offset_groups * geo.taps * geo.out_pixels


@cuda.jit(device=True)
def tap_sample(offset, mask, has_mask, b, d, k, p, geo):
    """Where tap ``k`` of offset group ``d`` samples for output pixel ``p`` of image ``b``.

    Returns ``(kk, oy, ox, y, x, m)``: the tap's index among all offset groups'
    taps (its ``mask`` channel), the output pixel, the sampling point
    (float64) and the modulation (1 without a mask).
    """
    kk = d * geo.taps + k
    oy = p // geo.out_w
    ox = p - oy * geo.out_w
    i = k // geo.kw
    j = k - i * geo.kw
    y = sampling_point(oy, geo.stride_h, geo.pad_h, i, geo.dilation_h,
                       float(offset[b, 2 * kk, oy, ox]))
    x = sampling_point(ox, geo.stride_w, geo.pad_w, j, geo.dilation_w,
                       float(offset[b, 2 * kk + 1, oy, ox]))
    m = float(mask[b, kk, oy, ox]) if has_mask else 1.0
    return kk, oy, ox, y, x, m


@cuda.jit(device=True)
def sample(t, offset, mask, has_mask, geo):
    """Sample ``t`` (image ``b``, offset group ``d``, tap ``k``, output pixel ``p``, ``p``
    fastest) and where it samples: ``(b, d, k, p, kk, oy, ox, y, x, m)``
    (see :func:`tap_sample`)."""
    b, d, k, p = unravel(t, geo.offset_groups, geo.taps, geo.out_pixels)
    kk, oy, ox, y, x, m = tap_sample(offset, mask, has_mask, b, d, k, p, geo)
    return b, d, k, p, kk, oy, ox, y, x, m
