"""Small NumPy neural-network layers with hand-written backward passes.

Enough to train the scaled-MNIST networks of :mod:`refdcn.experiments` (and
so to show end to end that refdcn's deformable-convolution gradients train a
network): :class:`Conv2d`; :class:`DeformConv2d` (torchvision's contract:
offsets and mask passed to ``forward``); :class:`DeformConv2dPack` (DCNv1) and
:class:`ModulatedDeformConv2dPack` (DCNv2), which predict their own offsets
(and sigmoid masks) as mmcv's layers of those names do; :class:`BatchNorm2d`, :class:`ReLU`, :class:`MaxPool2d`,
:class:`GlobalAvgPool2d`, :class:`Linear`, :class:`Sequential`,
:class:`SoftmaxCrossEntropy` and :class:`SGD` (momentum, weight decay,
learning-rate multipliers per parameter group).

Each layer's ``backward`` sits next to its ``forward`` and is checked by
finite differences in ``tests/test_nn.py``.

>>> import numpy as np
>>> from refdcn import nn
>>> rng = np.random.default_rng(0)
>>> net = nn.Sequential(nn.ModulatedDeformConv2dPack(1, 4, 3, padding=1, rng=rng), nn.ReLU(),
...                     nn.GlobalAvgPool2d(), nn.Linear(4, 10, rng=rng))
>>> net(np.ones((2, 1, 8, 8), np.float32)).shape
(2, 10)
"""

from .conv import (CONV_METHODS, Conv2d, DeformConv2d, DeformConv2dPack,
                   ModulatedDeformConv2dPack, sigmoid)
from .layers import BatchNorm2d, GlobalAvgPool2d, Linear, MaxPool2d, ReLU
from .loss import SoftmaxCrossEntropy
from .module import Module, Parameter, Sequential
from .optim import SGD

__all__ = ["Parameter", "Module", "Sequential", "Conv2d", "DeformConv2d", "DeformConv2dPack",
           "ModulatedDeformConv2dPack", "BatchNorm2d", "ReLU",
           "MaxPool2d", "GlobalAvgPool2d", "Linear", "SoftmaxCrossEntropy", "SGD", "sigmoid",
           "CONV_METHODS"]
