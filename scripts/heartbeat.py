#!/usr/bin/env python3
"""Run a command, pass its output through, and print a progress line whenever it has been
silent for a while: a long build of one file, a pip install, a test, a debootstrap stage.

    scripts/heartbeat.py [--every SECONDS] [--label TEXT] -- CMD [ARGS...]

stdout and stderr of CMD come through one pipe, unchanged (bytes, as they arrive). After
--every seconds (default 25) without output: "<label>: 12m 05s so far, quiet 25 s; last: ...",
with the last complete line seen; at the end "<label>: done in 21m 03s, exit status 0".
Exit status: CMD's. Python 3.6+, standard library only.
"""
import argparse
import os
import select
import subprocess
import sys
import time


def _clock(seconds):
    m, s = divmod(int(seconds), 60)
    return "%dm %02ds" % (m, s) if m else "%ds" % s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=float, default=25.0, help="seconds of silence before a progress line")
    ap.add_argument("--label", default="progress", help="what the progress lines start with")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # pytest's dots as they happen, not in 8 KiB blocks
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = sys.stdout.buffer
    fd = proc.stdout.fileno()
    t0 = last_out = last_beat = time.monotonic()
    last_line, partial, mid_line = b"", b"", False
    while True:
        wake = max(last_out, last_beat) + args.every
        ready, _, _ = select.select([fd], [], [], max(0.1, wake - time.monotonic()))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
            last_out = time.monotonic()
            mid_line = not chunk.endswith(b"\n")
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            done = [ln for ln in lines if ln.strip()]
            if done:
                last_line = done[-1]
        elif time.monotonic() >= wake:
            now = time.monotonic()
            shown = (partial if partial.strip() else last_line).decode("utf-8", "replace").strip()[-120:]
            out.write(("%s%s: %s so far, quiet %d s; last: %s\n" % (
                "\n" if mid_line else "", args.label, _clock(now - t0), now - last_out, shown)).encode())
            out.flush()
            mid_line = False
            last_beat = now  # the next one after another full silence
    rc = proc.wait()
    out.write(("%s%s: done in %s, exit status %d\n" % ("\n" if mid_line else "", args.label,
                                                         _clock(time.monotonic() - t0), rc)).encode())
    out.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
