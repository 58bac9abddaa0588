"""The ``refitd`` command.

    refitd run [--config F] [--log-format json] [--log-level L]   the daemon (no config: demo config)
    refitd status [--json]                  serving version, fingerprint, uptime, rate, p50/p99, last update
    refitd versions [--json]                stored versions (current, pinned, created, note)
    refitd apply PACKAGE                    apply a weight package through the pipeline
    refitd rollback [--to V]                re-apply a stored version (default: the previous one)
    refitd pin V | refitd unpin V           keep / release a version through retention
    refitd infer INPUT.npy [--json]         one inference on the serving weights
    refitd pack --model M --from F --version N -o OUT    build a package
    refitd check-config F                   validate a config file (every problem at once)
    refitd demo                             the seeds' demo on a real daemon
    refitd verify-store [--store DIR]       check every stored version's blobs (read-only)
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
        what = "%s of version %s" % (lu.get("action", "apply"), lu.get("version"))
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
    lines.append("store        %s: %d versions (%s), current %s, pinned %s, keep %s" % (
        store.get("path"), len(store.get("versions") or []),
        ", ".join(map(str, store.get("versions") or [])) or "none", store.get("current"),
        ", ".join(map(str, store.get("pinned") or [])) or "none", store.get("keep")))
    up = st.get("updates") or {}
    if up:
        lines.append("updates      " + "  ".join("%s %d" % (k, v) for k, v in sorted(up.items())))
    if st.get("watch"):
        lines.append("file drop    %s" % st["watch"])
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
        size = r.get("bytes") or 0
        size_s = "%d B" % size if size < 10240 else ("%.1f KiB" % (size / 1024) if size < 10 << 20 else "%.1f MiB" % (size / (1 << 20)))
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
    if args.json:
        _print_json(resp)
    if not resp.get("ok"):
        stage = resp.get("stage")
        raise CliError("%s failed%s: %s" % (verb, " at " + stage if stage else "", resp.get("error")))
    if not args.json and resp.get("stage") == "already-applied":
        print("version %s is this very package and already serving; nothing to do" % resp.get("version"))
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
        print("%s version %d (pinned: %s)" % ("pinned" if args.command == "pin" else "unpinned",
                                             args.version, ", ".join(map(str, resp.get("pinned") or [])) or "none"))
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
    try:
        pkg = pack(args.model, args.source, args.version, args.output, base=args.base, note=args.note,
                   name_map=args.name_map, ignore_unknown=args.ignore_unknown)
    except PackageError as e:
        raise CliError(str(e))
    except Exception as e:  # the engine refusing the model, etc.
        raise CliError("%s" % (str(e).splitlines()[0] if str(e) else type(e).__name__))
    names = list(pkg.tensors)
    nbytes = sum(a.nbytes for a in pkg.tensors.values())
    print("wrote %s: version %d, %d tensor%s (%d bytes)%s, model %s" % (
        args.output, pkg.version, len(names), "" if len(names) == 1 else "s", nbytes,
        ", base %d" % pkg.base if pkg.base is not None else "", pkg.model))
    return 0


def cmd_check_config(args) -> int:
    try:
        cfg = _config.load_config(args.file)
    except _config.ConfigError as e:
        sys.stderr.write("refitd: %s\n" % e.report())
        return 2
    if args.print:
        import yaml
        sys.stdout.write(yaml.safe_dump(_config.config_to_dict(cfg), sort_keys=False))
    else:
        print("%s: OK (model %s on %s, %d workers, %s source, %s sink, store %s keep %d, watch %s, control %s)" % (
            args.file, cfg.model.path, cfg.model.backend, cfg.workers.threads, cfg.source.type,
            cfg.sink.type, cfg.store.path, cfg.store.keep, cfg.watch.path or "off", cfg.control.socket))
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="refitd", description="Hot-swap neural network weights without reloading the model.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def client(name, help_, **kw):
        sp = sub.add_parser(name, help=help_, **kw)
        sp.add_argument("--socket", help="control socket (default: from --config, $REFITD_SOCKET, "
                                         "/etc/refitd/refitd.yaml, or the demo state dir)")
        sp.add_argument("--config", "-c", help="config file whose control.socket to use")
        return sp

    sp = sub.add_parser("run", help="run the daemon (without --config: the built-in demo config)")
    sp.add_argument("--config", "-c", help="YAML config file (see config/refitd.yaml)")
    sp.add_argument("--log-format", choices=("text", "json"), help="override log.format")
    sp.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log.level")
    sp.add_argument("--state-dir", help="state directory for the demo config (no --config)")
    sp.set_defaults(fn=cmd_run)

    sp = client("status", "what the daemon serves, how fast, and the last update")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)

    sp = client("versions", "stored weight versions")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_versions)

    sp = client("apply", "apply a weight package (through the same pipeline as the file drop)")
    sp.add_argument("package")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the outcome")
    sp.set_defaults(fn=cmd_apply)

    sp = client("rollback", "serve a stored version again (default: the one before current)")
    sp.add_argument("--to", type=int, metavar="V")
    sp.add_argument("--sig", metavar="FILE", help="the command's signature envelope (refitd sign-command)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--timeout", type=float, default=600.0)
    sp.set_defaults(fn=cmd_rollback)

    for name, help_ in (("pin", "keep a version through retention"), ("unpin", "let retention remove a version again")):
        sp = client(name, help_)
        sp.add_argument("version", type=int, metavar="V")
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(fn=cmd_pin)

    sp = client("infer", "one inference on the serving weights")
    sp.add_argument("input", help=".npy (single-input model) or .npz (named inputs)")
    sp.add_argument("--name", help="input name for a .npy (default: the model's only input)")
    sp.add_argument("-o", "--output", help="write the outputs to this .npy/.npz")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_infer)

    sp = sub.add_parser("pack", help="build a weight package from .safetensors, .npz or a PyTorch state_dict")
    sp.add_argument("--model", required=True, help="the ONNX model the package is for")
    sp.add_argument("--from", dest="source", required=True, metavar="FILE", help=".safetensors, .npz or .pt")
    sp.add_argument("--version", required=True, type=int, help="the package version (newer than what the box serves)")
    sp.add_argument("-o", "--output", required=True, help="the .safetensors package to write")
    sp.add_argument("--base", type=int, help="for a partial package: the version it applies on")
    sp.add_argument("--note", help="free text stored with the version")
    sp.add_argument("--name-map", help="JSON file mapping source tensor names to model weight names")
    sp.add_argument("--ignore-unknown", action="store_true", help="drop tensors the model does not have")
    sp.set_defaults(fn=cmd_pack)

    sp = sub.add_parser("check-config", help="validate a config file; every problem at once")
    sp.add_argument("file")
    sp.add_argument("--print", action="store_true", help="print the config with every default filled in")
    sp.set_defaults(fn=cmd_check_config)

    sp = sub.add_parser("demo", help="the seeds' demo on a real daemon: file drops, outputs 0..81, rollback")
    sp.add_argument("--state-dir", help="where the demo daemon keeps its state (default: a fresh temp dir)")
    sp.add_argument("--keep-state", action="store_true", help="do not delete the temp state dir afterwards")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between package drops")
    sp.add_argument("--threads", type=int, default=2, help="inference worker threads")
    sp.set_defaults(fn=cmd_demo)

    from .cli_trust import add_commands  # verify-store, keygen, sign, verify
    add_commands(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
