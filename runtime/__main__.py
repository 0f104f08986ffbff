"""``python -m runtime``: a worker process, started and supervised by the router (router/replica.py).

``python -m runtime validate ...`` checks a model version in a throwaway process instead
(:mod:`runtime.validate`; ``--help`` documents it). Both import torch only once they know
which they are: the validate supervisor never does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import WorkerSpec


def parse_args(argv: list[str] | None = None) -> WorkerSpec:
    from .codecs.requests import NONFINITE
    from .worker import WorkerSpec

    p = argparse.ArgumentParser(prog="python -m runtime", description="model-router worker (started by the router)",
                                epilog="python -m runtime validate --help: check a model version instead")
    p.add_argument("--fd", type=int, required=True, help="connected Unix socket to the router")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cpus", default="", help="comma-separated CPU numbers; empty = all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-delay-us", type=int, default=0)
    p.add_argument("--max-frame", type=int, default=16 * 1024 * 1024 + 1024)
    p.add_argument("--no-optimize", action="store_true", help="skip optimize_for_inference")
    p.add_argument("--nonfinite", choices=NONFINITE, default="reject",
                   help="NaN and infinities in FP inputs: 400 (reject) or passed to the model (allow)")
    p.add_argument("--drift", default="", help='drift monitoring, as JSON: {"enabled": true, "reference_rows": '
                   '1000, ...} (the keys of [models.drift]); empty: none')
    a = p.parse_args(argv)
    return WorkerSpec(
        fd=a.fd, parent_pid=a.parent_pid, model_dir=a.model_dir, name=a.name, version=a.version,
        device=a.device, cpus=tuple(int(c) for c in a.cpus.split(",") if c), threads=a.threads,
        max_batch_size=a.max_batch_size, max_batch_delay_us=a.max_batch_delay_us, max_frame=a.max_frame,
        optimize=not a.no_optimize, nonfinite=a.nonfinite, drift=a.drift,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["validate"]:
        from .validate import main as validate

        logging.basicConfig(level=os.environ.get("ROUTER_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)-5s validate[%(process)d] %(message)s", stream=sys.stderr)
        return validate(argv[1:])
    spec = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("ROUTER_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s %(levelname)-5s worker {spec.name}/{spec.version}[%(process)d] %(message)s",
        stream=sys.stderr,
    )
    from .worker import run

    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
