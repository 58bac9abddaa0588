"""refitd configuration: one small dataclass per section, validated all at once.

``load_config(path)`` reads YAML and returns a :class:`Config`, or raises :class:`ConfigError`
listing *every* problem found, each naming the key path and the cause::

    /etc/refitd/refitd.yaml: 2 problems
      store.keep: must be an integer >= 1, got "three" (line 14)
      sourse: unknown key (did you mean "source"?) (line 20)

Sections (see ``config/refitd.yaml`` for the annotated example and docs/daemon.md):

  model     path, backend, options, backend_options, name_map
  workers   threads
  source    type synthetic | npy-dir | socket, plus that type's fields
  sink      type stdout | jsonl | mqtt, plus that type's fields
            (source, sink and health check types are plugins, each declared once with its
            config class where it is implemented: plugins.py; SOURCE_TYPES & co. read that)
  store     path, keep, max_package_bytes
  watch     path (or null: no file-drop channel)
  health    checks (golden | finite | range), window (the post-swap watch window)
  control   socket, mode
  log       format text | json, level
  metrics   listen (loopback "127.0.0.1:PORT", or null)
  mqtt      the fleet channel: broker, fleet, group, TLS, credentials, ... (refitd.fleet.settings)
  security  require_signature, trusted_keys, threshold, fleet/group, command_window, state_dir

Relative paths are resolved against the directory of the config file. Every section is optional
except ``model``; ``demo_config(state_dir)`` builds the configuration ``refitd run`` uses when
no config file is given.

Python 3.9: no ``match``, no runtime ``X | Y`` unions.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

__all__ = [
    "Config", "ConfigError", "Problem", "load_config", "parse_config", "demo_config",
    "default_state_dir", "demo_model_path", "config_to_dict", "SOURCE_TYPES", "SINK_TYPES",
    "CHECK_TYPES", "ModelConfig", "WorkersConfig", "SyntheticSourceConfig",
    "NpyDirSourceConfig", "SocketSourceConfig", "StdoutSinkConfig", "JsonlSinkConfig",
    "StoreConfig", "WatchConfig", "HealthConfig", "GoldenCheck", "FiniteCheck", "RangeCheck",
    "WindowConfig", "ControlConfig", "LogConfig", "MetricsConfig", "MqttConfig",
    "SecurityConfig", "SOCKET_PATH_MAX",
]

BACKENDS_KNOWN = ("reference",)  # others may be registered by librefit; checked at engine open
LOG_LEVELS = ("debug", "info", "warning", "error")


from .schema import (SOCKET_PATH_MAX, ConfigError, Problem, _BAD, _Ctx, _build, _build_typed, section,
                     _did_you_mean, _f, _is_int, _show, k_bool, k_choice, k_float,
                     k_backend_options, k_int, k_listen, k_mode, k_path, k_socket_path, k_str, k_str_map)
from .plugins import config_types
from .health import FiniteCheck, GoldenCheck, RangeCheck, check_config  # noqa: F401 (the check configs, re-exported)
from .fleet.settings import MqttSettings as MqttConfig  # noqa: F401 (declared with the fleet channel)
from .runner import (JsonlSinkConfig, NpyDirSourceConfig, SocketSourceConfig,  # noqa: F401
                     StdoutSinkConfig, SyntheticSourceConfig)

def _k_refittable(v, path, ctx):
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, list) and v and all(isinstance(s, str) and s for s in v):
        return v
    ctx.add(path, "must be a non-empty list of weight names (or a comma-separated string), got %s" % _show(v))
    return _BAD


def _k_input_shape(v, path, ctx):
    if isinstance(v, str):  # "x:1x3x224x224;y:1x4"
        out = {}
        for part in v.split(";"):
            name, _, dims = part.partition(":")
            try:
                out[name.strip()] = [int(d) for d in dims.split("x")]
            except ValueError:
                ctx.add(path, 'must look like "x:1x3x224x224", got %s' % _show(v))
                return _BAD
        v = out
    if not isinstance(v, dict) or not v:
        ctx.add(path, "must be a mapping of input name to a list of dims, got %s" % _show(v))
        return _BAD
    out = {}
    for name, dims in v.items():
        if not (isinstance(dims, list) and dims and all(_is_int(d) and d >= 1 for d in dims)):
            ctx.add(path + (str(name),), "must be a list of integers >= 1, got %s" % _show(dims))
            return _BAD
        out[str(name)] = dims
    return out


# ---- sections --------------------------------------------------------------------------------

@section
class ModelOptions:
    """Engine options passed to Engine.open (see docs/design.md)."""
    refittable: Optional[List[str]] = _f(None, _k_refittable, "names of the refittable weights; default: every float initializer", nullable=True)
    input_shape: Optional[Dict[str, List[int]]] = _f(None, _k_input_shape, "fixes symbolic input dims, e.g. {x: [1, 3, 224, 224]}", nullable=True)
    allow_nonfinite: bool = _f(False, k_bool, "accept NaN/Inf in refits")
    initial_version: int = _f(0, k_int(0), "version number of the weights inside the model file")
    strategy: Optional[str] = _f(None, k_choice("swap", "quiesce", "ab"), "refit strategy (docs/engine.md); null = the backend's default", nullable=True)
    # Reference backend debugging (docs/cpu-backend.md): typed, validated spellings of the
    # backend options of the same names (model.backend_options is the one way they reach the
    # backend: backend_options() below).
    profile: Optional[str] = _f(None, k_path, "directory for a per-op profile (trace.json, summary.txt)", nullable=True)
    profile_runs: int = _f(100, k_int(1), "inferences the profile records")
    profile_skip: int = _f(0, k_int(0), "inferences before the profile starts")
    dump: Optional[str] = _f(None, k_path, "directory for every node output of one inference (.npy + index.json)", nullable=True)
    dump_at: int = _f(0, k_int(0), "which inference to dump (0 = the first)")

    def engine_kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = {"allow_nonfinite": self.allow_nonfinite,
                              "initial_version": self.initial_version}
        if self.strategy is not None:
            kw["strategy"] = self.strategy
        if self.refittable is not None:
            kw["refittable"] = list(self.refittable)
        if self.input_shape is not None:
            kw["input_shape"] = {k: tuple(v) for k, v in self.input_shape.items()}
        return kw

    def backend_options(self) -> Dict[str, str]:
        """The profile/dump keys that are set, as the backend options they stand for."""
        out: Dict[str, str] = {}
        if self.profile is not None:
            out.update(profile=self.profile, profile_runs=str(self.profile_runs),
                       profile_skip=str(self.profile_skip))
        if self.dump is not None:
            out.update(dump=self.dump, dump_at=str(self.dump_at))
        return out


@section
class ModelConfig:
    path: str = _f(kind=k_path, doc="the ONNX model file")
    backend: str = _f("reference", k_str, "librefit backend name")
    options: ModelOptions = _f(factory=ModelOptions, doc="engine options")
    backend_options: Dict[str, str] = _f(factory=dict, kind=k_backend_options,
                                         doc="options of the backend (backend.<key>), e.g. magicmind's model, device_ids")
    name_map: Dict[str, str] = _f(factory=dict, kind=k_str_map,
                                  doc="package tensor name -> engine weight name")

    def engine_args(self) -> Dict[str, Any]:
        """``Engine.open(self.path, **engine_args())``: the backend, its options (the typed
        model.options profile/dump keys merged into model.backend_options; ``load`` refuses a
        key given both ways) and the engine options."""
        kw = self.options.engine_kwargs()
        kw["backend"] = self.backend
        kw["backend_options"] = dict(self.options.backend_options(), **self.backend_options)
        return kw


@section
class WorkersConfig:
    threads: int = _f(2, k_int(1, 256), "inference worker threads (one engine context each)")


# Sources: a registry keyed by `type` (Frigate-style). runner.py registers the implementations
# under the same keys.

SOURCE_TYPES: Dict[str, Type] = config_types("source")
SINK_TYPES: Dict[str, Type] = config_types("sink")


@section
class StoreConfig:
    path: str = _f(kind=k_path, doc="directory of the versioned weight store")
    keep: int = _f(5, k_int(1), "newest versions kept (pinned versions are kept too)")
    max_package_bytes: int = _f(1 << 30, k_int(1), "packages larger than this are rejected unread")


@section
class WatchConfig:
    path: Optional[str] = _f(None, k_path, "file-drop directory; null disables the channel", nullable=True)
    keep: int = _f(100, k_int(0), "packages kept in each of applied/ and rejected/ (oldest go first)")
    keep_bytes: int = _f(1 << 30, k_int(0), "bytes kept in each of applied/ and rejected/ (oldest go first)")
    signature_settle: float = _f(0.0, k_float(0.0, 60.0), "seconds a package without NAME.sig waits for one that arrives late")


CHECK_TYPES: Dict[str, Type] = config_types("check")


@section
class WindowConfig:
    """The post-swap watch window: after a swap, results are watched for `seconds`; if the
    share of results with non-finite outputs (or outside `range_min`/`range_max`) exceeds
    `max_bad_share`, the update is rolled back automatically (if `rollback`)."""
    seconds: float = _f(0.0, k_float(0.0), "length of the window after each swap; 0 = off")
    max_bad_share: float = _f(0.0, k_float(0.0, 1.0), "largest tolerated share of bad results")
    min_results: int = _f(1, k_int(1), "results needed before the window can judge")
    range_min: Optional[float] = _f(None, k_float(), "an output value below this is bad", nullable=True)
    range_max: Optional[float] = _f(None, k_float(), "an output value above this is bad", nullable=True)
    rollback: bool = _f(True, k_bool, "roll back automatically when the window fails")
    hook: Optional[str] = _f(None, k_path, "executable run with the version; nonzero exit fails the window", nullable=True)


@section
class HealthConfig:
    checks: List[Any] = _f(factory=list, doc="shadow checks run on new weights before they serve")
    window: WindowConfig = _f(factory=WindowConfig, doc="post-swap watch window")


@section
class ControlConfig:
    socket: str = _f(kind=k_socket_path, doc="control socket path")
    mode: int = _f(0o660, k_mode, "permissions of the control socket")


@section
class LogConfig:
    format: str = _f("text", k_choice("text", "json"), "event line format")
    level: str = _f("info", k_choice(*LOG_LEVELS), "lowest event level written")


@section
class MetricsConfig:
    listen: Optional[Tuple[str, int]] = _f(None, k_listen, "loopback host:port of the Prometheus endpoint; null = off", nullable=True)


def _k_channels(v, path, ctx):
    """``require_signature``: true (every channel), false (none) or a list of channel names."""
    from .trust import CHANNELS
    if isinstance(v, bool):
        return v
    if isinstance(v, list) and all(isinstance(c, str) and c in CHANNELS for c in v):
        return list(v)
    ctx.add(path, "must be true, false, null or a list of channels (%s), got %s"
            % (", ".join(CHANNELS), _show(v)))
    return _BAD


def _k_public_keys(v, path, ctx):
    """``trusted_keys``: key id -> "ed25519:<base64>", each id checked against its key."""
    if not isinstance(v, dict):
        ctx.add(path, "must map key ids to public keys (ed25519:<base64>), got %s" % _show(v))
        return _BAD
    from .signing import SignatureError, parse_public_key
    out = {}
    for kid, text in v.items():
        try:
            got, _ = parse_public_key(text)
        except SignatureError as e:
            ctx.add(path + (str(kid),), str(e))
            continue
        if got != kid:
            ctx.add(path + (str(kid),), "this key's id is %s (refitd keygen prints it)" % got)
            continue
        out[kid] = text.strip()
    return out


@section
class SecurityConfig:
    """Signatures and the defences built on them (docs/security.md)."""
    require_signature: Optional[Any] = _f(None, _k_channels, "channels that accept only signed packages and commands: null = mqtt when enabled, true = all, false = none, or a list of cli, file, mqtt", nullable=True)
    trusted_keys: Dict[str, str] = _f(factory=dict, kind=_k_public_keys, doc="key id -> ed25519:<base64> public key; remove a key to revoke it")
    threshold: int = _f(1, k_int(1), "distinct trusted keys that must sign a package or command")
    fleet: Optional[str] = _f(None, k_str, "this box's fleet: a package signed for another fleet is refused", nullable=True)
    group: Optional[str] = _f(None, k_str, "this box's group: a package signed for another group is refused", nullable=True)
    command_window: float = _f(300.0, k_float(0.0, exclusive_min=True), "seconds a signed command is valid around its issue time (nonces are kept this long)")
    state_dir: Optional[str] = _f(None, k_path, "where the version floor and command nonces persist; null = trust/ beside store.path", nullable=True)


@dataclass
class Config:
    model: ModelConfig
    workers: WorkersConfig
    source: Any  # one of SOURCE_TYPES' classes
    sink: Any    # one of SINK_TYPES' classes
    store: StoreConfig
    watch: WatchConfig
    health: HealthConfig
    control: ControlConfig
    log: LogConfig
    metrics: MetricsConfig
    mqtt: MqttConfig
    security: SecurityConfig
    origin: Optional[str] = None  # the file it was read from, if any

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)


SECTIONS = ("model", "workers", "source", "sink", "store", "watch", "health", "control", "log",
            "metrics", "mqtt", "security")


# ---- parsing ---------------------------------------------------------------------------------

def _build_model(raw, ctx):
    path = ("model",)
    if raw is None:
        ctx.add(path, "is required (the model to serve: path, backend, options)")
        return None
    if not isinstance(raw, dict):
        ctx.add(path, "must be a mapping, got %s" % _show(raw))
        return None
    raw = dict(raw)
    opts_raw = raw.pop("options", None)
    m = _build(ModelConfig, raw, path, ctx, skip=("options",))
    opts = _build(ModelOptions, opts_raw, path + ("options",), ctx)
    if m is None or opts is None:
        return None
    m.options = opts
    return m


def _build_health(raw, ctx):
    path = ("health",)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        ctx.add(path, "must be a mapping, got %s" % _show(raw))
        return None
    for key in raw:
        if key not in ("checks", "window"):
            ctx.add(path + (str(key),), "unknown key%s" % _did_you_mean(key, ("checks", "window")))
    checks_raw = raw.get("checks") or []
    checks = []
    if not isinstance(checks_raw, list):
        ctx.add(path + ("checks",), "must be a list of checks, got %s" % _show(checks_raw))
    else:
        for i, c in enumerate(checks_raw):
            cpath = path + ("checks", "[%d]" % i)
            obj = check_config(c, cpath, ctx)
            if obj is not None:
                checks.append(obj)
    window = _build(WindowConfig, raw.get("window"), path + ("window",), ctx)
    if window is None:
        return None
    return HealthConfig(checks=checks, window=window)


def parse_config(raw: Any, origin: Optional[str] = None,
                 lines: Optional[Dict[Tuple[str, ...], int]] = None,
                 base_dir: Optional[str] = None) -> Config:
    """Validate an already-loaded mapping. Raises ConfigError with every problem."""
    ctx = _Ctx(lines, Path(base_dir) if base_dir else None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([Problem("", "the config must be a mapping of sections, got %s" % _show(raw))], origin)
    for key in raw:
        if key not in SECTIONS:
            ctx.add((str(key),), "unknown section%s" % _did_you_mean(key, SECTIONS))

    model = _build_model(raw.get("model"), ctx)
    workers = _build(WorkersConfig, raw.get("workers"), ("workers",), ctx)
    source = _build_typed(SOURCE_TYPES, raw.get("source"), ("source",), ctx, "synthetic")
    sink = _build_typed(SINK_TYPES, raw.get("sink"), ("sink",), ctx, "stdout")
    store = None
    if raw.get("store") is None:
        ctx.add(("store",), "is required (store.path: where versions are kept)")
    else:
        store = _build(StoreConfig, raw.get("store"), ("store",), ctx)
    watch = _build(WatchConfig, raw.get("watch"), ("watch",), ctx)
    health = _build_health(raw.get("health"), ctx)
    control = None
    if raw.get("control") is None:
        ctx.add(("control",), "is required (control.socket: the CLI's Unix socket)")
    else:
        control = _build(ControlConfig, raw.get("control"), ("control",), ctx)
    log = _build(LogConfig, raw.get("log"), ("log",), ctx)
    metrics = _build(MetricsConfig, raw.get("metrics"), ("metrics",), ctx)
    mqtt = _build(MqttConfig, raw.get("mqtt"), ("mqtt",), ctx)
    security = _build(SecurityConfig, raw.get("security"), ("security",), ctx)

    # Cross-field rules, checked after each section parsed.
    if model is not None:
        for key in sorted(set(model.options.backend_options()) & set(model.backend_options)):
            ctx.add(("model", "backend_options", key), "is also set by model.options (%s); give "
                    "it once" % ("profile" if key.startswith("profile") else "dump"))
    if health is not None:
        w = health.window
        if w.range_min is not None and w.range_max is not None and w.range_min > w.range_max:
            ctx.add(("health", "window", "range_min"), "must be <= range_max")
    if sink is not None and sink.type == "mqtt" and mqtt is not None and not mqtt.enabled:
        ctx.add(("sink", "type"), "mqtt needs mqtt.enabled: true (results go over the fleet channel)")
    if security is not None:
        from .trust import required_channels
        mqtt_ok = not any(p.path.startswith("mqtt") for p in ctx.problems)  # no cascade
        need = required_channels(security.require_signature, bool(mqtt is not None and mqtt.enabled))
        if need and not security.trusted_keys and (mqtt_ok or need != ["mqtt"]):
            ctx.add(("security", "trusted_keys"), "signatures are required on %s but no key is trusted"
                    % ", ".join(need))
        elif security.threshold > max(1, len(security.trusted_keys)):
            ctx.add(("security", "threshold"), "is %d but only %d keys are trusted"
                    % (security.threshold, len(security.trusted_keys)))
    paths: Dict[str, str] = {}
    for key, obj, attr in (("store.path", store, "path"), ("watch.path", watch, "path"),
                           ("control.socket", control, "socket"),
                           ("source.path", source, "path"), ("sink.path", sink, "path")):
        p = getattr(obj, attr, None) if obj is not None else None
        if p is None:
            continue
        p = os.path.normpath(p)
        if p in paths:
            ctx.add(tuple(key.split(".")), "is the same path as %s (%s)" % (paths[p], p))
        else:
            paths[p] = key
    if store is not None and watch is not None and watch.path is not None:
        sp, wp = os.path.normpath(store.path), os.path.normpath(watch.path)
        if wp.startswith(sp + os.sep) or sp.startswith(wp + os.sep):
            ctx.add(("watch", "path"), "must not be inside store.path or contain it")

    if ctx.problems:
        raise ConfigError(ctx.problems, origin)
    return Config(model=model, workers=workers, source=source, sink=sink, store=store,
                  watch=watch, health=health, control=control, log=log, metrics=metrics,
                  mqtt=mqtt, security=security, origin=origin)


def _line_map(text: str) -> Dict[Tuple[str, ...], int]:
    """Key path -> 1-based line, from the YAML node tree (for error messages)."""
    import yaml
    out: Dict[Tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = str(k.value)
                out[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[path + ("[%d]" % i,)] = v.start_mark.line + 1
                walk(v, path + ("[%d]" % i,))

    if root is not None:
        walk(root, ())
    return out


def _load_yaml(text: str, origin: str):
    """Parse YAML; duplicate keys and syntax errors become ConfigError with file:line."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    dups: List[Problem] = []

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for k, _v in node.value:
            key = loader.construct_object(k, deep=deep)
            if isinstance(key, (str, int)) and key in seen:
                dups.append(Problem(str(key), "duplicate key (first at line %d)" % seen[key],
                                    k.start_mark.line + 1))
            elif isinstance(key, (str, int)):
                seen[key] = k.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 (SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        cause = (e.problem or str(e)).strip()
        if e.context:
            cause = "%s %s" % (e.context, cause)
        raise ConfigError([Problem("", "%s:%d: malformed YAML: %s" % (origin, line, cause), None)], origin)
    except yaml.YAMLError as e:
        raise ConfigError([Problem("", "%s: malformed YAML: %s" % (origin, str(e).splitlines()[0]))], origin)
    if dups:
        raise ConfigError(dups, origin)
    return data


def load_config(path: str) -> Config:
    """Read and validate a YAML config file. Raises ConfigError (every problem at once) or
    OSError-derived ConfigError if the file cannot be read."""
    origin = str(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([Problem("", "cannot read %s: %s" % (origin, e.strerror or e))], origin)
    except UnicodeDecodeError as e:
        raise ConfigError([Problem("", "%s is not UTF-8 text: %s" % (origin, e.reason))], origin)
    data = _load_yaml(text, origin)
    base = os.path.dirname(os.path.abspath(path))
    return parse_config(data, origin=origin, lines=_line_map(text), base_dir=base)


# ---- demo config and defaults ----------------------------------------------------------------

def default_state_dir() -> str:
    """A user-writable state directory: $XDG_STATE_HOME/refitd or ~/.local/state/refitd."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "refitd")


def demo_model_path() -> str:
    return str(Path(__file__).resolve().parent / "demo" / "seed_conv.onnx")


def demo_config(state_dir: Optional[str] = None, *, rate: float = 200.0, threads: int = 2,
                every: float = 0.2) -> Config:
    """The configuration ``refitd run`` uses without a config file and ``refitd demo`` starts:
    the bundled seed model on the reference backend, a synthetic source of ones, a stdout sink
    printing about every ``every`` seconds, state (store, drop folder, socket) under
    ``state_dir``. A golden-free health check (finite + range) stands in for shadow checks."""
    state = os.path.abspath(state_dir or default_state_dir())
    raw = {
        "model": {"path": demo_model_path(), "backend": "reference",
                  "options": {"refittable": ["conv.weight"]}},
        "workers": {"threads": threads},
        "source": {"type": "synthetic", "fill": "ones", "rate": rate},
        "sink": {"type": "stdout", "every": every},
        "store": {"path": os.path.join(state, "store"), "keep": 5},
        "watch": {"path": os.path.join(state, "incoming")},
        "health": {"checks": [{"type": "finite"}, {"type": "range", "min": -1000.0, "max": 1000.0}]},
        "control": {"socket": os.path.join(state, "control.sock")},
        "log": {"format": "text", "level": "info"},
        "metrics": {"listen": None},
    }
    return parse_config(raw, origin="(demo config)")


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """A plain mapping that parse_config accepts again (for writing a config file)."""
    def conv(obj):
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, list):
            return [conv(x) for x in obj]
        if isinstance(obj, dict):
            return {k: conv(v) for k, v in obj.items()}
        return obj

    out = {name: conv(getattr(cfg, name)) for name in SECTIONS}
    if cfg.metrics.listen is not None:
        host, port = cfg.metrics.listen
        out["metrics"]["listen"] = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    for sec, key in (("control", "mode"), ("source", "mode")):
        if key in out[sec]:
            out[sec][key] = "0%o" % out[sec][key]
    return out
