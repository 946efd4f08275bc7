"""Values worked out by hand: every number refdcn checks that was derived on paper.

The tests compare the loop reference and every backend with the values below
(``tests/test_bilinear.py``, ``tests/test_reference.py``,
``tests/test_conformance.py``), the golden vectors of the hand-worked
conformance cases are checked against them (``tests/test_conformance.py``),
and the notebooks quote them; nothing else writes these numbers.  Each table
carries its derivation; the published ones (ONNX's, mmcv's) name the file they
come from.  :func:`by_hand` returns them per conformance case.

Notation is that of :mod:`refdcn.bilinear`: ``S(y, x)`` is the zero-border
bilinear sample, ``(y, x) = (row, column)``, a sample is 0 on and beyond
``y = -1``, ``y = H``, ``x = -1``, ``x = W``; derivatives at an integer
coordinate are one-sided from above; on exactly ``-1`` torchvision's offset
gradient is the inward derivative and mmcv's is 0.
"""

import numpy as np

__all__ = ["PLANE", "SAMPLE_VALUES", "COORDINATE_GRADIENTS", "LANDINGS", "ONNX_OUTPUTS",
           "MMCV_INPUT", "MMCV_OUTPUT", "MMCV_INPUT_GRAD", "MMCV_WEIGHT_GRAD",
           "MMCV_OFFSET_BIAS_GRAD", "MMCV_OFFSET_WEIGHT_GRAD", "TORCHVISION_OFFSET_BIAS_GRAD",
           "BORDER_TARGETS", "BORDER_Y_OUTPUT", "BORDER_Y_DY", "BORDER_Y_DX", "BORDER_Y_INPUT",
           "BORDER_Y_WEIGHT", "BAND_TARGETS_Y", "BAND_TARGETS_X", "BANDS_OUTPUT", "by_hand",
           "BY_HAND", "DCNV3_RAMP", "DCNV3_SCALE2_OUTPUT"]

# ======================================================================= one plane, by hand
#: A 3x4 plane (H = 3, W = 4) with ``v[y, x] = 4y + x + 1``: values 1..12, so a row step is
#: 4 and a column step 1 inside the image.
PLANE = np.arange(1.0, 13.0).reshape(3, 4)

#: ``(y, x, S(y, x))`` on :data:`PLANE`.
SAMPLE_VALUES = [
    (0.0, 0.0, 1.0),                   # a pixel centre: v[0, 0]
    (1.0, 2.0, 7.0),                   # v[1, 2] = 4 + 2 + 1
    (0.5, 0.0, 3.0),                   # halfway between v[0, 0] = 1 and v[1, 0] = 5
    (0.0, 0.25, 1.25),                 # 0.75 * 1 + 0.25 * 2
    (1.5, 1.5, (6 + 7 + 10 + 11) / 4),  # the mean of the four corners
    (-0.25, 0.0, 0.75 * 1.0),          # band (-1, 0): row -1 is zero, row 0 has weight 0.75
    (2.5, 3.0, 0.5 * 12.0),            # band (H-1, H): row H is zero
    (0.0, 3.5, 0.5 * 4.0),             # band (W-1, W): column W is zero
    (-1.0, 1.0, 0.0),                  # exactly -1: all weight on the zero row -1
    (3.0, 1.0, 0.0),                   # exactly H: outside
    (1.0, -1.0, 0.0),
    (1.0, 4.0, 0.0),
    (2.0, 3.0, 12.0),                  # exactly H-1, W-1: the last pixel
    (-5.0, 2.0, 0.0),                  # far outside
    (1e30, 0.0, 0.0),
    (0.0, -1e30, 0.0),
    (np.inf, 0.0, 0.0),
    (0.0, -np.inf, 0.0),
]

