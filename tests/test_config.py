"""config.toml validation: every error names the key path and the reason."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from router.config import (
    TRAFFIC_KEYS,
    AdminConfig,
    Config,
    DriftConfig,
    ModelConfig,
    PredlogConfig,
    ServerConfig,
    StoreConfig,
    VersionConfig,
    load_config,
    parse_config,
    parse_model,
    parse_value,
    parse_version,
    settings,
)
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
    ({"server": {"msgpack": "h:8_080"}, **base()}, "server.msgpack: port must be an integer, got '8_080'"),
    ({"server": {"http": "h:\u0668\u0660"}, **base()}, "server.http: port must be an integer"),
    (base(device="cuda:\u00b2"), "models[0].versions[0].device: must be \"cpu\" or \"cuda:N\""),
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


def test_a_config_path_that_cannot_be_read_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


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


# -- the dataclass fields are the one source of truth ---------------------------------------------

TABLES = [ServerConfig, StoreConfig, AdminConfig, ModelConfig, VersionConfig, DriftConfig, PredlogConfig]


def keys(cls):
    """(key, field, Setting, field type) of every key of a table class."""
    hints = get_type_hints(cls)
    return [(k, f, s, hints[f.name]) for k, (f, s) in settings(cls).items()]


def place(cls, key, value):
    """A valid document with ``key`` of a ``cls`` table set to ``value``, and that key's dotted path."""
    doc: dict[str, Any] = base()
    if cls is VersionConfig:
        # A second version without weight: bounds of weight and shadow are reached without other rules firing.
        doc["models"][0]["versions"].append({"version": "b", "weight": 0, key: value})
        return doc, f"models[0].versions[1].{key}"
    if cls is ModelConfig:
        doc["models"][0][key] = value
        return doc, f"models[0].{key}"
    if cls is DriftConfig:
        doc["models"][0]["drift"] = {key: value}
        return doc, f"models[0].drift.{key}"
    table = cls.TABLE.strip("[]")
    doc[table] = {key: value}
    return doc, f"{table}.{key}"


def read_back(cls, doc, key):
    c = parse_config(doc)
    table = {ServerConfig: c.server, AdminConfig: c.admin, ModelConfig: c.models[0],
             VersionConfig: c.models[0].versions[-1], StoreConfig: c.store, DriftConfig: c.models[0].drift,
             PredlogConfig: c.predlog}[cls]
    return getattr(table, settings(cls)[key][0].name)


def test_defaults_are_what_an_empty_table_parses_to():
    c = parse_config(base())  # no source: paths stay as declared
    parsed = {ServerConfig: c.server, AdminConfig: c.admin, StoreConfig: c.store, PredlogConfig: c.predlog,
              ModelConfig: parse_model({"name": "m", "versions": [{"version": "1"}]}, "m"),
              VersionConfig: parse_version({"version": "1"}, "v"),
              DriftConfig: parse_model({"name": "m", "versions": [{"version": "1"}]}, "m").drift}
    for cls, table in parsed.items():
        for key, f, _, _ in keys(cls):
            if f.default is not MISSING:
                assert getattr(table, f.name) == f.default, f"{cls.__name__}.{key}"
    assert c.server == ServerConfig() and c.admin == AdminConfig() and c.store_path == StoreConfig().path
    assert str(ServerConfig().http) == "127.0.0.1:8080" and str(ServerConfig().msgpack) == "127.0.0.1:8081"
    assert parsed[VersionConfig] == VersionConfig("1") and parsed[ModelConfig].routing_key is None
    # weight's default follows shadow: a shadow takes no live traffic unless told.
    assert parse_version({"version": "1", "shadow": 0.5}, "v").weight == 0


def test_relative_paths_default_to_the_config_directory(tmp_path):
    c = parse_config({"admin": {"token_file": "tok"}, **base()}, tmp_path / "c.toml")
    assert (c.store_path, c.admin.token_file) == (tmp_path / "model-store", tmp_path / "tok")


BOUNDED = [(cls, k) for cls in TABLES for k, _, s, _ in keys(cls) if s.lo is not None or s.hi is not None]


def test_every_number_is_bounded_below():
    numbers = [(k, s) for cls in TABLES for k, _, s, tp in keys(cls) if tp in (int, float)]
    assert len(numbers) > 10 and [k for k, s in numbers if s.lo is None] == []


@pytest.mark.parametrize("cls,key", BOUNDED, ids=[f"{c.__name__}.{k}" for c, k in BOUNDED])
def test_bounds_come_from_the_field(cls, key):
    f, s = settings(cls)[key]
    tp = get_type_hints(cls)[f.name]
    for bound, op, direction in ((s.lo, ">=", -1), (s.hi, "<=", 1)):
        if bound is None:
            continue
        outside = bound + direction if tp is int else math.nextafter(bound, direction * math.inf)
        doc, path = place(cls, key, outside)
        with pytest.raises(ConfigError, match=re.escape(f"{path}: must be {op} {tp(bound)}, got {outside}")):
            parse_config(doc)
        assert read_back(cls, place(cls, key, tp(bound))[0], key) == bound  # the bound itself is allowed


