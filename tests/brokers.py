"""Real MQTT brokers for the fleet tests: mosquitto (plain + TLS listeners on 127.0.0.1) and
RabbitMQ's MQTT plugin, each started as a process with a config written here, on free loopback
ports, and stopped after. Certificates (a CA, a server and a client certificate, and a client
certificate from a CA the broker does not trust) are made with the openssl command."""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Optional

MOSQUITTO = "/usr/sbin/mosquitto"
# the server itself, not /usr/sbin's wrapper (which, as root, su's to the rabbitmq user: it
# could not read the test's directories)
RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: Optional[subprocess.Popen] = None,
              log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("broker exited with %s:\n%s" % (proc.returncode, _tail(log)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("broker port %d not open after %.0f s:\n%s" % (port, timeout, _tail(log)))


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-3000:]
    except OSError:
        return ""


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_certs(d: str) -> Dict[str, str]:
    """A CA, a server cert for 127.0.0.1, a client cert, and a client cert signed by another CA
    (the broker must refuse it). Returns a name -> path map."""
    os.makedirs(d, exist_ok=True)
    ext = os.path.join(d, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 "/CN=%s" % ca, "-keyout", ca + ".key", "-out", ca + ".crt", cwd=d)
    for name, ca, extra in (("server", "ca", ["-extfile", "san.ext"]), ("client", "ca", []),
                            ("rogue-client", "rogue-ca", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name,
                 "-keyout", name + ".key", "-out", name + ".csr", cwd=d)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
                 "-CAcreateserial", "-days", "2", "-out", name + ".crt", *extra, cwd=d)
    return {n: os.path.join(d, n) for n in os.listdir(d)}


@dataclass
class Mosquitto:
    """One mosquitto process: ``port`` plain, ``tls_port`` TLS requiring a client certificate."""

    workdir: str
    certs: str = ""  # a make_certs directory (made under workdir when empty)
    port: int = 0
    tls_port: int = 0
    max_packet_size: int = 0
    extra: tuple = ()  # more config lines (bench: "sys_interval 1" for $SYS byte counters)
    proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.port

    @property
    def tls_url(self) -> str:
        return "mqtts://127.0.0.1:%d" % self.tls_port

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "mosquitto.log")

    def cert(self, name: str) -> str:
        return os.path.join(self.certs, name)

    def write_config(self) -> str:
        if not self.port:
            self.port = free_port()
            self.tls_port = free_port()
            if not self.certs:
                self.certs = os.path.join(self.workdir, "certs")
                make_certs(self.certs)
        conf = os.path.join(self.workdir, "mosquitto.conf")
        lines = [
            # as root mosquitto drops to user "mosquitto", who cannot read the test's files
            "user %s" % getpass.getuser(),
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",
            "persistence_location %s/" % self.workdir,
            "log_dest file %s" % self.log_path,
            "log_type error", "log_type warning", "log_type notice",
            "listener %d 127.0.0.1" % self.port,
            "listener %d 127.0.0.1" % self.tls_port,
            "cafile %s" % self.cert("ca.crt"),
            "certfile %s" % self.cert("server.crt"),
            "keyfile %s" % self.cert("server.key"),
            "require_certificate true",
            "use_identity_as_username true",
        ]
        lines += list(self.extra)
        if self.max_packet_size:
            lines.append("max_packet_size %d" % self.max_packet_size)
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return conf

    def start(self) -> "Mosquitto":
        if not os.path.exists(MOSQUITTO):
            raise AssertionError("%s missing: scripts/setup.sh installs the mosquitto package"
                                 % MOSQUITTO)
        conf = self.write_config()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc, log=self.log_path)
        wait_port(self.tls_port, proc=self.proc, log=self.log_path)
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def restart(self) -> None:
        self.kill9()
        self.start()


class RabbitMQ:
    """rabbitmq-server with the MQTT plugin (3.1.1), its node, data and listeners confined to
    ``workdir`` and 127.0.0.1. Needs Debian's rabbitmq-server package."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.port

    def env(self) -> Dict[str, str]:
        e = dict(os.environ)
        w = self.workdir
        e.update({
            "RABBITMQ_NODENAME": "refitd-test-%d@localhost" % self.port,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": os.path.join(w, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(w, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(w, "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(w, "enabled_plugins"),
            "RABBITMQ_PID_FILE": os.path.join(w, "rabbit.pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(w, "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(w, "plugins-expand"),
            "HOME": w,
        })
        return e

    def start(self, timeout: float = 300.0) -> "RabbitMQ":  # ~20 s idle; minutes on a loaded box
        if not os.path.exists(RABBITMQ):
            raise AssertionError("%s missing: install Debian's rabbitmq-server" % RABBITMQ)
        os.makedirs(os.path.join(self.workdir, "log"), exist_ok=True)
        with open(os.path.join(self.workdir, "rabbitmq.conf"), "w") as f:
            f.write("listeners.tcp.1 = 127.0.0.1:%d\n" % self.amqp_port)
            f.write("mqtt.listeners.tcp.1 = 127.0.0.1:%d\n" % self.port)
            f.write("mqtt.allow_anonymous = true\n")
            f.write("loopback_users = none\n")
            f.write("management_agent.disable_metrics_collector = true\n")
        with open(os.path.join(self.workdir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        self.log = os.path.join(self.workdir, "server.out")
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([RABBITMQ], env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        try:
            wait_port(self.port, timeout=timeout, proc=self.proc, log=self.log)
        except BaseException:
            self.kill9()  # no Erlang VM left behind by a failed start
            raise
        return self

    def kill9(self) -> None:
        """SIGKILL to the server's process group (the beam VM and its helpers)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self.kill9()  # the script is gone; its VM may not be
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server runs beam + its helpers
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of the group outlived the script (the beam VM) goes too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
