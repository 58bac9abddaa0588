"""The ``refitd`` command.

    refitd run [--config F] [--log-format json] [--log-level L]   the daemon (no config: demo config)
    refitd status [--json]                  serving version, fingerprint, uptime, rate, p50/p99, last update
    refitd versions [--json]                stored versions (current, pinned, created, note)
    refitd apply PACKAGE                    apply a weight package through the pipeline
    refitd rollback [--to V]                re-apply a stored version (default: the previous one)
    refitd pin V | refitd unpin V           keep / release a version through retention
    refitd infer INPUT.npy [--json]         one inference on the serving weights
    refitd inspect MODEL [--json]           a model's inputs, outputs, refittable weights (dtype, shape, bytes)
    refitd pack --model M --from F --version N -o OUT [--json]   build a package
    refitd check-config F [--json]          validate a config file and check it against this machine
    refitd --version [--json]               refitd, librefit (version, ABI) and the backends
    refitd demo                             the seeds' demo on a real daemon
    refitd push PACKAGE --fleet F [--group G] --broker URL    desired state + serve, live device table
    refitd rollout PACKAGE --fleet F --canary G --max-failures K --broker URL
    refitd serve --dir PACKAGES --broker URL   weight server (replicas share via $share)
    refitd fleet status --fleet F --broker URL [--json]
    refitd verify-store [--store DIR] [--json]   check every stored version's blobs (read-only)
    refitd keygen -o KEY                    an ed25519 key pair for signing (KEY, KEY.pub)
    refitd sign PACKAGE --key KEY           write PACKAGE.sig; refitd verify PACKAGE checks it
    refitd sign-command rollback --to V --key KEY -o FILE   a signed command (rollback --sig FILE)

Client commands find the control socket from --socket, $REFITD_SOCKET, --config, then
/etc/refitd/refitd.yaml, then the demo config's socket (under $XDG_STATE_HOME/refitd).
Exit status: 0 success, 1 failure (including "daemon not reachable"), 2 usage or config error.
Errors are one line on stderr, prefixed "refitd: ".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from . import config as _config
from .control import DaemonUnreachable, call
from .modelinfo import human_bytes

SYSTEM_CONFIG = "/etc/refitd/refitd.yaml"
SYSTEM_SOCKET = "/run/refitd/control.sock"


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---- socket discovery ------------------------------------------------------------------------

def find_socket(args) -> str:
    if getattr(args, "socket", None):
        return args.socket
    env = os.environ.get("REFITD_SOCKET")
    if env:
        return env
    cfg_path = getattr(args, "config", None)
    if cfg_path:
        try:
            return _config.load_config(cfg_path).control.socket
        except _config.ConfigError as e:
            raise CliError(e.report(), 2)
    if os.path.exists(SYSTEM_CONFIG):
        try:
            return _config.load_config(SYSTEM_CONFIG).control.socket
        except _config.ConfigError:
            if os.path.exists(SYSTEM_SOCKET):
                return SYSTEM_SOCKET
    return os.path.join(_config.default_state_dir(), "control.sock")


def request(args, req: Dict[str, Any], timeout: float = 30.0, fds: tuple = ()) -> Dict[str, Any]:
    path = find_socket(args)
    try:
        return call(path, req, timeout=timeout, fds=fds)
    except DaemonUnreachable as e:
        raise CliError(str(e))


def _ok_or_raise(resp: Dict[str, Any]) -> Dict[str, Any]:
    if not resp.get("ok"):
        raise CliError(resp.get("error") or "the daemon refused without a reason")
    return resp


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ---- formatting ------------------------------------------------------------------------------

def _dur(s: float) -> str:
    s = int(s)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm %02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh %02dm" % (s // 3600, (s % 3600) // 60)
    return "%dd %02dh" % (s // 86400, (s % 86400) // 3600)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else ("%.3f ms" % v if v < 10 else "%.1f ms" % v)


def _when(t: Optional[float]) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _update_target(lu: Dict[str, Any]) -> str:
    """What an update was of: its version, or (a package that failed before its version was
    read) its file name."""
    if lu.get("version") is not None:
        return "version %s" % lu["version"]
    return os.path.basename(lu["file"]) if lu.get("file") else "a package of unknown version"


def format_status(st: Dict[str, Any]) -> str:
    sv = st["serving"]
    inf = st.get("inference") or {}
    lines = [
        "serving      version %s" % sv["version"],
        "model        %s (%s backend)" % (sv.get("model"), sv["backend"]),
        "fingerprint  %s" % sv["fingerprint"],
        "uptime       %s (pid %s)" % (_dur(st["uptime"]), st.get("pid")),
        "inference    %.1f/s  p50 %s  p99 %s  total %s  errors %s  (%s workers, %s source, %s sink)" % (
            inf.get("per_second") or 0.0, _ms(inf.get("p50_ms")), _ms(inf.get("p99_ms")),
            inf.get("inferences_total", 0), inf.get("errors_total", 0), inf.get("threads"),
            (inf.get("source") or {}).get("type"), inf.get("sink")),
    ]
    lu = st.get("last_update")
    if lu:
        what = "%s of %s" % (lu.get("action", "apply"), _update_target(lu))
        via = " via %s" % lu["source"] if lu.get("source") else ""
        if lu.get("ok"):
            res = "ok"
            if lu.get("seconds") is not None:
                res += " (%.3f s)" % lu["seconds"]
        else:
            res = "FAILED%s: %s" % (" at " + lu["stage"] if lu.get("stage") else "", lu.get("reason"))
        lines.append("last update  %s%s at %s: %s" % (what, via, _when(lu.get("at")), res))
    else:
        lines.append("last update  none since start")
    store = st.get("store") or {}
    n = len(store.get("versions") or [])
    lines.append("store        %s: %d version%s (%s), current %s, pinned %s, keep %s" % (
        store.get("path"), n, "" if n == 1 else "s",
        ", ".join(map(str, store.get("versions") or [])) or "none", store.get("current"),
        ", ".join(map(str, store.get("pinned") or [])) or "none", store.get("keep")))
    up = st.get("updates") or {}
    if up:
        lines.append("updates      " + "  ".join("%s %d" % (k, v) for k, v in sorted(up.items())))
    if st.get("watch"):
        lines.append("file drop    %s" % st["watch"])
    mq = (st.get("channels") or {}).get("mqtt")
    if mq:
        link = "connected" if mq.get("connected") else "DISCONNECTED: %s" % mq.get("error")
        lines.append("mqtt         broker %s: %s; state %s" % (mq.get("broker"), link, mq.get("state")))
        mu = mq.get("last_update")
        if mu and mu.get("outcome") != "applied":
            lines.append("mqtt update  version %s %s at %s: %s" % (
                mu.get("version"), mu.get("outcome"), mu.get("stage"), mu.get("reason")))
    return "\n".join(lines)


def format_versions(vs: Dict[str, Any]) -> str:
    rows = vs["versions"]
    if not rows:
        return "no stored versions (serving the model file's weights, version %s)" % vs.get("serving")
    head = ["VERSION", "", "BASE", "CHANGED", "SIZE", "CREATED", "NOTE"]
    table: List[List[str]] = [head]
    for r in rows:
        flags = []
        if r["current"]:
            flags.append("current")
        if r["version"] == vs.get("serving") and not r["current"]:
            flags.append("serving")
        if r["pinned"]:
            flags.append("pinned")
        size_s = human_bytes(r.get("bytes") or 0)
        table.append([str(r["version"]), ",".join(flags), "-" if r.get("base") is None else str(r["base"]),
                      "%d/%d" % (r.get("changed") or 0, r.get("tensors") or 0), size_s,
                      str(r.get("created") or r.get("stored") or "-"), r.get("note") or ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    out.append("keep %s newest (+ pinned + current); highest ever applied: %s" % (vs.get("keep"), vs.get("highest")))
    return "\n".join(out)


# ---- commands --------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from .daemon import run
    if args.config:
        try:
            cfg = _config.load_config(args.config)
        except _config.ConfigError as e:
            sys.stderr.write("refitd: %s\n" % e.report())
            return 2
        path = os.path.abspath(args.config)
    else:
        state = args.state_dir or _config.default_state_dir()
        cfg = _config.demo_config(state)
        path = None
        sys.stderr.write("refitd: no --config given: running the built-in demo configuration "
                         "(state in %s; see `refitd check-config` and config/refitd.yaml)\n" % state)
    if args.log_format:
        cfg.log.format = args.log_format
    if args.log_level:
        cfg.log.level = args.log_level
    return run(cfg, config_path=path)


def cmd_status(args) -> int:
    resp = _ok_or_raise(request(args, {"cmd": "status"}))
    resp.pop("ok", None)
    if args.json:
        _print_json(resp)
    else:
        print(format_status(resp))
    return 0


def cmd_versions(args) -> int:
    resp = _ok_or_raise(request(args, {"cmd": "versions"}))
    resp.pop("ok", None)
    if args.json:
        _print_json(resp)
    else:
        print(format_versions(resp))
    return 0


def _report_outcome(args, resp: Dict[str, Any], verb: str) -> int:
    from .pipeline import ALREADY_SERVING_STAGE, already_serving_text  # the file drop's wording
    if args.json:
        _print_json(resp)
    if not resp.get("ok"):
        stage = resp.get("stage")
        raise CliError("%s failed%s: %s" % (verb, " at " + stage if stage else "", resp.get("error")))
    if not args.json and resp.get("stage") == ALREADY_SERVING_STAGE:
        print(already_serving_text(resp.get("version")))
    elif not args.json:
        secs = resp.get("seconds")
        print("%s version %s%s; serving version %s" % (
            "applied" if verb == "apply" else "rolled back to", resp.get("version"),
            " in %.3f s" % secs if isinstance(secs, (int, float)) else "", resp.get("serving")))
    return 0


def _open_for_daemon(path: str, shown: str) -> int:
    # O_NONBLOCK: a FIFO must not hang the CLI (the daemon refuses what is not a regular file)
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CliError("no such file: %s" % shown) from None
    except OSError as e:
        raise CliError("cannot open %s: %s" % (shown, e.strerror)) from None


def cmd_apply(args) -> int:
    path = os.path.abspath(args.package)
    # Opened here, as the caller, and passed over the socket (with PACKAGE.sig, when there is
    # one, as the second descriptor): the daemon's sandbox (ProtectHome=, PrivateTmp=) cannot
    # see ~/ or this shell's /tmp.
    fds = [_open_for_daemon(path, args.package)]
    try:
        if os.path.isfile(path + ".sig"):
            fds.append(_open_for_daemon(path + ".sig", args.package + ".sig"))
        resp = request(args, {"cmd": "apply", "path": path}, timeout=args.timeout, fds=tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)
    return _report_outcome(args, resp, "apply")


def cmd_rollback(args) -> int:
    req: Dict[str, Any] = {"cmd": "rollback"}
    if args.to is not None:
        req["to"] = args.to
    if args.sig:  # a signed rollback command (refitd sign-command), where signatures are required
        try:
            with open(args.sig, encoding="utf-8") as f:
                req["sig"] = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError("cannot read %s: %s" % (args.sig, getattr(e, "strerror", None) or e))
    resp = request(args, req, timeout=args.timeout)
    return _report_outcome(args, resp, "rollback")


def cmd_pin(args) -> int:
    resp = _ok_or_raise(request(args, {"cmd": args.command, "version": args.version}))
    if args.json:
        resp.pop("ok", None)
        _print_json(resp)
    else:
        pinned = ", ".join(map(str, resp.get("pinned") or [])) or "none"
        if resp.get("changed", True):
            done = "pinned" if args.command == "pin" else "unpinned"
            print("%s version %d (pinned: %s)" % (done, args.version, pinned))
        else:  # idempotent both ways: the second pin/unpin changes nothing, and says so
            was = "already pinned" if args.command == "pin" else "not pinned"
            print("version %d was %s; nothing changed (pinned: %s)" % (args.version, was, pinned))
    return 0


def cmd_infer(args) -> int:
    import numpy as np
    from .tensorwire import from_json, to_json
    try:
        if args.input.endswith(".npz"):
            with np.load(args.input, allow_pickle=False) as z:
                inputs = {k: to_json(z[k]) for k in z.files}
        else:
            inputs = {args.name or "": to_json(np.load(args.input, allow_pickle=False))}
    except FileNotFoundError:
        raise CliError("no such file: %s" % args.input)
    except Exception as e:
        raise CliError("cannot read %s: %s" % (args.input, str(e).splitlines()[0] if str(e) else type(e).__name__))
    resp = _ok_or_raise(request(args, {"cmd": "infer", "inputs": inputs}))
    outs = {}
    for name, spec in resp["outputs"].items():
        outs[name] = from_json(spec, name)
    if args.output:
        if len(outs) == 1 and not args.output.endswith(".npz"):
            np.save(args.output, next(iter(outs.values())))
        else:
            np.savez(args.output, **outs)
    if args.json:
        _print_json({"version": resp["version"], "seconds": resp.get("seconds"),
                     "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name, "values": v.tolist()}
                                 for k, v in outs.items()}})
    else:
        for name, a in outs.items():
            flat = a.reshape(-1)
            vals = " ".join("%.6g" % x for x in flat[:16]) + (" ..." if flat.size > 16 else "")
            print("%s %s = %s" % (name, "x".join(map(str, a.shape)), vals))
        print("(version %s, %.3f ms)" % (resp["version"], (resp.get("seconds") or 0) * 1e3))
    return 0


def cmd_pack(args) -> int:
    from .pack import pack
    from .package import PackageError
    warnings: List[str] = []
    try:
        pkg = pack(args.model, args.source, args.version, args.output, base=args.base, note=args.note,
                   name_map=args.name_map, ignore_unknown=args.ignore_unknown, warn=warnings.append)
    except PackageError as e:
        raise CliError(str(e))
    except Exception as e:  # the engine refusing the model, etc.
        raise CliError("%s" % (str(e).splitlines()[0] if str(e) else type(e).__name__))
    names = list(pkg.tensors)
    nbytes = sum(a.nbytes for a in pkg.tensors.values())
    if args.json:
        _print_json({"output": args.output, "version": pkg.version, "base": pkg.base, "model": pkg.model,
                     "bytes": nbytes, "sha256": pkg.sha256, "warnings": warnings,
                     "tensors": {n: {"dtype": a.dtype.name, "shape": list(a.shape), "bytes": a.nbytes}
                                 for n, a in pkg.tensors.items()}})
        return 0
    for w in warnings:  # precision may be lost: say so, do not fail
        sys.stderr.write("refitd: warning: %s\n" % w)
    print("wrote %s: version %d, %d tensor%s (%d bytes)%s, model %s" % (
        args.output, pkg.version, len(names), "" if len(names) == 1 else "s", nbytes,
        ", base %d" % pkg.base if pkg.base is not None else "", pkg.model))
    return 0


def cmd_inspect(args) -> int:
    from .modelinfo import format_report, model_report, parse_input_shapes
    if not os.path.exists(args.model):
        raise CliError("no such file: %s" % args.model)
    opts: Dict[str, Any] = {}
    try:
        shapes = parse_input_shapes(args.input_shape)
    except ValueError as e:
        raise CliError(str(e), 2)
    if shapes:
        opts["input_shape"] = shapes
    try:
        rep = model_report(args.model, backend=args.backend, **opts)
    except Exception as e:  # EngineError / LibraryError: the engine's own one-line reason
        raise CliError("cannot open %s: %s" % (args.model, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if args.json:
        _print_json(rep)
    else:
        print(format_report(rep))
    return 0


def _problem_dicts(problems) -> List[Dict[str, Any]]:
    return [{"key": p.path, "message": p.message, "line": p.line} for p in problems]


def cmd_check_config(args) -> int:
    from . import preflight
    try:
        cfg = _config.load_config(args.file)
    except _config.ConfigError as e:
        if args.json:
            _print_json({"file": args.file, "ok": False, "problems": _problem_dicts(e.problems)})
        else:
            sys.stderr.write("refitd: %s\n" % e.report())
        return 2
    if args.print:
        import yaml
        sys.stdout.write(yaml.safe_dump(_config.config_to_dict(cfg), sort_keys=False))
        return 0
    problems, model, user = [], None, None
    if not args.file_only:  # the config against this machine, as the daemon's user
        try:
            user = preflight.lookup_user(args.user or preflight.default_user())
        except KeyError:
            raise CliError("no such user: %s" % args.user, 2)
        problems, model = preflight.check_machine(cfg, user)
    info = preflight.summary(cfg, user)
    if args.json:
        _print_json({"file": args.file, "ok": not problems, "config": info, "model": model,
                     "problems": _problem_dicts(problems)})
    elif problems:
        sys.stderr.write("refitd: %s\n" % _config.ConfigError(problems, args.file).report())
    else:
        checked = "file only" if args.file_only else "checked as user %s" % info["user"]
        print("%s: OK (%s; model %s on %s, %d workers, %s source, %s sink, store %s keep %d, watch %s, control %s)" % (
            args.file, checked, cfg.model.path, cfg.model.backend, cfg.workers.threads, cfg.source.type,
            cfg.sink.type, cfg.store.path, cfg.store.keep, cfg.watch.path or "off", cfg.control.socket))
    return 2 if problems else 0


def cmd_backends(args) -> int:
    """The backends librefit sees: built in, or plugin files on its search path (loaded to check)."""
    from .engine import backend_infos
    infos = backend_infos()
    if args.json:
        _print_json([{"name": b.name, "ok": not b.error, "location": b.location, "error": b.error}
                     for b in infos])
        return 0
    for b in infos:
        print("%-16s %-9s %s" % (b.name, "ok" if not b.error else "refused", b.error or b.location))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


# ---- parser ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other refitd error (argparse prints the usage
    block first, which buries the cause in a script's log); exit code 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))


JSON_HELP = "print the result as one JSON object instead of text"


def add_command(sub, name: str, help_: str, description: Optional[str] = None) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with what it does (argparse shows none by default)."""
    return sub.add_parser(name, help=help_, description=description or help_[0].upper() + help_[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="refitd", description="Hot-swap neural network weights without reloading the model. "
                                           "`refitd COMMAND --help` describes each command.")
    # dest show_version: pack --version and pin V use the dest "version" for their own value.
    p.add_argument("--version", dest="show_version", action="store_true",
                   help="print refitd's version, librefit's version and ABI, and the backends available")
    p.add_argument("--json", dest="version_json", action="store_true", help="with --version: as JSON")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help_, description=None):
        return add_command(sub, name, help_, description)

    def client(name, help_, description=None):
        sp = command(name, help_, description)
        sp.add_argument("--socket", help="control socket (default: from --config, $REFITD_SOCKET, "
                                         "/etc/refitd/refitd.yaml, or the demo state dir)")
        sp.add_argument("--config", "-c", help="config file whose control.socket to use")
        return sp

    sp = command("run", "run the daemon (without --config: the built-in demo config)")
    sp.add_argument("--config", "-c", help="YAML config file (see config/refitd.yaml)")
    sp.add_argument("--log-format", choices=("text", "json"), help="override log.format")
    sp.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log.level")
    sp.add_argument("--state-dir", help="state directory for the demo config (no --config)")
    sp.set_defaults(fn=cmd_run)

    sp = client("status", "what the daemon serves, how fast, and the last update")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(fn=cmd_status)

    sp = client("versions", "stored weight versions, which is current, which are pinned")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(fn=cmd_versions)

    sp = client("apply", "apply a weight package (through the same pipeline as the file drop)")
    sp.add_argument("package", help="the .safetensors package (refitd pack makes one)")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the outcome (default 600)")
    sp.set_defaults(fn=cmd_apply)

    sp = client("rollback", "serve a stored version again (default: the one before current)")
    sp.add_argument("--to", type=int, metavar="V", help="the stored version to serve (see refitd versions)")
    sp.add_argument("--sig", metavar="FILE",
                    help="the command's signature envelope, from refitd sign-command")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the outcome (default 600)")
    sp.set_defaults(fn=cmd_rollback)

    for name, help_ in (("pin", "keep a version through retention (idempotent)"),
                        ("unpin", "let retention remove a version again (idempotent)")):
        sp = client(name, help_)
        sp.add_argument("version", type=int, metavar="V", help="a stored version (see refitd versions)")
        sp.add_argument("--json", action="store_true", help=JSON_HELP)
        sp.set_defaults(fn=cmd_pin)

    sp = client("infer", "one inference on the serving weights")
    sp.add_argument("input", help=".npy (single-input model) or .npz (named inputs)")
    sp.add_argument("--name", help="input name for a .npy (default: the model's only input)")
    sp.add_argument("-o", "--output", help="write the outputs to this .npy/.npz")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(fn=cmd_infer)

    sp = command("inspect", "list a model's inputs, outputs and refittable weights (dtype, shape, bytes)",
                 "List an ONNX model's inputs, outputs and refittable weights with dtype, shape and bytes, "
                 "opened as the daemon opens it: the names, dtypes and shapes a weight package must carry.")
    sp.add_argument("model", help="the ONNX model file (the demo's: refitd/demo/seed_conv.onnx in the package)")
    sp.add_argument("--backend", default="reference", help="librefit backend to open it on (default reference)")
    sp.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                    help="fix a symbolic input's dimensions, as model.options.input_shape does (repeatable)")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(fn=cmd_inspect)

    sp = command("pack", "build a weight package from .safetensors, .npz or a PyTorch state_dict",
                 "Build a weight package from training output (.safetensors, .npz or a PyTorch .pt "
                 "state_dict) and check it against the model: names, dtypes, shapes, finite values. "
                 "`refitd inspect MODEL` lists what the model refits.")
    sp.add_argument("--model", required=True, help="the ONNX model the package is for")
    sp.add_argument("--from", dest="source", required=True, metavar="FILE", help=".safetensors, .npz or .pt")
    sp.add_argument("--version", required=True, type=int, help="the package version (newer than what the box serves)")
    sp.add_argument("-o", "--output", required=True, help="the .safetensors package to write")
    sp.add_argument("--base", type=int, help="for a partial package: the version it applies on")
    sp.add_argument("--note", help="free text stored with the version")
    sp.add_argument("--name-map", help="JSON file mapping source tensor names to model weight names")
    sp.add_argument("--ignore-unknown", action="store_true", help="drop tensors the model does not have")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(fn=cmd_pack)

    sp = command("check-config", "validate a config file and check it against this machine; every problem at once",
                 "Validate a config file (keys, types, values), then check it against this "
                 "machine: the model exists and opens in the engine, the health checks and "
                 "name map fit it, directories exist or can be created and are writable by "
                 "the daemon's user, files it reads are readable. One line per problem; "
                 "exit 2 if there is any.")
    sp.add_argument("file", help="the YAML config file")
    sp.add_argument("--print", action="store_true", help="print the config with every default filled in")
    sp.add_argument("--user", help="check permissions as this user (default: refitd when run as root and "
                                   "that user exists, else the current user)")
    sp.add_argument("--file-only", action="store_true",
                    help="only validate the file, not this machine (e.g. a config for another box)")
    sp.add_argument("--json", action="store_true", help="the report as JSON (ok, problems, model, config)")
    sp.set_defaults(fn=cmd_check_config)

    sp = command("backends", "list the engine backends available here (built in and plugins)",
                 "List the engine backends librefit sees: the built-in reference backend and the "
                 "plugin files (librefit_backend_<name>.so) on its search path, each loaded to "
                 "check its api_version; a refused plugin is shown with the reason.")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(fn=cmd_backends)

    sp = command("demo", "the seeds' demo on a real daemon: file drops, outputs 0..81, rollback")
    sp.add_argument("--state-dir", help="where the demo daemon keeps its state (default: a fresh temp dir)")
    sp.add_argument("--keep-state", action="store_true", help="do not delete the temp state dir afterwards")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between package drops")
    sp.add_argument("--threads", type=int, default=2, help="inference worker threads")
    sp.set_defaults(fn=cmd_demo)

    from .fleet.commands import add_parsers
    add_parsers(sub)
    from .cli_trust import add_commands  # verify-store, keygen, sign, verify, sign-command
    add_commands(command, JSON_HELP)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "show_version", False):
        from .about import format_version, version_info
        info = version_info()
        if args.version_json:
            _print_json(info)
        else:
            print(format_version(info))
        return 0
    if not getattr(args, "fn", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.fn(args)
    except CliError as e:
        sys.stderr.write("refitd: %s\n" % e)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