@pytest.mark.parametrize("tp,value,words", [(int, 1.5, "must be an integer"), (float, "x", "must be a number"),
                                            (bool, "yes", "must be true or false")])
def test_types_come_from_the_field(tp, value, words):
    typed = [(cls, k) for cls in TABLES for k, _, s, t in keys(cls) if t is tp and not s.parse]
    assert typed
    for cls, key in typed:
        doc, path = place(cls, key, value)
        with pytest.raises(ConfigError, match=re.escape(f"{path}: {words}, got {value!r}")):
            parse_config(doc)


def test_literal_fields_take_their_choices_from_the_type():
    literals = [(cls, k, get_args(tp)) for cls in TABLES for k, _, _, tp in keys(cls) if get_origin(tp) is Literal]
    assert [k for _, k, _ in literals] == ["shadow_priority", "nonfinite"]
    for cls, key, choices in literals:
        doc, path = place(cls, key, "bogus")
        with pytest.raises(ConfigError) as e:
            parse_config(doc)
        assert str(e.value) == f"{path}: must be one of {', '.join(map(repr, choices))}, got 'bogus'"
        assert [read_back(cls, place(cls, key, c)[0], key) for c in choices] == list(choices)


@pytest.mark.parametrize("cls", TABLES, ids=lambda c: c.__name__)
def test_unknown_key_message_lists_exactly_the_fields(cls):
    doc, path = place(cls, "colour", 1)
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    fields = sorted(f.name for f in dataclasses.fields(cls))
    assert str(e.value) == f"{path}: unknown key (allowed: {', '.join(fields)})"


def test_top_level_keys_are_the_config_fields_but_source():
    assert sorted(settings(Config)) == ["admin", "generation", "models", "predlog", "server", "store"]
    with pytest.raises(ConfigError) as e:
        parse_config({"source": "x", **base()})
    assert str(e.value) == "source: unknown key (allowed: admin, generation, models, predlog, server, store)"


def test_traffic_keys_are_the_live_version_keys():
    assert TRAFFIC_KEYS == frozenset({"weight", "shadow", "shadow_queue"})


def test_control_plane_validates_with_the_loader_rules():
    with pytest.raises(ConfigError, match=re.escape("deploy.versions[0].weight: must be >= 0.0, got -1")):
        parse_version({"version": "1", "weight": -1}, "deploy.versions[0]")
    with pytest.raises(ConfigError, match=re.escape("deploy.versions[0]: a shadow version takes no live traffic, "
                                                    "but version '1' has weight 1;")):
        parse_model({"name": "m", "versions": [{"version": "1", "shadow": 0.5, "weight": 1}]}, "deploy")
    assert parse_value(VersionConfig, "weight", 80, "weights.2") == 80.0
    with pytest.raises(ConfigError, match=re.escape("shadow.3: must be <= 1.0, got 2")):
        parse_value(VersionConfig, "shadow", 2, "shadow.3")
    assert parse_model({"name": "m", "routing_key": "X-User", "versions": [{"version": 7}]}, "m") == ModelConfig(
        "m", "x-user", (VersionConfig("7"),))


# -- docs/config.md lists every key, its default and its bounds -------------------------------------


def doc_rows(heading: str) -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "config.md").read_text()
    assert f"## `{heading}`\n" in text, heading
    section = text.split(f"## `{heading}`\n", 1)[1].split("\n## ", 1)[0]
    rows = (re.match(r"\| `(\w+)` \| (.*?) \| (.*?) \| ", line) for line in section.splitlines())
    return {m[1]: (m[2], m[3]) for m in rows if m}


def plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)  # 10.0 -> 10, as the docs write numbers


def toml_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return plain(v)
    return json.dumps(list(v) if isinstance(v, tuple) else str(v))  # str, Path, Address


@pytest.mark.parametrize("cls", TABLES, ids=lambda c: c.__name__)
def test_docs_list_every_key_with_its_default_and_bounds(cls):
    rows = doc_rows(cls.TABLE)
    assert set(rows) == set(settings(cls))
    for key, f, s, tp in keys(cls):
        kind, default = rows[key]
        assert s.doc, key
        if dataclasses.is_dataclass(tp):  # a table of its own: its keys have their defaults in its section
            assert default == "(defaults below)", key
        elif f.default is not MISSING and f.default is not None:
            assert default.startswith(f"`{toml_literal(f.default)}`"), key
        else:
            assert default == ("none" if type(None) in get_args(tp) else "required"), key
        if s.lo is not None and s.hi is not None:
            assert f"{plain(s.lo)}..{plain(s.hi)}" in kind, key
        elif s.lo is not None:
            assert f">= {plain(s.lo)}" in kind, key
        if get_origin(tp) is Literal:
            assert all(f'`"{c}"`' in kind for c in get_args(tp)), key
