"""The offline trust commands of ``refitd``: they work on files, never through the daemon.

    refitd verify-store [--store DIR | --config F]   every stored version's blobs vs their sha256
    refitd keygen -o KEY                             an ed25519 key pair (KEY, KEY.pub)
    refitd sign PACKAGE --key KEY [...]              writes PACKAGE.sig (a signed envelope)
    refitd verify PACKAGE [--config F | --trust KEY.pub ...]   checks PACKAGE.sig

Each that prints takes --json. Kept apart from cli.py so the daemon's client commands and these stay small.
"""
from __future__ import annotations

import sys
from typing import Any

from . import config as _config

SYSTEM_CONFIG = "/etc/refitd/refitd.yaml"


def _cli_error(message: str, code: int = 1):
    from .cli import CliError
    return CliError(message, code)


def _print_json(obj: Any) -> None:
    from .cli import _print_json as print_json
    print_json(obj)


def _store_dir(args) -> str:
    if args.store:
        return args.store
    path = args.config or SYSTEM_CONFIG
    try:
        return _config.load_config(path).store.path
    except _config.ConfigError as e:
        raise _cli_error(e.report(), 2)


def cmd_verify_store(args) -> int:
    """Opens the store read-only and without its lock (the daemon may be running): nothing is
    written, repaired or removed. One line per problem on stdout; exit 1 if there is any."""
    from .store import Store, StoreError
    path = _store_dir(args)
    try:
        store = Store(path, lock=False, read_only=True)
    except StoreError as e:
        raise _cli_error(str(e))
    problems, notes = store.verify()
    n = sum(len(store.manifest(v)["tensors"]) for v in store.versions())
    if args.json:
        _print_json({"ok": not problems, "store": path, "versions": len(store.versions()),
                     "tensors": n, "current": store.current(), "problems": problems, "notes": notes})
        return 1 if problems else 0
    for line in notes:
        print("note: %s" % line)
    for line in problems:
        print("problem: %s" % line)
    print("%s: %d version%s, %d tensor entries checked, current %s, %d problem%s"
          % (path, len(store.versions()), "" if len(store.versions()) == 1 else "s", n,
             store.current(), len(problems), "" if len(problems) == 1 else "s"))
    return 1 if problems else 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expiry(text: str) -> float:
    """``30d`` / ``12h`` / ``90m`` from now, or a UTC time ``2027-01-31T00:00:00Z``."""
    import time
    from .signing import SignatureError, parse_time
    if text and text[-1] in _UNITS and text[:-1].isdigit():
        return time.time() + int(text[:-1]) * _UNITS[text[-1]]
    try:
        return parse_time(text, "--expires")
    except SignatureError as e:
        raise _cli_error("%s (or a duration like 30d, 12h)" % e, 2)


def _keys(paths):
    from .signing import SignatureError, load_private_key
    try:
        return [load_private_key(p) for p in paths]
    except SignatureError as e:
        raise _cli_error(str(e))


def cmd_keygen(args) -> int:
    from .signing import generate_key, public_key_text, write_key_pair
    key = generate_key()
    try:
        kid, pub_path = write_key_pair(args.output, key)
    except FileExistsError:
        raise _cli_error("%s exists; refusing to overwrite a key" % args.output)
    except OSError as e:
        raise _cli_error("cannot write %s: %s" % (args.output, e.strerror))
    if args.json:
        _print_json({"ok": True, "key": args.output, "public_key": pub_path, "key_id": kid,
                     "trusted_key": public_key_text(key)})
        return 0
    print("wrote %s (private, mode 0600) and %s" % (args.output, pub_path))
    print("key id %s; trust it with, in security.trusted_keys:" % kid)
    print('  %s: "%s"' % (kid, public_key_text(key)))
    return 0


