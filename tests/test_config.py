"""config.toml validation: every error names the key path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import load_config, parse_config
from router.proto.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def base(**version):
    v = {"version": "1", "weight": 1}
    v.update(version)
    return {"models": [{"name": "m", "versions": [v]}]}


def test_shipped_config_is_valid():
    c = load_config(ROOT / "config.toml")
    fraud = c.model("fraud")
    assert fraud is not None and fraud.routing_key == "x-user-id"
    assert [(v.version, v.weight) for v in fraud.versions] == [("1", 90.0), ("2", 10.0)]
    assert c.store_path == ROOT / "model-store"
    assert str(c.server.http) == "127.0.0.1:8080" and str(c.server.msgpack) == "127.0.0.1:8081"


def test_defaults():
    c = parse_config(base())
    v = c.models[0].versions[0]
    assert (v.replicas, v.device, v.cpus, v.effective_threads, v.max_batch_size, v.max_batch_delay_us) == (
        1, "cpu", (), 1, 32, 0)
    assert c.server.request_timeout_ms == 1000 and c.server.max_body_bytes == 16 * 1024 * 1024
    assert c.server.busy_poll_us == 0  # polling is opt-in: an idle-looking core is what most expect
    assert parse_config({"server": {"busy_poll_us": 250}, **base()}).server.busy_poll_us == 250
    assert parse_config(base(cpus=[0, 1])).models[0].versions[0].effective_threads == 2
    assert parse_config(base(version=3)).models[0].versions[0].version == "3"


@pytest.mark.parametrize("raw,message", [
    (base(weight=-1), "models[0].versions[0].weight: must be >= 0"),
    (base(weight="x"), "models[0].versions[0].weight: must be a number"),
    (base(weight=float("inf")), "models[0].versions[0].weight: must be a finite number"),
    (base(weight=0), "models[0].versions: at least one version needs weight > 0"),
    (base(replicas=0), "models[0].versions[0].replicas: must be >= 1"),
    (base(device="tpu"), "models[0].versions[0].device: must be \"cpu\" or \"cuda:N\""),
    (base(cpus=[999]), "models[0].versions[0].cpus: CPU 999 does not exist"),
    (base(cpus=[0, 0]), "models[0].versions[0].cpus: duplicate"),
    (base(shadow=2), "models[0].versions[0].shadow: must be <= 1.0"),
    (base(shadow=0.5, weight=0, shadow_queue=0), "models[0].versions[0].shadow_queue: must be >= 1"),
    (base(shadow=0.5, weight=1), "a shadow version takes no live traffic"),
    ({"server": {"shadow_priority": "low"}, **base()}, "server.shadow_priority: must be one of 'idle', 'normal'"),
    ({"server": {"shadow_flush_us": -1}, **base()}, "server.shadow_flush_us: must be >= 0"),
    ({"server": {"busy_poll_us": -5}, **base()}, "server.busy_poll_us: must be >= 0"),
    ({"server": {"busy_poll_us": 2_000_000}, **base()}, "server.busy_poll_us: must be <= 1000000"),
    ({"server": {"busy_poll_us": 1.5}, **base()}, "server.busy_poll_us: must be an integer"),
    (base(max_batch_size=0), "models[0].versions[0].max_batch_size: must be >= 1"),
    (base(bogus=1), "models[0].versions[0].bogus: unknown key"),
    (base(optimize="yes"), "models[0].versions[0].optimize: must be true or false"),
    ({"models": []}, "models: must be a non-empty array"),
    ({"models": [{"name": "m", "versions": []}]}, "models[0].versions: must be a non-empty array"),
    ({"models": [{"versions": [{"version": "1"}]}]}, "models[0].name: must be a non-empty string"),
    ({"server": {"http": "nope"}, **base()}, "server.http: must be \"host:port\""),
    ({"server": {"msgpack": "h:99999"}, **base()}, "server.msgpack: port must be in 0..65535"),
    ({"server": {"request_timeout_ms": 0}, **base()}, "server.request_timeout_ms: must be >= 1"),
    ({"server": {"colour": 1}, **base()}, "server.colour: unknown key"),
    ({"stray": 1, **base()}, "stray: unknown key"),
    ({"models": [{"name": "m", "versions": [{"version": "1"}, {"version": "1"}]}]},
     "models[0].versions[1].version: duplicate version '1'"),
])
def test_errors_name_the_key_path(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert message in str(e.value)


def test_toml_syntax_error_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[server\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(p)


def test_relative_store_path_is_relative_to_the_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[store]\npath = "s"\n[[models]]\nname = "m"\n[[models.versions]]\nversion = "1"\n')
    assert load_config(p).store_path == tmp_path / "s"


def test_config_is_frozen():
    c = parse_config(base())
    with pytest.raises(AttributeError):
        c.server.request_timeout_ms = 5  # type: ignore[misc]
