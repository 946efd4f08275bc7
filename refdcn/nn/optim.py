"""Stochastic gradient descent with momentum, weight decay and parameter groups."""

import math

from .module import Parameter

__all__ = ["SGD"]


class SGD:
    """SGD with momentum and L2 weight decay, PyTorch's update rule (dampening 0).

    For each parameter ``p`` of a group with learning-rate multiplier ``mult``::

        g   = p.grad + weight_decay * p.data
        buf = momentum * buf + g            (buf = g at the first step)
        p.data -= lr * mult * buf

    Parameters
    ----------
    params : iterable of Parameter, or of dicts
        Parameters are grouped by their ``lr_mult`` attribute.  A dict is an
        explicit group: ``{"params": [...], "lr_mult": float (default 1),
        "weight_decay": float (default: the optimiser's)}``.
    lr : float
        Base learning rate (> 0).
    momentum : float
        In [0, 1).
    weight_decay : float
        >= 0.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.groups = self._groups(list(params))
        self._buffers = {}

    def _groups(self, items):
        if all(isinstance(p, Parameter) for p in items):
            by_mult = {}
            for p in items:
                by_mult.setdefault(p.lr_mult, []).append(p)
            return [{"params": ps, "lr_mult": m, "weight_decay": self.weight_decay}
                    for m, ps in by_mult.items()]
        groups = []
        for g in items:
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError("params must be Parameters or dicts with a 'params' key; "
                                f"got {type(g).__name__}")
            groups.append({"params": list(g["params"]), "lr_mult": float(g.get("lr_mult", 1.0)),
                           "weight_decay": float(g.get("weight_decay", self.weight_decay))})
        return groups

    def parameters(self):
        return [p for g in self.groups for p in g["params"]]

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def step(self):
        """One update of every parameter from its current ``grad``."""
        for group in self.groups:
            lr = float(self.lr * group["lr_mult"])   # a Python float keeps float32 float32
            wd = group["weight_decay"]
            for p in group["params"]:
                g = p.grad + wd * p.data if wd else p.grad.copy()
                buf = self._buffers.get(id(p))
                if buf is None or self.momentum == 0:
                    buf = g
                else:
                    buf *= self.momentum
                    buf += g
                self._buffers[id(p)] = buf
                p.data -= (lr * buf).astype(p.data.dtype, copy=False)