def cmd_sign(args) -> int:
    """Signs the package's bytes and metadata; with --add, adds signatures to PACKAGE.sig."""
    import json
    from .package import DEFAULT_MAX_PACKAGE_BYTES, PackageError, parse_package_bytes, read_capped
    from .signing import SignatureError, dump_envelope, sign_envelope
    from .trust import package_claims
    try:
        data = bytes(read_capped(args.package, DEFAULT_MAX_PACKAGE_BYTES))
        pkg = parse_package_bytes(data, path=args.package)
    except PackageError as e:
        raise _cli_error("%s: %s" % (args.package, e.reason))
    keys = _keys(args.key)
    out = args.output or args.package + ".sig"
    try:
        if args.add:
            with open(out, "rb") as f:
                env = json.loads(f.read().decode("utf-8"))
            env = sign_envelope(env["signed"], keys, env)
        else:
            from .fleet.manifest import build, layout
            claims = package_claims(data, pkg.version, pkg.model, _expiry(args.expires),
                                    args.fleet, args.group, layout(build(data)))
            env = sign_envelope(claims, keys)
    except (OSError, ValueError, KeyError, SignatureError) as e:
        raise _cli_error("cannot sign %s: %s" % (args.package, getattr(e, "strerror", None) or e))
    if env["signed"]["sha256"] != pkg.sha256:
        raise _cli_error("%s signs other bytes than %s" % (out, args.package))
    from .atomic import write_atomic
    write_atomic(out, [dump_envelope(env)])
    if args.json:
        _print_json({"ok": True, "signature": out, "version": pkg.version,
                     "signatures": len(env["signatures"]), "expires": env["signed"]["expires"]})
        return 0
    print("wrote %s: version %d, %d signature%s, expires %s" % (
        out, pkg.version, len(env["signatures"]), "" if len(env["signatures"]) == 1 else "s",
        env["signed"]["expires"]))
    return 0


def _trusted(args):
    from .signing import SignatureError, TrustedKeys, parse_public_key
    try:
        if args.trust:
            keys = {}
            for p in args.trust:
                with open(p, encoding="ascii") as f:
                    kid, pub = parse_public_key(f.read())
                keys[kid] = pub
            return TrustedKeys(keys, args.threshold or 1)
        cfg = _config.load_config(args.config or SYSTEM_CONFIG)
        return TrustedKeys.from_config(cfg.security.trusted_keys,
                                       args.threshold or cfg.security.threshold)
    except _config.ConfigError as e:
        raise _cli_error(e.report(), 2)
    except (OSError, UnicodeDecodeError) as e:
        raise _cli_error("cannot read a trusted key: %s" % (getattr(e, "strerror", None) or e))
    except SignatureError as e:
        raise _cli_error(str(e))


def cmd_verify(args) -> int:
    """What the daemon checks before parsing, offline: the envelope, its signatures against
    the trusted keys, the expiry, and the package's length and sha256."""
    import hashlib
    from .delivery import read_signature
    from .package import DEFAULT_MAX_PACKAGE_BYTES, PackageError, read_capped
    from .signing import PACKAGE_TYPE, SignatureError, verify_envelope
    trusted = _trusted(args)
    try:
        sig = read_signature(args.signature or args.package + ".sig")
        data = bytes(read_capped(args.package, DEFAULT_MAX_PACKAGE_BYTES))
        signed = verify_envelope(sig, trusted, PACKAGE_TYPE)
    except PackageError as e:
        raise _cli_error(e.reason)
    except SignatureError as e:
        raise _cli_error("%s: %s" % (args.package, e))
    if len(data) != signed.get("length") or hashlib.sha256(data).hexdigest() != signed.get("sha256"):
        raise _cli_error("%s: its bytes are not the ones signed (length %d, signed %s)"
                         % (args.package, len(data), signed.get("length")))
    target = signed.get("target") or {}
    if args.json:
        _print_json({"ok": True, "package": args.package, "version": signed.get("version"),
                     "model": signed.get("model"), "target": target, "expires": signed.get("expires")})
        return 0
    print("%s: OK, version %s for model %s, target %s, expires %s" % (
        args.package, signed.get("version"), signed.get("model"),
        ", ".join("%s=%s" % kv for kv in sorted(target.items())) or "any box", signed.get("expires")))
    return 0


def cmd_sign_command(args) -> int:
    """A signed rollback/pin/unpin for ``refitd rollback --sig`` or the fleet's command topic."""
    from .signing import dump_envelope, sign_envelope
    from .trust import command_claims
    keys = _keys(args.key)
    cmd_args = {"to": args.to} if args.command_name == "rollback" else {"version": args.version}
    env = sign_envelope(command_claims(args.command_name, cmd_args, ttl=args.ttl,
                                       fleet=args.fleet, group=args.group), keys)
    data = dump_envelope(env)
    if args.output in (None, "-"):
        sys.stdout.write(data.decode())
    else:
        from .atomic import write_atomic
        write_atomic(args.output, [data])
        if args.json:
            _print_json({"ok": True, "output": args.output, "command": args.command_name, "args": cmd_args,
                         "expires": env["signed"].get("expires")})
    return 0


