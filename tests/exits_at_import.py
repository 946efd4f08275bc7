"""A module that ends the process while it is being imported (for the isolation tests)."""

import os

os._exit(0)


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1), mask=None):
    raise AssertionError("never reached")
