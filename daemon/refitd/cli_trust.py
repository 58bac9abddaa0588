"""The offline trust commands of ``refitd``: they work on files, never through the daemon.

    refitd verify-store [--store DIR | --config F]   every stored version's blobs vs their sha256
    refitd keygen -o KEY [--id ID]                   an ed25519 key pair (KEY, KEY.pub)
    refitd sign PACKAGE --key KEY [...]              writes PACKAGE.sig (a signed envelope)
    refitd verify PACKAGE [--config F | --trust KEY.pub ...]   checks PACKAGE.sig

Kept apart from cli.py so the daemon's client commands and these stay small.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from . import config as _config

SYSTEM_CONFIG = "/etc/refitd/refitd.yaml"


def _cli_error(message: str, code: int = 1):
    from .cli import CliError
    return CliError(message, code)


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
    for line in notes:
        print("note: %s" % line)
    for line in problems:
        print("problem: %s" % line)
    n = sum(len(store.manifest(v)["tensors"]) for v in store.versions())
    print("%s: %d version%s, %d tensor entries checked, current %s, %d problem%s"
          % (path, len(store.versions()), "" if len(store.versions()) == 1 else "s", n,
             store.current(), len(problems), "" if len(problems) == 1 else "s"))
    return 1 if problems else 0


def add_commands(sub: Any) -> None:
    sp = sub.add_parser("verify-store", help="check every stored version's blobs against their "
                                             "hashes (read-only; the daemon may be running)")
    sp.add_argument("--store", help="store directory (default: store.path of --config)")
    sp.add_argument("--config", "-c", help="config file (default %s)" % SYSTEM_CONFIG)
    sp.set_defaults(fn=cmd_verify_store)
