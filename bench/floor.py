"""The floor: the least a Python inference server must do, to compare the router against.

``python -m bench.floor --store DIR --port P fraud/1 mlp-small/1 mlp-wide/1``

One aiohttp application on uvloop (the router's own stack), one process, no
router, no worker, no batching: ``POST /v2/models/{m}/infer`` decodes the body,
runs the TorchScript model in the handler and writes the reply, in the three
body formats the router serves (``bench/payloads.py``):

* OIP JSON (stdlib ``json``, as the router's workers use);
* the OIP binary tensor extension, recognised by ``Inference-Header-Content-Length``:
  the JSON header is parsed, the tensor is a numpy view of the bytes after it;
  outputs go back as binary data when the request asks (``binary_data_output``);
* msgpack bodies (``Content-Type: application/msgpack``), answered in msgpack.

Each model is loaded as a worker loads it (``bench.inproc.load_module``:
``torch.jit.load``, ``eval``, ``optimize_for_inference``); ``torch.set_num_threads(1)``,
every forward under ``torch.inference_mode``. No validation beyond what
indexing does; only the first input and first output are handled (every demo
model has one of each). ``GET /v2/health/ready`` answers 200 once the models
are loaded. The harness pins it with ``taskset`` to the server core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch
import uvloop
from aiohttp import web

from .inproc import load_module

HCL = "Inference-Header-Content-Length"
_MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")

#: What a handler needs of one model: its version, forward, first output's name and datatype.
Entry = tuple[str, Callable[[torch.Tensor], torch.Tensor], str, str]


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _run(entry: Entry, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return entry[1](torch.from_numpy(x)).numpy()


def infer_json(entry: Entry, model: str, body: bytes) -> web.Response:
    """OIP JSON in, OIP JSON out."""
    version, _, out_name, out_type = entry
    inp = json.loads(body)["inputs"][0]
    y = _run(entry, np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"]))
    reply = {"model_name": model, "model_version": version,
             "outputs": [{"name": out_name, "datatype": out_type, "shape": list(y.shape),
                          "data": y.reshape(-1).tolist()}]}
    return web.Response(body=_dumps(reply), content_type="application/json")


def infer_binary(entry: Entry, model: str, body: bytes, hlen: int) -> web.Response:
    """OIP binary tensor extension: JSON header + raw input bytes in; binary (or JSON) outputs out."""
    version, _, out_name, out_type = entry
    head = json.loads(body[:hlen])
    inp = head["inputs"][0]
    count = inp["parameters"]["binary_data_size"] // 4
    # The header has any length, so the data may be misaligned for float32: copy then.
    x = np.frombuffer(body, dtype="<f4", count=count, offset=hlen).reshape(inp["shape"])
    if not x.flags.aligned:
        x = x.copy()
    y = _run(entry, x)
    out: dict[str, Any] = {"name": out_name, "datatype": out_type, "shape": list(y.shape)}
    if not (head.get("parameters") or {}).get("binary_data_output"):
        out["data"] = y.reshape(-1).tolist()
        return web.Response(body=_dumps({"model_name": model, "model_version": version, "outputs": [out]}),
                            content_type="application/json")
    raw = np.ascontiguousarray(y, dtype="<f4").tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    reply = _dumps({"model_name": model, "model_version": version, "outputs": [out]})
    return web.Response(body=reply + raw, content_type="application/octet-stream", headers={HCL: str(len(reply))})


def infer_msgpack(entry: Entry, model: str, body: bytes) -> web.Response:
    """The msgpack inference body in, a msgpack response out."""
    version, _, out_name, out_type = entry
    inp = next(iter(msgpack.unpackb(body)["inputs"].values()))
    x = np.frombuffer(inp["data"], dtype="<f4").reshape(inp["shape"])
    y = _run(entry, x)
    reply = {"model_name": model, "model_version": version,
             "outputs": {out_name: {"datatype": out_type, "shape": list(y.shape),
                                    "data": np.ascontiguousarray(y, dtype="<f4").tobytes()}}}
    return web.Response(body=msgpack.packb(reply), content_type="application/msgpack")


def make_app(store: Path, specs: list[str]) -> web.Application:
    """The floor's application serving ``MODEL/VERSION`` specs from ``store``."""
    models: dict[str, Entry] = {}
    for spec in specs:
        name, version = spec.split("/")
        d = store / name / version
        meta = json.loads((d / "meta.json").read_text())
        module = load_module(d / "model.pt")
        out = meta["outputs"][0]
        models[name] = (version, module.forward, out["name"], out["datatype"])

    async def infer(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        entry = models.get(model)
        if entry is None:
            return web.json_response({"error": "unknown model"}, status=404)
        body = await request.read()
        hcl = request.headers.get(HCL)
        try:
            if hcl is not None:
                return infer_binary(entry, model, body, int(hcl))
            if request.headers.get("Content-Type", "").startswith(_MSGPACK_TYPES):
                return infer_msgpack(entry, model, body)
            return infer_json(entry, model, body)
        except (ValueError, KeyError, IndexError, TypeError, StopIteration, msgpack.UnpackException) as exc:
            return web.Response(status=400, body=_dumps({"error": str(exc)}), content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)  # SIGTERM's default action ends the process
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("models", nargs="+", metavar="MODEL/VERSION")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    # Binary and msgpack inputs are read-only views of the body, as in the worker: torch
    # only reads them, so its one-time warning would just clutter the log.
    warnings.filterwarnings("ignore", "The given NumPy array is not writable")
    app = make_app(a.store, a.models)
    try:
        uvloop.run(serve(app, a.host, a.port))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
