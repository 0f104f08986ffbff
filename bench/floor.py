"""The floor: the least a Python OIP JSON server must do, to compare the router against.

``python -m bench.floor --store DIR --port P fraud/1 mlp-small/1``

One aiohttp application on uvloop (the router's own stack), one process, no
router, no worker, no batching: ``POST /v2/models/{m}/infer`` parses the OIP
JSON body with the stdlib ``json`` (the router's workers use it too), runs the
TorchScript model in the handler (``torch.set_num_threads(1)``, under
``torch.inference_mode``) and writes the same OIP JSON reply. No validation
beyond what indexing does. ``GET /v2/health/ready`` answers 200 once the models
are loaded. The harness pins it with ``taskset -c 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import torch
import uvloop
from aiohttp import web


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def make_app(store: Path, specs: list[str]) -> web.Application:
    models: dict[str, tuple[str, torch.jit.ScriptModule, str, str]] = {}
    for spec in specs:
        name, version = spec.split("/")
        d = store / name / version
        meta = json.loads((d / "meta.json").read_text())
        module = torch.jit.load(str(d / "model.pt"), map_location="cpu").eval()
        out = meta["outputs"][0]
        models[name] = (version, module, out["name"], out["datatype"])

    async def infer(request: web.Request) -> web.Response:
        entry = models.get(request.match_info["model"])
        if entry is None:
            return web.json_response({"error": "unknown model"}, status=404)
        version, module, out_name, out_type = entry
        try:
            body = json.loads(await request.read())
            inp = body["inputs"][0]
            x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return web.Response(status=400, body=_dumps({"error": str(exc)}), content_type="application/json")
        with torch.inference_mode():
            y = module(torch.from_numpy(x)).numpy()
        reply = {"model_name": request.match_info["model"], "model_version": version,
                 "outputs": [{"name": out_name, "datatype": out_type, "shape": list(y.shape),
                              "data": y.reshape(-1).tolist()}]}
        return web.Response(body=_dumps(reply), content_type="application/json")

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
    app = make_app(a.store, a.models)
    try:
        uvloop.run(serve(app, a.host, a.port))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
