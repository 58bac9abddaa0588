"""Fleet convergence through one mosquitto: N real refitd daemons (the MQTT channel, reference
backend, a chain model of 10 weights, 8 MiB a package) converge on a new version, then on one
with 1 of its 10 tensors changed. Prints one JSON object: time to converge, broker bytes in and
out ($SYS counters), bytes each device received (counted by the device) / package bytes and /
changed bytes; writes a PNG of devices applied over time when matplotlib is installed
(``pip install .[bench]``).

    .venv/bin/python bench/fleet.py [--devices 50] [--png bench/fleet.png]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "daemon")]

from brokers import Mosquitto  # noqa: E402
from hostinfo import cpu_model  # noqa: E402
from daemon_helpers import fingerprint, rmtree, short_dir  # noqa: E402
from fleet_helpers import Device, TestClient, cli  # noqa: E402

N_T, SIZE = 10, 209715  # 10 x 0.8 MiB = 8 MiB of float32
FLEET = "bench"


def weights(version, changed=None, base=0):
    import numpy as np
    out = {}
    for i in range(N_T):
        v = version if changed is None or i in changed else base
        out["w%d" % i] = np.random.default_rng(1000 * v + i).standard_normal(SIZE).astype(np.float32) + v
    return out


class Watch:
    """Timestamps when each device's retained status first shows a version, and the broker's
    $SYS byte counters."""

    def __init__(self, url, ids):
        self.c = TestClient(url, "bench-watch")
        self.applied = {}  # version -> {device: t}
        self.sys = {}
        for i in ids:
            self.c.subscribe("refitd/%s/devices/%s/status" % (FLEET, i))
        self.c.subscribe("$SYS/broker/bytes/#")

    def start(self):
        import threading
        self._stop = threading.Event()

        def run():
            while not self._stop.wait(0.05):
                self.drain()
        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def drain(self):
        while not self.c.inbox.empty():
            m = self.c.inbox.get()
            if m.topic.startswith("$SYS"):
                self.sys[m.topic.rsplit("/", 1)[1]] = int(m.payload)
                continue
            st = json.loads(m.payload)
            self.applied.setdefault(st["serving_version"], {}).setdefault(st["device"], time.monotonic())

    def bytes(self):
        time.sleep(1.5)  # sys_interval 1
        return dict(self.sys)


def phase(args, watch, devs, pkg, version, changed_bytes):
    before = watch.bytes()
    t0 = time.monotonic()
    r = cli("push", pkg, "--fleet", FLEET, "--broker", args.url, "--timeout", str(args.timeout),
            "--expect", ",".join(d.id for d in devs), "--json", timeout=args.timeout + 60)
    t1 = time.monotonic()
    if r.returncode != 0:
        raise SystemExit("push of version %d failed: %s" % (version, (r.stderr or r.stdout)[-2000:]))
    after = watch.bytes()
    received = []
    for d in devs:
        ev = [e for e in d.mqtt_events("update.applied") if e.get("version") == version]
        received.append(ev[-1]["received"])
    size = os.path.getsize(pkg)
    times = sorted(t - t0 for t in watch.applied.get(version, {}).values())
    return {
        "version": version, "package_bytes": size, "changed_bytes": changed_bytes,
        "seconds_to_converge": round(t1 - t0, 2),
        "broker_bytes_in": after.get("received", 0) - before.get("received", 0),
        "broker_bytes_out": after.get("sent", 0) - before.get("sent", 0),
        "device_received_max": max(received), "device_received_mean": sum(received) / len(received),
        "received_over_package_max": round(max(received) / size, 4),
        "received_over_changed_max": round(max(received) / changed_bytes, 4),
        "applied_after_s": [round(t, 2) for t in times],
    }


def plot(path, results):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install .[bench]): no PNG"
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ts = r["applied_after_s"]
        what = "1 of 10 tensors changed" if r["changed_bytes"] < r["package_bytes"] // 2 else "new 8 MiB"
        ax.step(ts, range(1, len(ts) + 1), where="post", label="version %d (%s)" % (r["version"], what))
    ax.set_xlabel("seconds since push")
    ax.set_ylabel("devices serving the version")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--png", default=os.path.join(ROOT, "bench", "fleet.png"))
    args = ap.parse_args()
    from conftest import add_chain_model
    from refitd.pack import write_package
    work = short_dir("bfleet")
    broker = Mosquitto(os.path.join(work, "broker"), extra=("sys_interval 1",))
    os.makedirs(broker.workdir)
    broker.start()
    args.url = broker.url
    devs = []
    try:
        model = str(add_chain_model(os.path.join(work, "chain.onnx"), N_T, SIZE))
        fp = fingerprint(model)
        for i in range(args.devices):
            d = Device(os.path.join(work, "d%03d" % i), model, broker.url, FLEET, "d%03d" % i,
                       status_period=10.0, request_timeout=10.0, backoff_max=10.0, rate=1.0)
            devs.append(d.start(wait=False))
        for d in devs:
            d.wait_ready(300)
        watch = Watch(broker.url, [d.id for d in devs]).start()
        v1 = write_package(os.path.join(work, "v1.safetensors"), weights(1), version=1, model=fp)
        v2 = write_package(os.path.join(work, "v2.safetensors"), weights(2, changed=[3], base=1),
                           version=2, model=fp)
        res = [phase(args, watch, devs, v1, 1, N_T * SIZE * 4),
               phase(args, watch, devs, v2, 2, SIZE * 4)]
        out = {"bench": "fleet", "devices": args.devices, "cpu": cpu_model(), "cores": os.cpu_count(),
               "kernel": platform.release(), "broker": "mosquitto (loopback)",
               "full": res[0], "partial": res[1], "png": plot(args.png, res)}
        print(json.dumps(out))
    finally:
        for d in devs:
            print("log", d.log_path, file=sys.stderr) if os.environ.get("BENCH_KEEP") else None
            d.stop()
        broker.stop()
        if not os.environ.get("BENCH_KEEP"):
            rmtree(work)


if __name__ == "__main__":
    main()