#: ``(y, x, torchvision (dS/dy, dS/dx), mmcv (dS/dy, dS/dx) or None if the same)`` on
#: :data:`PLANE`, from ``dS/dy = (1-lx)(v10 - v00) + lx (v11 - v01)`` and
#: ``dS/dx = (1-ly)(v01 - v00) + ly (v11 - v10)``.
COORDINATE_GRADIENTS = [
    # interior, at integers: from above, the row step 4 and the column step 1
    (1.0, 1.0, (10 - 6, 7 - 6), None),
    (0.5, 0.5, (0.5 * (5 - 1) + 0.5 * (6 - 2), 0.5 * (2 - 1) + 0.5 * (6 - 5)), None),
    # exactly y = -1: torchvision's inward derivative is row 0 at x (v[0, 1] = 2), mmcv 0
    (-1.0, 1.0, (2.0, 0.0), (0.0, 0.0)),
    (1.0, -1.0, (0.0, 5.0), (0.0, 0.0)),      # x = -1: column 0 at y (v[1, 0] = 5)
    (-1.0, -1.0, (0.0, 0.0), (0.0, 0.0)),     # the corner (-1, -1): every neighbour is 0
    # exactly H or W: both corners in that direction are outside
    (3.0, 1.0, (0.0, 0.0), (0.0, 0.0)),
    (1.0, 4.0, (0.0, 0.0), (0.0, 0.0)),
    # band (H-1, H): the missing row H counts as zero
    (2.5, 1.0, (0.0 - 10.0, 0.5 * (11 - 10)), None),
    # band (-1, 0): row -1 is zero
    (-0.5, 0.0, (1.0 - 0.0, 0.5 * (2 - 1)), None),
    # exactly H-1: the derivative from above sees the zero row H
    (2.0, 2.0, (0 - 11.0, 12 - 11.0), None),
    (-1.5, 1.0, (0.0, 0.0), (0.0, 0.0)),      # outside
    (1e30, 1.0, (0.0, 0.0), (0.0, 0.0)),
]

#: Exact border landings of a 1x1 kernel (stride 1, padding 0) on ``PLANE[None, None]``:
#: output ``(oy, ox)`` samples ``(oy + dy, ox + dx)``.  Rows:
#: ``((oy, ox), dy, dx, S, torchvision dS/dy, dS/dx, mmcv dS/dy, dS/dx)``.
LANDINGS = [
    ((0, 1), -1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0),      # y = -1: tv inward derivative = v[0, 1]
    ((1, 1), 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),       # y = H: outside
    ((0, 2), 2.0, 0.0, 11.0, -11.0, 1.0, -11.0, 1.0),  # y = H-1: from above sees row H = 0
    ((2, 0), -2.0, 0.0, 1.0, 4.0, 1.0, 4.0, 1.0),      # y = 0: v[0, 0]; row step 4
    ((1, 0), 0.0, -1.0, 0.0, 0.0, 5.0, 0.0, 0.0),      # x = -1: tv inward = v[1, 0]
    ((2, 3), 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),       # x = W: outside
    ((1, 2), 0.0, 1.0, 8.0, 4.0, -8.0, 4.0, -8.0),     # x = W-1: from above sees column W = 0
    ((0, 0), -0.25, 0.0, 0.75, 1.0, 0.75, 1.0, 0.75),  # band (-1, 0): 0.75 * v[0, 0]
    ((2, 2), 0.5, 0.0, 5.5, -11.0, 0.5, -11.0, 0.5),   # band (H-1, H): 0.5 * v[2, 2]
    ((2, 1), -100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),    # far outside
    ((0, 3), 0.0, 100.0, 0.0, 0.0, 0.0, 0.0, 0.0),
]

