"""TEMPORARY stand-in for ARCH-CORE's refdcn.geometry.KernelGeometry (deleted on rebase)."""
from collections import namedtuple

try:
    from ...geometry import KernelGeometry
except ImportError:
    KernelGeometry = namedtuple("KernelGeometry", [
        "batch", "in_channels", "height", "width", "out_channels", "kh", "kw",
        "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w",
        "groups", "offset_groups", "out_h", "out_w", "taps", "out_pixels",
        "in_per_group", "out_per_group", "in_per_offset_group"])


def kernel_record(geom):
    if hasattr(geom, "kernel_record"):
        return geom.kernel_record()
    return KernelGeometry(
        geom.batch, geom.in_channels, geom.height, geom.width, geom.out_channels, geom.kh,
        geom.kw, geom.stride[0], geom.stride[1], geom.padding[0], geom.padding[1],
        geom.dilation[0], geom.dilation[1], geom.groups, geom.offset_groups, geom.out_h,
        geom.out_w, geom.taps, geom.out_pixels, geom.in_per_group, geom.out_per_group,
        geom.in_per_offset_group)
