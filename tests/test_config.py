"""Config validation: every mistake is reported with its key path and cause, all at once."""
from __future__ import annotations

import json
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
    ("mqtt.keepalive", 1, "mqtt.keepalive: must be an integer from 5 to 3600, got 1"),
    ("sink.type", "kafka", 'sink.type: must be one of stdout, jsonl, mqtt, got "kafka"'),
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
    ("mqtt.enabled", True, "mqtt.broker: is required when mqtt.enabled"),
    ("mqtt.port", "x", 'mqtt.port: must be an integer from 1 to 65535, got "x"'),
    ("mqtt.fleet", "a/b", "mqtt.fleet: must be one topic level"),
    ("mqtt.broker", "http://x", "mqtt.broker: must be a URL mqtt://host[:port]"),
    ("mqtt.protocol", "4", 'mqtt.protocol: must be "5" or "3.1.1"'),
    ("mqtt.chunk_size", 10, "mqtt.chunk_size: must be an integer from 4096"),
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


# ---- check-config against this machine (refitd/preflight.py) ----------------------------------

def _other_user():
    """A user for whom a root-owned 0755 directory is read-only: nobody when we are root (root
    passes every permission check), else ourselves (then the directory is made 0555)."""
    return "nobody" if os.geteuid() == 0 else None


