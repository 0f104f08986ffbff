"""Coverage-guided fuzzing (atheris) of the code that reads bytes from the network or a file.

:mod:`.targets` holds one function per target, taking the fuzzer's bytes; ``corpus/<target>/`` the
inputs worth keeping (the seeds of :mod:`.seeds` and what runs found). ``python -m tests.fuzz``
runs one target under libFuzzer (see ``__main__``); ``tests/test_fuzz.py`` replays the corpus and
runs each target briefly. Nothing here is imported at package import: the driver must import the
code under test inside atheris's instrumentation.
"""
