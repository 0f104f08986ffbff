"""Benchmarks of model-router: ``python -m bench.load`` (end to end) and ``bench/test_micro.py``.

Not part of the test suite (``testpaths = ["tests"]``); see ``bench/RESULTS.md``.
"""
