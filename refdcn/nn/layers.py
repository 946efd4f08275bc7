"""BatchNorm2d, ReLU, MaxPool2d, global average pooling and Linear."""

import numpy as np

from .module import Module, Parameter, uniform_fan_in

__all__ = ["BatchNorm2d", "ReLU", "MaxPool2d", "GlobalAvgPool2d", "Linear"]


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) for each channel, PyTorch's semantics.

    Training: ``y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta`` with the
    batch mean and the biased batch variance; the running statistics move by
    ``momentum`` towards the batch mean and the *unbiased* batch variance.
    Evaluation: the running statistics replace the batch ones (an affine map).

    Parameters
    ----------
    channels : int
    eps : float (1e-5)
    momentum : float (0.1)
    dtype : float32 or float64

    Shapes: (N, C, H, W) -> (N, C, H, W).  An empty batch (N = 0) gives an
    empty output and leaves the running statistics unchanged, as PyTorch does.
    """

    def __init__(self, channels, eps=1e-5, momentum=0.1, dtype=np.float32, name="bn"):
        self.channels = int(channels)
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = Parameter(np.ones(channels, dtype), f"{name}.weight")
        self.bias = Parameter(np.zeros(channels, dtype), f"{name}.bias")
        self.running_mean = np.zeros(channels, dtype)
        self.running_var = np.ones(channels, dtype)
        self._cache = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm2d expects input of shape (N, {self.channels}, H, W); "
                             f"got {x.shape}")
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if self.training and count == 0:        # PyTorch: nothing to learn from, stats kept
            mean, var = np.zeros_like(self.running_mean), np.ones_like(self.running_var)
            centred = x - mean[:, None, None]
        elif self.training:
            mean = x.mean(axis=(0, 2, 3))
            centred = x - mean[:, None, None]
            var = np.mean(centred * centred, axis=(0, 2, 3))
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean + m * mean
            self.running_var[...] = (1 - m) * self.running_var + m * var * count / max(count - 1, 1)
        else:
            mean, var = self.running_mean, self.running_var
            centred = x - mean[:, None, None]
        inv_std = 1.0 / np.sqrt(var + self.eps)
        x_hat = centred * inv_std[:, None, None]
        self._cache = (x_hat, inv_std, self.training)
        return self.weight.data[:, None, None] * x_hat + self.bias.data[:, None, None]

    def backward(self, grad_output):
        """Training mode: ``dx = gamma*inv_std * (dy - mean(dy) - x_hat*mean(dy*x_hat))``
        (means over N, H, W); evaluation mode: ``dx = gamma*inv_std*dy``."""
        x_hat, inv_std, training = self._cache
        dy = grad_output
        sum_dy = dy.sum(axis=(0, 2, 3))
        sum_dy_xhat = (dy * x_hat).sum(axis=(0, 2, 3))
        self.weight.grad += sum_dy_xhat
        self.bias.grad += sum_dy
        scale = (self.weight.data * inv_std)[:, None, None]
        if not training:
            return scale * dy
        count = max(dy.shape[0] * dy.shape[2] * dy.shape[3], 1)   # N = 0: dy is empty
        return scale * (dy - (sum_dy / count)[:, None, None]
                        - x_hat * (sum_dy_xhat / count)[:, None, None])

    def __repr__(self):
        return f"BatchNorm2d({self.channels})"


class ReLU(Module):
    """``max(x, 0)`` with NaN propagated; the gradient passes where ``x > 0`` or x is NaN.

    As ``torch.relu``: NaN stays NaN (so a diverged network shows a NaN loss
    rather than a finite one), and its backward, which zeroes the gradient
    where the output is ``<= 0``, passes the gradient at NaN.
    """

    def forward(self, x):
        self._blocked = x <= 0          # False for NaN
        return np.where(self._blocked, 0, x).astype(x.dtype, copy=False)

    def backward(self, grad_output):
        return np.where(self._blocked, 0, grad_output).astype(grad_output.dtype, copy=False)


class MaxPool2d(Module):
    """Non-overlapping ``k x k`` max pooling (stride k, no padding, floor mode).

    The gradient goes to the first maximum of each window (PyTorch's choice on
    ties); rows/columns beyond the last whole window get zero gradient.

    Shapes: (N, C, H, W) -> (N, C, H // k, W // k).
    """

    def __init__(self, kernel_size=2):
        self.k = int(kernel_size)
        if self.k < 1:
            raise ValueError(f"kernel_size must be >= 1; got {kernel_size!r}")

    def forward(self, x):
        n, c, h, w = x.shape
        k = self.k
        ho, wo = h // k, w // k
        if ho == 0 or wo == 0:
            raise ValueError(f"MaxPool2d({k}) needs H, W >= {k}; got input shape {x.shape}")
        windows = (x[:, :, :ho * k, :wo * k].reshape(n, c, ho, k, wo, k)
                   .transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, k * k))
        self._argmax = windows.argmax(axis=4)
        self._shape = x.shape
        return np.take_along_axis(windows, self._argmax[..., None], axis=4)[..., 0]

    def backward(self, grad_output):
        n, c, h, w = self._shape
        k = self.k
        ho, wo = h // k, w // k
        g = np.zeros((n, c, ho, wo, k * k), grad_output.dtype)
        np.put_along_axis(g, self._argmax[..., None], grad_output[..., None], axis=4)
        grad = np.zeros(self._shape, grad_output.dtype)
        grad[:, :, :ho * k, :wo * k] = (g.reshape(n, c, ho, wo, k, k).transpose(0, 1, 2, 4, 3, 5)
                                        .reshape(n, c, ho * k, wo * k))
        return grad

    def __repr__(self):
        return f"MaxPool2d({self.k})"


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        self._shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, grad_output):
        n, c, h, w = self._shape
        return np.broadcast_to((grad_output / (h * w))[:, :, None, None], self._shape).copy()


class Linear(Module):
    """``y = x W^T + b`` with W (out, in), PyTorch's default initialisation.

    Shapes: (N, in_features) -> (N, out_features).
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32,
                 name="fc"):
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng() if rng is None else rng
        self.weight = Parameter(uniform_fan_in(rng, (out_features, in_features), in_features,
                                               dtype), f"{name}.weight")
        self.bias = (Parameter(uniform_fan_in(rng, out_features, in_features, dtype),
                               f"{name}.bias") if bias else None)

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects input of shape (N, {self.in_features}); "
                             f"got {x.shape}")
        self._x = x
        y = x @ self.weight.data.T
        return y + self.bias.data if self.bias is not None else y

    def backward(self, grad_output):
        self.weight.grad += grad_output.T @ self._x
        if self.bias is not None:
            self.bias.grad += grad_output.sum(axis=0)
        return grad_output @ self.weight.data

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"
