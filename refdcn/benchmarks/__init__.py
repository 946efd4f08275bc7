"""Benchmarks of refdcn against its peers (``refdcn bench``).

* :mod:`refdcn.benchmarks.cpu`: the CPU backends beside torchvision and
  onnxruntime, and NumPy's matrix product rate, measured in one run;
* :mod:`refdcn.benchmarks.gpu`: the ``"cuda"`` backend beside torchvision's
  CUDA op (``refdcn bench --backend cuda``).
"""
