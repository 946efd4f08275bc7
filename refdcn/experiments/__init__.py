"""Experiments that train networks with :mod:`refdcn.nn` on refdcn's backends.

* :mod:`refdcn.experiments.scaled_mnist`: the seed experiment, DCN / DCNv2 against
  plain convolutions on randomly scaled MNIST (``refdcn experiment scaled-mnist``).
"""