# ======================================================================= ONNX's backend cases
#: ``out[0, 0]`` of the four ONNX ``DeformConv`` backend-test cases
#: (``onnx/backend/test/case/node/deformconv.py``; inputs in :mod:`refdcn.conformance`).
#:
#: The image is ``X = arange(9)`` as 3x3 (rows 0 1 2 / 3 4 5 / 6 7 8), the kernel 2x2 ones,
#: so without offsets every output is the sum of a 2x2 window.  Tap ``(i, j)`` of output
#: ``(oy, ox)`` samples ``(oy - p + i + dy, ox - p + j + dx)``:
#:
#: * ``onnx_with_padding`` (p = 1): window sums of the zero-padded X are
#:   0 1 3 2 / 3 8 12 7 / 9 20 24 13 / 6 13 15 8.  dy = 0.5 on tap (0, 0) of output (0, 0)
#:   moves (-1, -1) to (-0.5, -1), still on x = -1: 0, unchanged.  dx = -0.1 on tap (1, 0)
#:   of output (1, 2) moves (1, 1) to (1, 0.9): 0.1 * 3 + 0.9 * 4 = 3.9 instead of 4, so
#:   12 becomes 11.9.
#: * ``onnx_without_padding`` (p = 0): sums 8 12 / 20 24; dy = 0.5 on tap (0, 0) of (0, 0)
#:   samples (0.5, 0) = 0.5 * 0 + 0.5 * 3 = 1.5 instead of 0 (9.5); dx = -0.1 on tap (1, 0)
#:   of (0, 1) samples (1, 0.9) = 3.9 instead of 4 (11.9).
#: * ``onnx_mask_bias``: the same plus bias 1, and mask 0.2 on tap (1, 0) of output (1, 1),
#:   which samples X[2, 1] = 7: 24 - 0.8 * 7 + 1 = 19.4; the others are 9.5+1, 11.9+1, 20+1.
#: * ``onnx_offset_groups``: two channels, X and its reverse 8 - X, one offset group each;
#:   X + (8 - X) = 8 everywhere, so each output is 4 taps * 8 = 32.  Group 0's dy = 0.5 at
#:   (0, 0) adds 1.5 (as above: 33.5); group 1's dx = -0.1 on tap (1, 0) of (0, 1) samples
#:   (1, 0.9) of 8 - X: 0.1 * 5 + 0.9 * 4 = 4.1 instead of 4 (32.1).
ONNX_OUTPUTS = {
    "onnx_with_padding": [[0.0, 1.0, 3.0, 2.0], [3.0, 8.0, 11.9, 7.0], [9.0, 20.0, 24.0, 13.0],
                          [6.0, 13.0, 15.0, 8.0]],
    "onnx_without_padding": [[9.5, 11.9], [20.0, 24.0]],
    "onnx_mask_bias": [[10.5, 12.9], [21.0, 19.4]],
    "onnx_offset_groups": [[33.5, 32.1], [32.0, 32.0]],
}

# ======================================================================= mmcv's golden test
# mmcv tests/test_ops/test_modulated_deform_conv.py: ModulatedDeformConv2dPack(1, 1, (2, 2),
# padding=1, bias=False) with weight 1 and a zero-initialised offset conv (so every offset is 0
# and every mask sigmoid(0) = 0.5), loss = output.sum() (grad_output = 1).

#: mmcv's input (1x1x3x3): every row is 1 2 3 (so every row step is 0).
MMCV_INPUT = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
#: 0.5 * the 2x2 window sums of the zero-padded input: one input row in the first and last
#: output rows (0.5 * (0+1), 0.5 * (1+2), 0.5 * (2+3), 0.5 * (3+0)), two in the others.
MMCV_OUTPUT = [[0.5, 1.5, 2.5, 1.5], [1.0, 3.0, 5.0, 3.0], [1.0, 3.0, 5.0, 3.0],
               [0.5, 1.5, 2.5, 1.5]]
