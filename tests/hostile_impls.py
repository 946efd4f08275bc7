"""Implementations that misbehave as processes, for the verifier's isolation tests.

Each has torchvision's signature on NumPy arrays and computes the right output
(:func:`broken_impls.correct`) unless its misbehaviour stops it first:

``hangs``            sleeps far past any time limit
``segfaults``        dereferences a null pointer (SIGSEGV)
``calls_sys_exit``   ``sys.exit(0)`` inside the forward
``calls_os_exit``    ``os._exit(0)`` inside the forward
``complex_output``   the right values plus a garbage imaginary part
``all_nan``          NaN everywhere
``strings``          an array of strings
``prints``           the right output, after printing to stdout
``stateful``         adds into an output buffer cached by shape and never zeroed (the
                     first call of a shape is right, every later one is wrong)
"""

import ctypes
import os
import sys
import time

import numpy as np

from broken_impls import correct


def hangs(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
          mask=None):
    time.sleep(3600)


def segfaults(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
              mask=None):
    ctypes.string_at(0)


def calls_sys_exit(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                   dilation=(1, 1), mask=None):
    sys.exit(0)


def calls_os_exit(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1), mask=None):
    os._exit(0)


def complex_output(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                   dilation=(1, 1), mask=None):
    out = correct(input, offset, weight, bias, stride, padding, dilation, mask)
    return out + 1j * np.full(out.shape, 123.0)


def all_nan(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
            mask=None):
    out = correct(input, offset, weight, bias, stride, padding, dilation, mask)
    return np.full_like(out, np.nan)


def strings(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
            mask=None):
    out = correct(input, offset, weight, bias, stride, padding, dilation, mask)
    return np.full(out.shape, "x")


def prints(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           mask=None):
    print("debug output that must not reach the JSON report {")
    return correct(input, offset, weight, bias, stride, padding, dilation, mask)


_BUFFERS = {}


def stateful(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
             mask=None):
    out = correct(input, offset, weight, bias, stride, padding, dilation, mask)
    buffer = _BUFFERS.setdefault((out.shape, out.dtype.str), np.zeros_like(out))
    buffer += out             # the bug: the cached buffer is never zeroed
    return buffer.copy()
