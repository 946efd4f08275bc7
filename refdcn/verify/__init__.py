"""The verifier: check any implementation of deformable convolution against refdcn.

* :mod:`~refdcn.verify.adapters` - how to run torchvision, ONNX Runtime, the ONNX
  reference evaluator, mmcv, refdcn's backends or a user function on a case;
* :mod:`~refdcn.verify.measure` - errors and the pass criterion (from
  :mod:`refdcn.tolerances`);
* :mod:`~refdcn.verify.variants` - the known alternative conventions, each a
  variant of the reference;
* :mod:`~refdcn.verify.diagnosis` - where a failing case is wrong, what is sampled
  there and which alternative convention explains it;
* :mod:`~refdcn.verify.runner` - runs the conformance cases -> a report;
* :mod:`~refdcn.verify.report` - text and JSON renderings.

>>> from refdcn.verify import verify_implementation
>>> report = verify_implementation("refdcn:numpy", case="onnx")
>>> report.exit_code()
0
"""

import numpy as np

from .. import conformance
from .adapters import AdapterUnavailable, Implementation, resolve
from .measure import Tolerance
from .runner import Report, verify

__all__ = ["verify_implementation", "resolve", "verify", "Report", "Tolerance",
           "Implementation", "AdapterUnavailable"]


def verify_implementation(impl, case=None, dtype=np.float64, convention=None, rtol=None,
                          backward=None, gradients=True, strict=False, isolate=False,
                          timeout=None):
    """Verify an implementation (a name as accepted by :func:`resolve`, or an
    :class:`Implementation`) on the conformance cases whose name contains ``case``.

    ``strict`` selects the strict float32 tier; ``isolate`` runs a named
    implementation in a child process with ``timeout`` seconds per case
    (:class:`~refdcn.verify.isolation.Isolated`), as ``refdcn verify`` does.
    """
    if isinstance(impl, str):
        if isolate:
            from .isolation import DEFAULT_TIMEOUT, Isolated
            impl = Isolated(impl, backward, timeout=timeout or DEFAULT_TIMEOUT)
        else:
            impl = resolve(impl, backward)
    return verify(impl, conformance.select(case), dtype, convention,
                  Tolerance(dtype, rtol, strict), gradients)