#: Every input pixel lies in 4 windows (4x4 outputs, 2x2 kernel, padding 1): 4 * 1 * 0.5.
MMCV_INPUT_GRAD = np.full((3, 3), 2.0)
#: Each tap samples every input pixel exactly once: 0.5 * (sum of the input = 18) = 9.
MMCV_WEIGHT_GRAD = np.full((2, 2), 9.0)
#: mmcv's ``dcn_offset_b_grad``: the offset gradient summed over output pixels for the 8
#: offset channels, and sigmoid'(0) = 1/4 times the summed mask gradient for the 4 mask
#: channels.  Offsets: tap (i, j) samples rows ``i-1 .. i+2`` and columns ``j-1 .. j+2``;
#: rows are equal, so dS/dy is 0 except on row H-1 = 2 (from above: 0 - v = -v) and dS/dx is
#: 1 between columns 0, 1, 2 and -3 on column W-1 = 2.  Under mmcv's rule points on -1 give 0.
#: Tap (0, 0): dy sums -(1 + 2 + 3) * 0.5 = -3 (column -1 is inactive), dx sums
#: 3 rows * (1 + 1 - 3) * 0.5 = -1.5 (row -1 inactive).  The other taps give the same sums
#: (their row 3 or column 3 is outside, or adds 0).  Mask: the samples sum to 18; * 1/4 = 4.5.
MMCV_OFFSET_BIAS_GRAD = [-3.0, -1.5, -3.0, -1.5, -3.0, -1.5, -3.0, -1.5, 4.5, 4.5, 4.5, 4.5]
#: mmcv's ``dcn_offset_w_grad`` (12 x 2 x 2): the offset conv's weight gradient, i.e. the
#: per-pixel offset/mask gradients correlated with the zero-padded input (published values;
#: ``tests/test_conformance.py`` chains refdcn's gradients through that correlation).
MMCV_OFFSET_WEIGHT_GRAD = [[[-7.0, -4.0], [0.0, 0.0]], [[-9.0, 7.5], [-6.0, 5.0]],
                           [[-4.0, -7.0], [0.0, 0.0]], [[-7.5, -9.0], [-5.0, -6.0]],
                           [[-7.0, -4.0], [-7.0, -4.0]], [[-6.0, 5.0], [-9.0, 7.5]],
                           [[-4.0, -7.0], [-4.0, -7.0]], [[-5.0, -6.0], [-7.5, -9.0]],
                           [[10.5, 6.0], [7.0, 4.0]], [[6.0, 10.5], [4.0, 7.0]],
                           [[7.0, 4.0], [10.5, 6.0]], [[4.0, 7.0], [6.0, 10.5]]]
#: The same bias gradient under torchvision's rule (``dcn-implementations.md``, b2): the
#: samples on -1 now count with the inward derivative.  Tap (0, 0), dy: row -1 adds
#: (0 + 1 + 2 + 3) * 0.5 = +3 (the point (-1, -1) sees the zero column), cancelling row 2's
#: -3: 0.  dx: row -1 stays 0 (row -1 is zero), column -1 adds (1 + 1 + 1) * 0.5 = +1.5,
#: cancelling -1.5: 0.  Tap (0, 1) reaches row -1 only (its dy becomes 0 too), tap (1, 0)
#: column -1 only (its dx becomes 0), tap (1, 1) neither; the mask gradients do not depend
#: on the rule.
TORCHVISION_OFFSET_BIAS_GRAD = [0, 0, 0, -1.5, -3, 0, -3, -1.5, 4.5, 4.5, 4.5, 4.5]

