"""Parameters, the layer base class and :class:`Sequential`.

A layer is a :class:`Module` with two methods written side by side:

``forward(x) -> y``
    computes the output and keeps what the backward needs (``self._cache``);
``backward(grad_y) -> grad_x``
    returns the gradient with respect to the input of the *last* forward and
    **adds** the gradients of its parameters to ``param.grad``.

There is no automatic differentiation: every backward is written by hand
next to its forward and checked against finite differences in
``tests/test_nn.py``.  Arrays are NumPy arrays in the layer's dtype
(float32 for training, float64 for gradient checks).
"""

import numpy as np

__all__ = ["Parameter", "Module", "Sequential", "uniform_fan_in"]


class Parameter:
    """A trainable array with its gradient and optimiser settings.

    Attributes
    ----------
    data : ndarray
        The value (updated in place by the optimiser).
    grad : ndarray
        Accumulated gradient, same shape and dtype as ``data``.
    name : str
        For messages and tables.
    lr_mult : float
        Learning-rate multiplier (the optimiser uses ``lr * lr_mult``); 0.1
        for the offset and mask convolutions of the scaled-MNIST experiment's
        :class:`refdcn.nn.ModulatedDeformConv2dPack` layers.
    """

    def __init__(self, data, name="", lr_mult=1.0):
        self.data = data
        self.grad = np.zeros_like(data)
        self.name = name
        self.lr_mult = float(lr_mult)

    @property
    def size(self):
        return self.data.size

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return (f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype}, "
                f"lr_mult={self.lr_mult})")


def uniform_fan_in(rng, shape, fan_in, dtype):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's default for Conv2d and Linear.

    (``kaiming_uniform_(a=sqrt(5))`` for weights and the same bound for biases.)
    """
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Module:
    """Base class: parameters, sub-layers, train/eval mode.

    Subclasses define ``forward`` and ``backward``.  Parameters are the
    attributes that are :class:`Parameter` instances; sub-layers are the
    attributes that are :class:`Module` instances (and the items of
    :class:`Sequential`), visited in attribute order.
    """

    training = True

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    def children(self):
        return [v for v in vars(self).values() if isinstance(v, Module)]

    def parameters(self):
        """All parameters of this layer and its sub-layers (each once)."""
        params = [v for v in vars(self).values() if isinstance(v, Parameter)]
        for child in self.children():
            params += child.parameters()
        seen, unique = set(), []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        return unique

    def num_parameters(self):
        """Number of trainable scalars (running statistics are not parameters)."""
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode=True):
        """Training mode (BatchNorm uses batch statistics); returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (BatchNorm uses running statistics); returns self."""
        return self.train(False)

    def __repr__(self):
        return type(self).__name__ + "()"


class Sequential(Module):
    """Layers applied in order; the backward runs them in reverse."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def children(self):
        return list(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_output):
        for layer in reversed(self.layers):
            grad_output = layer.backward(grad_output)
        return grad_output

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
