"""CUDA workers (``device = "cuda:N"``): run only where a GPU is present."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.daemon,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_cuda_worker_serves_the_same_answers_as_cpu(start_daemon, store):
    models = [
        {"name": "fraud", "versions": [{"version": "1", "device": "cuda:0"}]},
        {"name": "mlp-wide", "versions": [{"version": "1", "device": "cuda:0", "max_batch_size": 64,
                                           "max_batch_delay_us": 2000}]},
    ]
    d = start_daemon(models)
    rng = np.random.default_rng(3)
    for model, name, width in (("fraud", "features", 8), ("mlp-wide", "x", 256)):
        x = rng.normal(size=(5, width)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": name, "shape": [5, width], "datatype": "FP32",
                                       "data": x.tolist()}]}).encode()
        status, _, raw = d.post(f"/v2/models/{model}/infer", body)
        assert status == 200, raw
        out = json.loads(raw)["outputs"][0]
        got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
        m = torch.jit.load(str(store / model / "1" / "model.pt"))
        with torch.inference_mode():
            expected = m(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert "on cuda:0" in d.log
    # A CUDA worker reports the bytes its caching allocator holds (after the forwards above: some).
    from test_shadow import metric, scrape, wait_for

    for model in ("fraud", "mlp-wide"):
        wait_for(lambda m=model: metric(scrape(d), "router_worker_device_memory_bytes", model=m) > 0)