# ======================================================================= borders by construction
#: The row targets of ``border_exact_y``: exactly -1, 0, H-1 and H for H = 3.
BORDER_TARGETS = (-1.0, 0.0, 2.0, 3.0)
# border_exact_y: 1x1 kernel, weight 2, input PLANE (v[y, x] = 4y + x + 1, 3x4); output
# (oy, ox) samples (BORDER_TARGETS[ox], ox + oy/4); grad_output = 1.
#: 2 * S: 0 on -1 and H; on y = 0, S = v[0, x] = x + 1; on y = H-1, S = 9 + x.
BORDER_Y_OUTPUT = [[0, 4, 22, 0], [0, 4.5, 22.5, 0], [0, 5, 23, 0]]
#: 2 * dS/dy.  y = -1: torchvision's inward derivative is row 0 at x (x + 1), mmcv 0;
#: y = 0: the row step 4; y = H-1: 0 - row 2 (from above: -(9 + x)); y = H: 0.
BORDER_Y_DY = {
    "torchvision": [[2, 8, -22, 0], [2.5, 8, -22.5, 0], [3, 8, -23, 0]],
    "mmcv": [[0, 8, -22, 0], [0, 8, -22.5, 0], [0, 8, -23, 0]],
}
#: 2 * dS/dx: the column step 1 on the active rows 0 and H-1, 0 on -1 and H.
BORDER_Y_DX = [[0, 2, 2, 0]] * 3
#: 2 * the summed corner weights: row 0 receives from the y = 0 samples (x = 1, 1.25, 1.5):
#: pixel 1 gets 1 + 0.75 + 0.5, pixel 2 gets 0.25 + 0.5; row 2 likewise from y = H-1.
BORDER_Y_INPUT = [[0, 4.5, 1.5, 0], [0, 0, 0, 0], [0, 0, 4.5, 1.5]]
#: The sum of the samples: (2 + 2.25 + 2.5) + (11 + 11.25 + 11.5) = 40.5.
BORDER_Y_WEIGHT = 13 + 13.5 + 14

#: The sampling targets of ``border_bands``: rows and columns of output (oy, ox).
BAND_TARGETS_Y = (-0.75, 1.5, 2.25)
BAND_TARGETS_X = (-0.25, 0.5, 2.75)
# border_bands: 1x1 kernel, weight 2, mask 0.5, v[y, x] = 3y + x + 1 (3x3); output (oy, ox)
# samples (BAND_TARGETS_Y[oy], BAND_TARGETS_X[ox]); weight * mask = 1, so out = S.
#: S by rows and columns of weights (the zero row/column -1 or H/W takes the rest).
BANDS_OUTPUT = [
    # y = -0.75: only row 0 contributes, with weight 0.25
    [0.25 * 0.75 * 1, 0.25 * (0.5 * 1 + 0.5 * 2), 0.25 * 0.25 * 3],
    # y = 1.5: rows 1 and 2 half each
    [0.75 * 0.5 * (4 + 7), 0.25 * (4 + 5 + 7 + 8), 0.25 * 0.5 * (6 + 9)],
    # y = 2.25: row 2 with weight 0.75, row 3 is outside
    [0.75 * 0.75 * 7, 0.75 * 0.5 * (7 + 8), 0.75 * 0.25 * 9],
]
#: Points of ``border_bands``: ``(oy, ox) -> (dS/dy, dS/dx)`` (the same under both rules).
#: (-0.75, -0.25): dS/dy = lx * (v[0, 0] - 0) = 0.75, dS/dx = ly * (v[0, 0] - 0) = 0.25;
#: (2.25, 2.75): dS/dy = (1 - lx)(0 - 9) = -2.25, dS/dx = (1 - ly)(0 - 9) = -6.75;
#: (1.5, 0.5): interior, the row step 3 and the column step 1.
BANDS_COORDINATE_GRADIENTS = {(0, 0): (0.75, 0.25), (2, 2): (-2.25, -6.75), (1, 1): (3.0, 1.0)}


def _border_x(quantity):
    """``border_exact_x`` is ``border_exact_y`` transposed (rows and columns swapped)."""
    return np.transpose(quantity)