def test_check_config_missing_model_is_a_problem(tmp_path):
    raw = base_config(str(tmp_path), model=str(tmp_path / "nope.onnx"))
    path = write_config(str(tmp_path), raw)
    r = run_cli("check-config", path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "refitd: %s: model.path: no such file: %s\n" % (path, tmp_path / "nope.onnx")
    # --file-only validates the file alone (a config written for another box)
    r = run_cli("check-config", "--file-only", path)
    assert r.returncode == 0 and "OK (file only;" in r.stdout


def test_check_config_model_that_does_not_open_and_checks_that_do_not_fit(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not ONNX")
    raw = base_config(str(tmp_path), model=str(bad))
    path = write_config(str(tmp_path), raw)
    r = run_cli("check-config", path)
    assert r.returncode == 2
    assert r.stderr.startswith("refitd: %s: model.path: the engine cannot open %s on backend reference: " % (path, bad))
    assert len(r.stderr.splitlines()) == 1
    raw = base_config(str(tmp_path), health={"checks": [{"type": "finite", "inputs": {"z": 1.0}}]})
    raw["model"]["name_map"] = {"features.0.weight": "conv.wieght"}
    path = write_config(str(tmp_path), raw)
    r = run_cli("check-config", path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "refitd: %s: 2 problems" % path,
        '  model.name_map: features.0.weight maps to conv.wieght, which is not a refittable weight of the model',
        '  health.checks: health check 1 (finite): "z" is not an input of the model (inputs: x)']


def test_check_config_directories_writable_by_the_daemons_user():
    import shutil
    import tempfile
    base = tempfile.mkdtemp(prefix="rfd-perm", dir="/tmp")  # /tmp, not pytest's 0700 tree
    ro, rw = os.path.join(base, "ro"), os.path.join(base, "rw")
    try:
        os.chmod(base, 0o755)
        os.makedirs(os.path.join(ro, "in"))
        os.mkdir(rw)
        os.chmod(rw, 0o777)
        model = shutil.copy(C.demo_model_path(), os.path.join(base, "model.onnx"))
        os.chmod(model, 0o644)
        raw = base_config(rw, model=model)
        raw["store"]["path"] = os.path.join(ro, "store")        # cannot be created
        raw["watch"]["path"] = os.path.join(ro, "in")           # exists, not writable
        raw["sink"]["path"] = os.path.join(ro, "results.jsonl")  # cannot be created
        path = write_config(base, raw)
        user = _other_user()
        if user is None:
            for d in (ro, os.path.join(ro, "in")):
                os.chmod(d, 0o555)
        args = ["check-config", path] + (["--user", user] if user else [])
        r = run_cli(*args)
        assert r.returncode == 2, r.stdout
        who = user or __import__("pwd").getpwuid(os.geteuid()).pw_name
        mode = "755" if user else "555"
        assert r.stderr.splitlines() == [
            "refitd: %s: 3 problems" % path,
            "  store.path: user %s cannot create %s/store (in %s) (mode %s, owner %s)" % (who, ro, ro, mode, _owner(ro)),
            "  watch.path: user %s cannot write to %s/in (mode %s, owner %s)" % (who, ro, mode, _owner(ro)),
            "  sink.path: user %s cannot write to %s (mode %s, owner %s)" % (who, ro, mode, _owner(ro)),
        ], r.stderr
        r = run_cli(*(args + ["--json"]))
        rep = json.loads(r.stdout)
        assert r.returncode == 2 and rep["ok"] is False and rep["config"]["user"] == who
        assert [p["key"] for p in rep["problems"]] == ["store.path", "watch.path", "sink.path"]
        assert rep["model"]["weights"] == 1
        if user:  # the same config checked as root (who may write anywhere) passes
            assert run_cli("check-config", "--user", "root", path).returncode == 0
    finally:
        for d in (ro, os.path.join(ro, "in")):
            if os.path.isdir(d):
                os.chmod(d, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def _owner(path):
    import grp
    import pwd
    st = os.stat(path)
    return "%s:%s" % (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name)


def test_check_config_ok_json(tmp_path):
    path = write_config(str(tmp_path), base_config(str(tmp_path)))
    r = run_cli("check-config", "--json", path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] is True and rep["problems"] == [] and rep["model"]["fingerprint"].startswith("sha256:")
    r = run_cli("check-config", "--json", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and json.loads(r.stdout)["ok"] is False


def test_check_config_counts_the_units_own_directories_as_creatable(tmp_path):
    """/run/refitd and /var/lib/refitd do not exist before the service starts (systemd's
    RuntimeDirectory=/StateDirectory= make them for its user): not a problem for that user."""
    import tempfile
    from refitd import preflight
    base = tempfile.mkdtemp(prefix="rfd-unit", dir="/tmp")
    try:
        os.chmod(base, 0o755 if os.geteuid() == 0 else 0o555)
        run_dir = os.path.join(base, "run-refitd")
        raw = base_config(str(tmp_path))
        raw["control"]["socket"] = os.path.join(run_dir, "control.sock")
        cfg = C.parse_config(raw)
        user = preflight.lookup_user("nobody" if os.geteuid() == 0 else preflight.default_user())
        problems, _ = preflight.check_machine(cfg, user, unit_dirs=())
        assert [(p.path, p.message.split(" (")[0]) for p in problems if p.path == "control.socket"] == [
            ("control.socket", "user %s cannot create %s" % (user.name, run_dir))]
        problems, _ = preflight.check_machine(cfg, user, unit_dirs=(run_dir,))
        assert [p for p in problems if p.path == "control.socket"] == []
    finally:
        os.chmod(base, 0o755)
        os.rmdir(base)


def test_check_config_store_of_another_model(tmp_path):
    """The box's path: install.sh serves the demo model, the service makes a store for it, the
    operator puts their own model in place. The daemon would refuse the old store at start;
    check-config says so first."""
    from conftest import clip_scalar_model
    from refitd.store import committed_model
    state = str(tmp_path)
    raw = base_config(state)
    raw["store"]["path"] = os.path.join(state, "store")
    path = write_config(state, raw)
    assert committed_model(raw["store"]["path"]) is None
    from daemon_helpers import DaemonProc
    d = DaemonProc(path, raw["control"]["socket"]).start()  # makes the store for the demo model
    d.stop()
    assert committed_model(raw["store"]["path"]) == (0, fingerprint_of(C.demo_model_path()))
    assert run_cli("check-config", path).returncode == 0
    raw["model"]["path"] = str(clip_scalar_model(tmp_path / "mine.onnx"))
    path = write_config(state, raw)
    r = run_cli("check-config", path)
    assert r.returncode == 2
    assert r.stderr.startswith("refitd: %s: store.path: %s holds version 0 of another model (sha256:" % (
        path, raw["store"]["path"])) and "point store.path at a fresh directory" in r.stderr, r.stderr


def fingerprint_of(model):
    from daemon_helpers import fingerprint
    return fingerprint(model)
