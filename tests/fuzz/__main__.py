"""Run one fuzz target under atheris (libFuzzer), from the repository root.

    python -m tests.fuzz TARGET [CORPUS_DIR ...] [-libfuzzer_flag=value ...]
    python -m tests.fuzz seed        # (re)write the seed inputs into tests/fuzz/corpus/
    python -m tests.fuzz list        # the targets

Without a corpus directory the run reads ``tests/fuzz/corpus/TARGET`` and writes what it finds to
``build/fuzz/TARGET`` (the first directory given is the one libFuzzer writes to), so the committed
corpus only grows through a merge (``make fuzz``). Crash files go to ``build/fuzz/`` unless
``-artifact_prefix`` says otherwise. Every libFuzzer flag works, ``-merge=1`` included. A target's
dictionary (``targets.TOKENS``) is passed as ``-dict`` unless one is given. ``$ROUTER_FUZZ_TMP``
(default ``build/fuzz/tmp``) takes the files the run writes besides those.

The code under test (``router``, ``runtime``, and ``tomllib`` for the config text) is imported
inside atheris's instrumentation, so its branches guide the fuzzer; the compiled extensions are
not instrumented, but each target compares them with their instrumented twins.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
SCRATCH = ROOT / "build" / "fuzz"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    name, args = argv[1], argv[2:]
    if name == "seed":
        from . import seeds

        seeds.write()
        return 0

    import atheris

    # Files the targets and this driver write (the config_toml file, dictionaries): libFuzzer ends the
    # process without Python's atexit, so they go where the caller says, never to a stray temp dir.
    scratch = Path(os.environ.setdefault("ROUTER_FUZZ_TMP", str(SCRATCH / "tmp")))
    scratch.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=["router", "runtime", "tomllib"]):
        from . import targets
    if name == "list":
        print("\n".join(targets.TARGETS))
        return 0
    target = targets.TARGETS.get(name)
    if target is None:
        print(f"unknown target {name!r}; targets: {', '.join(targets.TARGETS)}", file=sys.stderr)
        return 2
    if not any(not a.startswith("-") for a in args):
        (SCRATCH / name).mkdir(parents=True, exist_ok=True)
        args += [str(SCRATCH / name), str(CORPUS / name)]
    if not any(a.startswith("-artifact_prefix=") for a in args):
        SCRATCH.mkdir(parents=True, exist_ok=True)
        args.append(f"-artifact_prefix={SCRATCH}/{name}-")
    tokens = targets.TOKENS.get(name)
    if tokens and not any(a.startswith("-dict=") for a in args):
        args.append(f"-dict={write_dictionary(scratch / f'{name}.dict', tokens)}")
    # libFuzzer runs argv[0] again through the shell for -merge, -fork and -jobs: make it this command.
    program = shlex.join([sys.executable, "-m", "tests.fuzz", name])
    atheris.Setup([program, *args], target)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


def write_dictionary(path: Path, tokens: list[bytes]) -> Path:
    """Write a libFuzzer dictionary (one quoted entry a line, ``\\xNN`` escapes); replaced atomically."""
    lines = ['"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in t) + '"'
             for t in tokens]
    tmp = path.with_suffix(f".{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv))