def by_hand(name, convention="torchvision"):
    """The hand-derived values of conformance case ``name`` (float64 arrays).

    Parameters
    ----------
    name : str
        A conformance case with hand values: one of :data:`BY_HAND`.
    convention : {"torchvision", "mmcv"}
        The offset-gradient convention (only the offset gradient depends on it).

    Returns
    -------
    dict
        Some of ``"output"``, ``"input"``, ``"offset"``, ``"mask"``, ``"weight"`` (the
        gradients named like :class:`refdcn.Gradients`), each of the full shape of the case's
        array; quantities not worked out by hand are absent.

    Raises
    ------
    KeyError
        If ``name`` has no hand values.
    """
    if name not in BY_HAND:
        raise KeyError(f"no hand-derived values for case {name!r}; those with some: "
                       f"{', '.join(BY_HAND)}")
    if convention not in ("torchvision", "mmcv"):
        raise ValueError(f"convention must be 'torchvision' or 'mmcv'; got {convention!r}")
    return {q: np.asarray(v, dtype=np.float64) for q, v in BY_HAND[name](convention).items()}


def _onnx(name):
    return lambda convention: {"output": [[ONNX_OUTPUTS[name]]]}


def _mmcv(convention):
    return {"output": [[MMCV_OUTPUT]], "input": [[MMCV_INPUT_GRAD]],
            "weight": [[MMCV_WEIGHT_GRAD]]}


def _border_y(convention):
    return {"output": [[BORDER_Y_OUTPUT]], "input": [[BORDER_Y_INPUT]],
            "offset": [[BORDER_Y_DY[convention], BORDER_Y_DX]],
            "weight": [[[[BORDER_Y_WEIGHT]]]]}


def _border_x_case(convention):
    return {"output": [[_border_x(BORDER_Y_OUTPUT)]], "input": [[_border_x(BORDER_Y_INPUT)]],
            "offset": [[_border_x(BORDER_Y_DX), _border_x(BORDER_Y_DY[convention])]],
            "weight": [[[[BORDER_Y_WEIGHT]]]]}


def _bands(convention):
    return {"output": [[BANDS_OUTPUT]], "mask": [[2 * np.array(BANDS_OUTPUT)]]}


#: Conformance case name -> ``convention -> {quantity: nested list}`` (see :func:`by_hand`).
BY_HAND = {
    "onnx_with_padding": _onnx("onnx_with_padding"),
    "onnx_without_padding": _onnx("onnx_without_padding"),
    "onnx_mask_bias": _onnx("onnx_mask_bias"),
    "onnx_offset_groups": _onnx("onnx_offset_groups"),
    "mmcv_small": _mmcv,
    "border_exact_y": _border_y,
    "border_exact_x": _border_x_case,
    "border_bands": _bands,
}


# ======================================================================= DCNv3 / DCNv4
#: A 5x5 ramp ``v[y, x] = 10y + x`` (one channel, channels-last (1, 5, 5, 1)).
DCNV3_RAMP = (10 * np.arange(5.0)[:, None] + np.arange(5.0)[None, :]).reshape(1, 5, 5, 1)

#: :data:`DCNV3_RAMP` through DCNv3/DCNv4 with a 3x3 kernel, ``offset_scale = 2``, zero offsets,
#: all weights 1, no padding (3x3 output).  ``offset_scale`` doubles the footprint about the
#: kernel centre: output (oy, ox) is centred on (oy + 1, ox + 1) and samples the rows and
#: columns ``centre + 2 * (-1, 0, 1)``; row or column -1 or 5 (= H, W) samples 0.
#: (0, 0): rows, columns {1, 3}: 11 + 13 + 31 + 33 = 88; (1, 1): rows, columns {0, 2, 4}, all
#: inside: 3 * 10 * (0 + 2 + 4) + 3 * (0 + 2 + 4) = 198; (0, 1): rows {1, 3}, columns
#: {0, 2, 4}: 3 * 10 * (1 + 3) + 2 * (0 + 2 + 4) = 132; (1, 0) likewise 132; the corners
#: equal (0, 0) and the edges (0, 1) by symmetry of the sampled sets.
DCNV3_SCALE2_OUTPUT = [[88.0, 132.0, 88.0], [132.0, 198.0, 132.0], [88.0, 132.0, 88.0]]
