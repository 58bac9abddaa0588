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
    sp.add_argument("--protocol", choices=("5", "3.1.1"), default="5",
                    help="MQTT protocol version (default 5; 3.1.1 for brokers such as RabbitMQ's)")
    sp.add_argument("--cafile", help="CA certificate that signed the broker's")
    sp.add_argument("--cert", help="client certificate (PEM)")
    sp.add_argument("--key", help="client key (PEM)")
    sp.add_argument("--username", help="broker user name")
    sp.add_argument("--password-file", help="file whose first line is the broker password")
    sp.add_argument("--client-id", help="default: refitd-<command>-<random>")
    sp.add_argument("--connect-timeout", type=float, default=15.0,
                    help="seconds to wait for the broker to accept the connection (default 15)")



def add_parsers(sub: Any) -> None:
    """The fleet commands of the ``refitd`` CLI."""
    from ..cli import add_command as command
    def push_args(sp):
        sp.add_argument("package", help="the weight package (.safetensors) to roll out")
        sp.add_argument("--fleet", required=True, help="the fleet name (refitd/<fleet>/...)")
        sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for outcomes")
        sp.add_argument("--expect", help="comma-separated device ids to wait for even if not yet seen")
        sp.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                        help="bytes per chunk (default %d; at most the broker's packet limit)" % DEFAULT_CHUNK)
        sp.add_argument("--no-share", action="store_true", help="plain subscription (broker without $share)")
        sp.add_argument("--no-serve", action="store_true", help="publish only; `refitd serve` replicas answer")
        sp.add_argument("--max-bytes-per-s", type=float, default=0.0, help="cap on chunk bytes sent (0: none)")
        sp.add_argument("--json", action="store_true", help="the devices' outcomes as one JSON object")
        sp.add_argument("--sig", metavar="FILE", help="the package's signature envelope (default "
                                                      "PACKAGE.sig when it exists; refitd sign writes it)")
        add_broker_args(sp)

    sp = command(sub, "push", "publish a package as the fleet's (or a group's) desired state and serve it",
                 "Publish PACKAGE's manifest as the retained desired state of the fleet (or of one "
                 "group), serve its chunks while it runs, and show each device's progress until "
                 "every targeted device has an outcome or --timeout passes.")
    push_args(sp)
    sp.add_argument("--group", help="only this group's devices (refitd/<fleet>/groups/<group>/desired)")
    sp.set_defaults(fn=_lazy("cmd_push"))

    sp = command(sub, "rollout", "canary group first, then the fleet; stop past --max-failures",
                 "Push PACKAGE to the canary group, wait until every canary reports it healthy "
                 "(its post-swap watch window passed), then widen to the whole fleet; stop as soon "
                 "as more than --max-failures devices fail.")
    push_args(sp)
    sp.add_argument("--canary", required=True, metavar="GROUP", help="the canary group, pushed to first")
    sp.add_argument("--max-failures", type=int, default=0, metavar="K",
                    help="failed devices tolerated before the rollout stops (default 0)")
    sp.add_argument("--restore", action="store_true", help="on stop, send the canaries back to the fleet's version")
    sp.set_defaults(fn=_lazy("cmd_rollout"))

    sp = command(sub, "serve", "weight server: answer chunk requests from the packages in a directory",
                 "Answer devices' chunk requests from the packages in --dir until stopped; "
                 "replicas share the requests through a shared subscription.")
    sp.add_argument("--dir", required=True, help="directory of weight packages to serve")
    sp.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                    help="bytes per chunk (default %d)" % DEFAULT_CHUNK)
    sp.add_argument("--max-bytes-per-s", type=float, default=0.0, help="cap on chunk bytes sent (0: none)")
    sp.add_argument("--no-share", action="store_true", help="plain subscription (broker without $share)")
    add_broker_args(sp)
    sp.set_defaults(fn=_lazy("cmd_serve"))

    sp = command(sub, "fleet", "the fleet as its devices report it")
    fsub = sp.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    st = command(fsub, "status", "one row per device (retained status and presence)")
    st.add_argument("--fleet", required=True, help="the fleet name")
    st.add_argument("--json", action="store_true", help="the table as one JSON object")
    st.add_argument("--wait", type=float, default=3.0, help="longest time to collect retained messages")
    st.add_argument("--quiet", type=float, default=0.5,
                    help="stop collecting after this many seconds without a new message (default 0.5)")
    st.add_argument("--expect", help="comma-separated device ids to show even when offline (brokers "
                                     "that send retained messages to exact subscriptions only)")
    add_broker_args(st)
    st.set_defaults(fn=_lazy("cmd_fleet_status"))
