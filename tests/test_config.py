"""Config validation: every mistake is reported with its key path and cause, all at once."""
from __future__ import annotations

import os

import pytest
import yaml

from daemon_helpers import ROOT, base_config, run_cli, write_config

from refitd import config as C


def _problems(raw, tmp_path=None):
    with pytest.raises(C.ConfigError) as ei:
        C.parse_config(raw, origin="t.yaml", base_dir=str(tmp_path) if tmp_path else None)
    return [str(p) for p in ei.value.problems]


def _set(d, dotted, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if value is _DEL:
        d.pop(keys[-1], None)
    else:
        d[keys[-1]] = value


_DEL = object()

# (key path to change, new value, expected problem text)
CASES = [
    ("store.keep", "three", 'store.keep: must be an integer >= 1, got "three"'),
    ("store.keep", 0, "store.keep: must be an integer >= 1, got 0"),
    ("store.keep", True, "store.keep: must be an integer >= 1, got true"),
    ("store.keep", 2.5, "store.keep: must be an integer >= 1, got 2.5"),
    ("store.max_package_bytes", -1, "store.max_package_bytes: must be an integer >= 1, got -1"),
    ("store.path", "", "store.path: must be a path (a non-empty string)"),
    ("store.path", _DEL, "store.path: is required"),
    ("store.kep", 3, 'store.kep: unknown key (did you mean "keep"?)'),
    ("model.path", _DEL, "model.path: is required"),
    ("model.path", 12, "model.path: must be a path (a non-empty string), got 12"),
    ("model.backend", "", "model.backend: must be a non-empty string"),
    ("model.backnd", "reference", 'model.backnd: unknown key (did you mean "backend"?)'),
    ("model.options.refittable", 3, "model.options.refittable: must be a non-empty list of weight names"),
    ("model.options.input_shape", {"x": [1, 0]}, "model.options.input_shape.x: must be a list of integers >= 1"),
    ("model.options.allow_nonfinite", "yes", 'model.options.allow_nonfinite: must be true or false, got "yes"'),
    ("model.options.initial_version", -2, "model.options.initial_version: must be an integer >= 0, got -2"),
    ("model.options.colour", 1, "model.options.colour: unknown key"),
    ("model.name_map", {"a": 3}, "model.name_map.a: must map a non-empty name to a non-empty name, got 3"),
    ("workers.threads", 0, "workers.threads: must be an integer from 1 to 256, got 0"),
    ("workers.threads", "4", 'workers.threads: must be an integer from 1 to 256, got "4"'),
    ("source.type", "synthetc", 'source.type: must be one of synthetic, npy-dir, socket, got "synthetc" (did you mean "synthetic"?)'),
    ("source.rate", -1, "source.rate: must be a number >= 0, got -1"),
    ("source.fill", "twos", 'source.fill: must be "ones", "zeros", "random" or a number, got "twos"'),
    ("source.path", "/tmp/x", "source.path: unknown key"),
    ("sink.type", "mqtt", 'sink.type: "mqtt" comes with MQTT support (not available yet)'),
    ("sink.type", "kafka", 'sink.type: must be one of stdout, jsonl, got "kafka"'),
    ("sink.every", "often", 'sink.every: must be a number >= 0, got "often"'),
    ("watch.path", 5, "watch.path: must be a path (a non-empty string), got 5"),
    ("watch.paht", "/x", 'watch.paht: unknown key (did you mean "path"?)'),
    ("health.checks", "finite", 'health.checks: must be a list of checks, got "finite"'),
    ("health.checks", [{"type": "golden", "inputs": {"x": 1.0}}], "health.checks[0].expect: is required"),
    ("health.checks", [{"type": "golden", "inputs": {"x": "ones"}, "expect": {"y": 0}}],
     'health.checks[0].inputs.x: must be a number, a nested list, or a .npy path, got "ones"'),
    ("health.checks", [{"type": "range"}], "health.checks[0]: a range check needs min, max or both"),
    ("health.checks", [{"type": "range", "min": 5, "max": 1}], "health.checks[0].min: must be <= max (5 > 1)"),
    ("health.checks", [{"type": "finit"}], 'health.checks[0].type: must be one of golden, finite, range, got "finit" (did you mean "finite"?)'),
    ("health.checks", [{"type": "finite", "atol": 1}], "health.checks[0].atol: unknown key"),
    ("health.window.max_bad_share", 2, "health.window.max_bad_share: must be a number >= 0 and <= 1, got 2"),
    ("health.window.seconds", "10s", 'health.window.seconds: must be a number >= 0, got "10s"'),
    ("health.window.rollback", "no", 'health.window.rollback: must be true or false, got "no"'),
    ("health.extra", 1, "health.extra: unknown key"),
    ("control.socket", _DEL, "control.socket: is required"),
    ("control.socket", "/tmp/" + "s" * 120, "control.socket: is 125 bytes long; Unix socket paths are limited to 107 bytes"),
    ("control.mode", "999", 'control.mode: must be a file mode such as "0660", got "999"'),
    ("log.format", "xml", 'log.format: must be one of text, json, got "xml"'),
    ("log.level", "verbose", 'log.level: must be one of debug, info, warning, error, got "verbose"'),
    ("metrics.listen", "0.0.0.0:9100", 'metrics.listen: must be a loopback address like "127.0.0.1:9108"'),
    ("metrics.listen", "127.0.0.1:99999", "metrics.listen: port must be from 1 to 65535, got 99999"),
    ("mqtt.enabled", True, "mqtt.enabled: MQTT fleet updates are not available yet"),
    ("mqtt.port", "x", 'mqtt.port: must be an integer from 1 to 65535, got "x"'),
    ("mqtt.brokr", "x", "mqtt.brokr: unknown key"),
    ("security.require_signature", True, "security.trusted_keys: signatures are required on cli, file, mqtt but no key is trusted"),
    ("security.require_signature", ["ftp"], "security.require_signature: must be true, false, null or a list of channels (cli, file, mqtt)"),
    ("security.trusted_keys", "k.pem", 'security.trusted_keys: must map key ids to public keys (ed25519:<base64>), got "k.pem"'),
    ("security.trusted_keys", {"abc": "ed25519:" + "A" * 43 + "="}, "security.trusted_keys.abc: this key's id is "),
    ("security.trusted_keys", {"abc": "rsa:xyz"}, "security.trusted_keys.abc: a public key must look like ed25519:<base64 of 32 bytes>"),
    ("security.threshold", 0, "security.threshold: must be an integer >= 1, got 0"),
    ("security.command_window", 0, "security.command_window: must be a number > 0, got 0"),
    ("sourse", {"type": "synthetic"}, 'sourse: unknown section (did you mean "source"?)'),
]


@pytest.mark.parametrize("key,value,expected", CASES, ids=[c[0] + "=" + repr(c[1])[:20] for c in CASES])
def test_each_mistake_names_key_and_cause(tmp_path, key, value, expected):
    raw = base_config(str(tmp_path))
    _set(raw, key, value)
    problems = _problems(raw)
    assert any(p.startswith(expected) for p in problems), problems
    assert len(problems) == 1, problems  # one mistake, one problem (no cascades)


def test_valid_base_config_and_defaults(tmp_path):
    cfg = C.parse_config(base_config(str(tmp_path)))
    assert cfg.store.keep == 3 and cfg.workers.threads == 2
    assert cfg.control.mode == 0o660
    assert cfg.source.type == "synthetic" and cfg.sink.type == "jsonl"
    assert isinstance(cfg.health.checks[0], C.FiniteCheck)
    assert cfg.health.window.seconds == 0.0  # window off by default


def test_every_problem_reported_at_once_with_lines(tmp_path):
    text = """\
model:
  path: m.onnx
  backnd: x
workers: {threads: 0}
source: {type: synthetic, rate: fast}
store:
  path: /tmp/s
  keep: three
control: {socket: /tmp/c.sock}
log: {format: xml}
"""
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(str(p))
    report = str(ei.value)
    assert report.startswith("%s: 5 problems" % p)
    lines = report.splitlines()[1:]
    assert lines == [
        '  model.backnd: unknown key (did you mean "backend"?) (line 3)',
        "  workers.threads: must be an integer from 1 to 256, got 0 (line 4)",
        '  source.rate: must be a number >= 0, got "fast" (line 5)',
        '  store.keep: must be an integer >= 1, got "three" (line 8)',
        '  log.format: must be one of text, json, got "xml" (line 10)',
    ]


def test_missing_sections_all_reported():
    problems = _problems({})
    assert any(p.startswith("model: is required") for p in problems)
    assert any(p.startswith("store: is required") for p in problems)
    assert any(p.startswith("control: is required") for p in problems)


def test_malformed_yaml_reports_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("model:\n  path: m.onnx\nstore: [1, 2\ncontrol: {}\n")
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(str(p))
    msg = str(ei.value)
    assert msg.startswith("%s:" % p) and "malformed YAML" in msg
    line = int(msg.split(":")[1])
    assert line in (3, 4, 5), msg


def test_duplicate_key_is_an_error(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(yaml.safe_dump(base_config(str(tmp_path))) + "store: {path: /tmp/other}\n")
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(str(p))
    assert "store: duplicate key (first at line" in str(ei.value)


def test_unreadable_and_non_mapping(tmp_path):
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(str(tmp_path / "nope.yaml"))
    assert "cannot read" in str(ei.value) and "No such file" in str(ei.value)
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(str(p))
    assert "must be a mapping of sections" in str(ei.value)


def test_relative_paths_resolve_against_config_dir(tmp_path):
    raw = base_config(str(tmp_path))
    raw["store"]["path"] = "state/store"
    raw["model"]["path"] = "models/m.onnx"
    p = write_config(str(tmp_path), raw)
    cfg = C.load_config(p)
    assert cfg.store.path == str(tmp_path / "state" / "store")
    assert cfg.model.path == str(tmp_path / "models" / "m.onnx")


def test_same_path_twice_and_watch_inside_store(tmp_path):
    raw = base_config(str(tmp_path))
    raw["watch"]["path"] = raw["store"]["path"]
    problems = _problems(raw)
    assert any(p.startswith("watch.path: is the same path as store.path") for p in problems), problems
    raw = base_config(str(tmp_path))
    raw["watch"]["path"] = os.path.join(raw["store"]["path"], "in")
    assert any(p.startswith("watch.path: must not be inside store.path") for p in _problems(raw))


def test_mode_and_listen_forms(tmp_path):
    raw = base_config(str(tmp_path))
    raw["control"]["mode"] = "0600"
    raw["metrics"]["listen"] = "localhost:9108"
    cfg = C.parse_config(raw)
    assert cfg.control.mode == 0o600
    assert cfg.metrics.listen == ("localhost", 9108)
    raw["metrics"]["listen"] = "[::1]:9108"
    assert C.parse_config(raw).metrics.listen == ("::1", 9108)


def test_source_registry_types(tmp_path):
    raw = base_config(str(tmp_path))
    raw["source"] = {"type": "npy-dir", "path": str(tmp_path / "inputs")}
    assert isinstance(C.parse_config(raw).source, C.NpyDirSourceConfig)
    raw["source"] = {"type": "socket", "path": str(tmp_path / "i.sock"), "mode": "0600"}
    s = C.parse_config(raw).source
    assert isinstance(s, C.SocketSourceConfig) and s.mode == 0o600
    raw["source"] = {"type": "npy-dir"}
    assert any(p.startswith("source.path: is required") for p in _problems(raw))


def test_demo_config_roundtrips(tmp_path):
    cfg = C.demo_config(str(tmp_path))
    assert os.path.exists(cfg.model.path)
    assert cfg.store.path.startswith(str(tmp_path))
    again = C.parse_config(C.config_to_dict(cfg))
    assert again == dataclass_without_origin(cfg, again)


def dataclass_without_origin(a, b):
    import dataclasses
    return dataclasses.replace(a, origin=b.origin)


def test_default_state_dir_honours_xdg(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "/var/tmp/xdg")
    assert C.default_state_dir() == "/var/tmp/xdg/refitd"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert C.default_state_dir() == os.path.join(os.path.expanduser("~"), ".local", "state", "refitd")


def test_annotated_example_config_is_valid_and_complete():
    path = ROOT / "config" / "refitd.yaml"
    cfg = C.load_config(str(path))
    text = path.read_text()
    # every section and every key of every section appears in the example
    import dataclasses
    for section in C.SECTIONS:
        assert "\n%s:" % section in "\n" + text, section
        obj = getattr(cfg, section)
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if f.name == "type":
                    continue
                assert (" %s:" % f.name) in text, "%s.%s missing from config/refitd.yaml" % (section, f.name)


def test_check_config_cli(tmp_path):
    good = write_config(str(tmp_path), base_config(str(tmp_path)), "good.yaml")
    r = run_cli("check-config", good)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    raw = base_config(str(tmp_path))
    raw["store"]["keep"] = "three"
    raw["log"]["format"] = "xml"
    bad = write_config(str(tmp_path), raw, "bad.yaml")
    r = run_cli("check-config", bad)
    assert r.returncode == 2
    assert "2 problems" in r.stderr
    assert 'store.keep: must be an integer >= 1, got "three"' in r.stderr
    assert 'log.format: must be one of text, json, got "xml"' in r.stderr
    r = run_cli("check-config", "--print", good)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["store"]["keep"] == 3


def test_every_field_has_a_description_in_the_schema():
    """The descriptions pydantic carries (schema.describe) are what the annotated example and
    the docs are checked against: none may be empty."""
    import dataclasses

    from refitd import schema
    cfg = C.load_config(str(ROOT / "config" / "refitd.yaml"))
    seen = 0
    for section in C.SECTIONS:
        obj = getattr(cfg, section)
        for name, doc in schema.describe(type(obj)).items():
            assert doc.strip(), "%s.%s has no description" % (section, name)
            seen += 1
        assert dataclasses.is_dataclass(obj)
    assert seen > 25
    for kind in ("source", "sink", "check"):
        from refitd.plugins import config_types
        for key, cls in config_types(kind).items():
            assert all(d.strip() for d in schema.describe(cls).values()), (kind, key)