def add_commands(command: Any, json_help: str) -> None:
    """Adds these commands through cli.build_parser's ``command`` helper (its --help
    descriptions); every one that prints a result takes --json."""
    sp = command("keygen", "make an ed25519 signing key pair (KEY, KEY.pub)",
                 "Make an ed25519 key pair: KEY (PKCS#8 PEM, mode 0600) and KEY.pub "
                 "(ed25519:<base64>); prints the key id and the security.trusted_keys line.")
    sp.add_argument("-o", "--output", required=True, help="private key file (KEY.pub is written beside it)")
    sp.add_argument("--json", action="store_true", help=json_help)
    sp.set_defaults(fn=cmd_keygen)

    sp = command("sign", "sign a package: writes PACKAGE.sig",
                 "Sign a package's bytes and metadata into PACKAGE.sig (the signed envelope, "
                 "docs/security.md); --add adds signatures to an existing one (k of n keys).")
    sp.add_argument("package", help="the .safetensors package to sign")
    sp.add_argument("--key", required=True, action="append", help="private key (repeat for k-of-n)")
    sp.add_argument("--expires", default="30d", help="30d, 12h, or a UTC time 2027-01-31T00:00:00Z (default 30d)")
    sp.add_argument("--fleet", help="only boxes of this fleet accept it")
    sp.add_argument("--group", help="only boxes of this group accept it")
    sp.add_argument("--add", action="store_true", help="add signatures to the existing PACKAGE.sig")
    sp.add_argument("-o", "--output", help="signature file (default PACKAGE.sig)")
    sp.add_argument("--json", action="store_true", help=json_help)
    sp.set_defaults(fn=cmd_sign)

    sp = command("verify", "check PACKAGE.sig against the trusted keys (offline)",
                 "Check, offline, what the daemon checks before parsing: the envelope, its "
                 "signatures against the trusted keys, the expiry, the package's length and sha256.")
    sp.add_argument("package", help="the .safetensors package to check")
    sp.add_argument("--signature", help="signature file (default PACKAGE.sig)")
    sp.add_argument("--trust", action="append", metavar="KEY.pub", help="trust this public key file (repeatable) instead of the config's")
    sp.add_argument("--threshold", type=int, help="keys that must sign (default: the config's, or 1)")
    sp.add_argument("--config", "-c", help="config whose security.trusted_keys to use (default %s)" % SYSTEM_CONFIG)
    sp.add_argument("--json", action="store_true", help=json_help)
    sp.set_defaults(fn=cmd_verify)

    sp = command("sign-command", "sign a rollback, pin or unpin command",
                 "Sign a rollback, pin or unpin command (JSON envelope) for refitd rollback --sig "
                 "or the fleet's command topic.")
    sp.add_argument("command_name", choices=("rollback", "pin", "unpin"), help="the command to sign")
    sp.add_argument("--to", type=int, help="rollback: the stored version to serve")
    sp.add_argument("--version", type=int, help="pin/unpin: the version")
    sp.add_argument("--key", required=True, action="append", help="private key (repeat for k-of-n)")
    sp.add_argument("--ttl", type=float, default=300.0, help="seconds the command stays valid (default 300)")
    sp.add_argument("--fleet", help="only boxes of this fleet accept it")
    sp.add_argument("--group", help="only boxes of this group accept it")
    sp.add_argument("-o", "--output", help="file to write (default stdout; the envelope is JSON)")
    sp.add_argument("--json", action="store_true",
                    help="with -o: print what was written as one JSON object (without -o the envelope is the output)")
    sp.set_defaults(fn=cmd_sign_command)

    sp = command("verify-store", "check every stored version's blobs against their "
                                 "hashes (read-only; the daemon may be running)")
    sp.add_argument("--store", help="store directory (default: store.path of --config)")
    sp.add_argument("--config", "-c", help="config file (default %s)" % SYSTEM_CONFIG)
    sp.add_argument("--json", action="store_true", help=json_help)
    sp.set_defaults(fn=cmd_verify_store)
