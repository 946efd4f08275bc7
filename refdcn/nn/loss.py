"""Softmax cross-entropy, the classification loss."""

import numpy as np

__all__ = ["SoftmaxCrossEntropy", "log_softmax"]


def log_softmax(logits):
    """``log softmax`` along the last axis, shifted by the maximum for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class SoftmaxCrossEntropy:
    """Mean over the batch of ``-log softmax(logits)[label]`` (PyTorch's CrossEntropyLoss).

    ``forward(logits (N, K), labels (N,) int) -> loss`` (a 0-d array in the
    logits' dtype; NaN for N = 0, as PyTorch); labels that are not integers
    (float, bool, strings, NaN) raise TypeError, out-of-range ones ValueError,
    both naming ``labels``; ``backward() -> dL/dlogits = (softmax - onehot) / N``,
    shape (N, K).  ``probabilities`` holds the softmax of the last forward.
    """

    def forward(self, logits, labels):
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class indices (an integer array); got "
                            f"dtype {labels.dtype}" + (" (NaN labels cannot be class indices)"
                                                      if labels.dtype.kind == "f"
                                                      and np.isnan(labels).any() else ""))
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"expected logits (N, K) and labels (N,); got logits "
                             f"{logits.shape} and labels {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}); "
                             f"got range [{labels.min()}, {labels.max()}]")
        logp = log_softmax(logits)
        self.probabilities = np.exp(logp)
        self._labels = labels
        if labels.size == 0:                 # PyTorch's mean over an empty batch: NaN
            return np.array(np.nan, logits.dtype)
        return -np.mean(logp[np.arange(labels.size), labels])

    __call__ = forward

    def backward(self, grad_output=1.0):
        """Gradient with respect to the logits, times the upstream scalar ``grad_output``."""
        n = self._labels.size
        grad = self.probabilities.copy()
        grad[np.arange(n), self._labels] -= 1
        return grad * (np.asarray(grad_output, grad.dtype) / max(n, 1))   # N = 0: empty
