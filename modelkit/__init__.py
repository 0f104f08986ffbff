"""Tools for the people who make models: write store versions, build the demo and fixture models.

* :mod:`modelkit.package` -- :func:`package` a trained model (and examples) into one archive
  ready to push (``from modelkit import package``);
* :mod:`modelkit.store` -- write a version into a model store, atomically; check one;
* :mod:`modelkit.demo` -- the demo models (``fraud``, the benchmark MLPs) and the
  demo store (``python -m modelkit.demo``, ``router demo-models``);
* :mod:`modelkit.fixtures` -- models that exist for tests and benchmarks (a slow
  one, a faulty one, shadow candidates);
* :mod:`modelkit.fixture_ops` -- the TorchScript operator the slow fixture calls;
  a worker serving it needs ``ROUTER_WORKER_PRELOAD=modelkit.fixture_ops``.

It imports torch. The router daemon never imports it, and neither do workers,
unless told to preload one of its modules.
"""

from .package import package, package_file

__all__ = ["package", "package_file"]
