"""The compiled Cython kernels of the ``"cython"`` backend (see refdcn.backends.cython_cpu)."""
