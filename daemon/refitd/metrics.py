"""Optional Prometheus text endpoint (stdlib http.server in a thread, loopback only).

    GET /metrics  ->  text/plain; version=0.0.4

Metrics:
  refitd_serving_version                 gauge    weight version the engine serves
  refitd_inferences_total                counter  inferences run (ok + failed)
  refitd_inference_errors_total          counter  inferences that failed
  refitd_inference_latency_seconds       histogram (buckets, _sum, _count; successful ones)
  refitd_inferences_per_second           gauge    over the last few seconds
  refitd_updates_total{outcome=...}      counter  applied | rejected | rolled_back | rollback_failed
  refitd_uptime_seconds                  gauge
  refitd_up                              gauge    1
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple

from .runner import LATENCY_BUCKETS

__all__ = ["MetricsServer", "render", "UpdateCounter"]


class UpdateCounter:
    """Counts update events by outcome (an Events listener)."""

    KINDS = {"update.applied": "applied", "update.rejected": "rejected",
             "update.rolled_back": "rolled_back", "update.rollback_failed": "rollback_failed"}

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Dict[str, int] = {v: 0 for v in self.KINDS.values()}

    def __call__(self, kind: str, fields: Dict[str, Any]) -> None:
        outcome = self.KINDS.get(kind)
        if outcome is not None:
            with self._lock:
                self.counts[outcome] += 1

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.counts)


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


def render(serving_version: Optional[int], stats: Dict[str, Any], updates: Dict[str, int],
           uptime: float) -> str:
    out = []

    def metric(name, mtype, help_, samples):
        out.append("# HELP %s %s" % (name, help_))
        out.append("# TYPE %s %s" % (name, mtype))
        for labels, value in samples:
            lab = "{%s}" % ",".join('%s="%s"' % kv for kv in labels) if labels else ""
            out.append("%s%s %s" % (name, lab, _fmt(value)))

    metric("refitd_up", "gauge", "1 while the daemon runs.", [((), 1)])
    metric("refitd_serving_version", "gauge", "Weight version the engine serves.",
           [((), serving_version if serving_version is not None else -1)])
    metric("refitd_uptime_seconds", "gauge", "Seconds since the daemon started.", [((), round(uptime, 3))])
    metric("refitd_inferences_total", "counter", "Inferences run, including failed ones.",
           [((), stats["inferences_total"])])
    metric("refitd_inference_errors_total", "counter", "Inferences that failed.",
           [((), stats["errors_total"])])
    metric("refitd_inferences_per_second", "gauge", "Inference rate over the last few seconds.",
           [((), round(stats.get("per_second") or 0.0, 3))])
    samples = []
    cum = 0
    for le, n in zip(list(LATENCY_BUCKETS) + [float("inf")], stats["buckets"]):
        cum += n
        samples.append(((("le", _fmt(le)),), cum))
    name = "refitd_inference_latency_seconds"
    out.append("# HELP %s Latency of successful inferences." % name)
    out.append("# TYPE %s histogram" % name)
    for labels, value in samples:
        out.append('%s_bucket{le="%s"} %d' % (name, labels[0][1], value))
    out.append("%s_sum %s" % (name, _fmt(float(stats["latency_sum"]))))
    out.append("%s_count %d" % (name, cum))
    metric("refitd_updates_total", "counter", "Weight updates by outcome.",
           [((("outcome", k),), v) for k, v in sorted(updates.items())])
    return "\n".join(out) + "\n"


class MetricsServer:
    """Serves ``collect()`` (-> text) at http://HOST:PORT/metrics."""

    def __init__(self, listen: Tuple[str, int], collect: Callable[[], str]):
        self.listen = listen
        self.collect = collect
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        collect = self.collect

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                body = collect().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # quiet: scrapes are not events
                pass

        host, port = self.listen
        if ":" in host:
            import socket

            class Server6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            self._httpd = Server6((host, port), Handler)
        else:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="refitd-metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else 0

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
