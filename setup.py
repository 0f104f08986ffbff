"""Builds the Cython extensions in ext/ into the router package.

Each ``ext/_NAME.pyx`` becomes ``PACKAGE._NAME_c`` beside its pure-Python twin
``PACKAGE/_NAME_py.py``: the frame scanner belongs to the protocol kernel
(``router.proto``), the others to ``router``. ``ROUTER_CYTHON_DEBUG=1`` builds with annotation and
line tracing for profiling.
"""

from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("ROUTER_CYTHON_DEBUG") == "1"
#: Where each extension lives when not in ``router``: beside its twin.
PACKAGE = {"_framing": "router.proto"}

extensions = [
    Extension(
        f"{PACKAGE.get(pyx.stem, 'router')}.{pyx.stem}_c",
        [str(pyx)],
        extra_compile_args=["-O3"],
        define_macros=[("CYTHON_TRACE", "1")] if DEBUG else [],
    )
    for pyx in sorted(Path("ext").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["ext"],
        annotate=DEBUG,
        compiler_directives={"language_level": "3", "linetrace": DEBUG, "embedsignature": True},
    ),
)
