"""The fleet subcommands of the ``refitd`` CLI (push, rollout, serve, fleet status). Their code
is in ``operator``, imported only when one runs, so the daemon's own commands never load the
MQTT client."""
from __future__ import annotations

import sys
from typing import Any

DEFAULT_CHUNK = 124 << 10  # = manifest.DEFAULT_CHUNK (not imported: keep this module light)


def _lazy(name: str):
    def run(args: Any) -> int:
        from . import operator
        try:
            return getattr(operator, name)(args)
        except operator.OperatorError as e:
            sys.stderr.write("refitd: %s\n" % e)
            return e.code
    return run


def add_broker_args(sp: Any) -> None:
    sp.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    sp.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    sp.add_argument("--cafile", help="CA certificate that signed the broker's")
    sp.add_argument("--cert", help="client certificate (PEM)")
    sp.add_argument("--key", help="client key (PEM)")
    sp.add_argument("--username")
    sp.add_argument("--password-file")
    sp.add_argument("--client-id", help="default: refitd-<command>-<random>")
    sp.add_argument("--connect-timeout", type=float, default=15.0)



def add_parsers(sub: Any) -> None:
    """The fleet commands of the ``refitd`` CLI."""
    def push_args(sp):
        sp.add_argument("package")
        sp.add_argument("--fleet", required=True)
        sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for outcomes")
        sp.add_argument("--expect", help="comma-separated device ids to wait for even if not yet seen")
        sp.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
        sp.add_argument("--no-share", action="store_true", help="plain subscription (broker without $share)")
        sp.add_argument("--no-serve", action="store_true", help="publish only; `refitd serve` replicas answer")
        sp.add_argument("--max-bytes-per-s", type=float, default=0.0, help="cap on chunk bytes sent (0: none)")
        sp.add_argument("--json", action="store_true")
        add_broker_args(sp)

    sp = sub.add_parser("push", help="publish a package as the fleet's (or a group's) desired state and serve it")
    push_args(sp)
    sp.add_argument("--group")
    sp.set_defaults(fn=_lazy("cmd_push"))

    sp = sub.add_parser("rollout", help="canary group first, then the fleet; stop past --max-failures")
    push_args(sp)
    sp.add_argument("--canary", required=True, metavar="GROUP")
    sp.add_argument("--max-failures", type=int, default=0, metavar="K")
    sp.add_argument("--restore", action="store_true", help="on stop, send the canaries back to the fleet's version")
    sp.set_defaults(fn=_lazy("cmd_rollout"))

    sp = sub.add_parser("serve", help="weight server: answer chunk requests from the packages in a directory")
    sp.add_argument("--dir", required=True)
    sp.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    sp.add_argument("--max-bytes-per-s", type=float, default=0.0, help="cap on chunk bytes sent (0: none)")
    sp.add_argument("--no-share", action="store_true", help="plain subscription (broker without $share)")
    add_broker_args(sp)
    sp.set_defaults(fn=_lazy("cmd_serve"))

    sp = sub.add_parser("fleet", help="the fleet as its devices report it")
    fsub = sp.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    st = fsub.add_parser("status", help="one row per device (retained status and presence)")
    st.add_argument("--fleet", required=True)
    st.add_argument("--json", action="store_true")
    st.add_argument("--wait", type=float, default=3.0, help="longest time to collect retained messages")
    st.add_argument("--quiet", type=float, default=0.5)
    st.add_argument("--expect", help="comma-separated device ids to show even when offline (brokers "
                                     "that send retained messages to exact subscriptions only)")
    add_broker_args(st)
    st.set_defaults(fn=_lazy("cmd_fleet_status"))
