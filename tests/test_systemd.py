"""The service unit and its sysusers.d / tmpfiles.d files, checked by systemd's own tools
(installed by scripts/setup.sh): `systemd-analyze verify`, the offline security score (<= 2.5),
and systemd-sysusers / systemd-tmpfiles run into a scratch root."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from daemon_helpers import ROOT

UNIT = ROOT / "systemd" / "refitd.service"
MAX_EXPOSURE = 2.5


def _tool(name):
    path = shutil.which(name) or ("/usr/bin/" + name if os.path.exists("/usr/bin/" + name) else None)
    assert path, "%s is missing: scripts/setup.sh installs systemd" % name
    return path


def _unit_copy(tmp_path):
    """The unit as install.sh writes it, pointing at this checkout's refitd."""
    refitd = shutil.which("refitd") or os.path.join(os.path.dirname(sys.executable), "refitd")
    text = UNIT.read_text().replace("/opt/refitd/bin/refitd", refitd)
    dest = tmp_path / "refitd.service"
    dest.write_text(text)
    return dest


def test_systemd_analyze_verify_is_clean(tmp_path):
    unit = _unit_copy(tmp_path)
    r = subprocess.run([_tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    # verify also reports unrelated units of the host that it loads as dependencies; only
    # lines about our unit count
    ours = [l for l in (r.stdout + r.stderr).splitlines() if "refitd.service" in l]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_security_exposure_at_most_2_5(tmp_path):
    unit = _unit_copy(tmp_path)
    r = subprocess.run([_tool("systemd-analyze"), "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for refitd\.service: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, m.group(0)


def test_sysusers_and_tmpfiles_into_a_scratch_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group"):
        (root / "etc" / f).write_text("root:x:0:0:root:/root:/bin/sh\n" if f == "passwd" else "root:x:0:\n")
    r = subprocess.run([_tool("systemd-sysusers"), "--root", str(root),
                        str(ROOT / "systemd" / "refitd.sysusers.conf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^refitd:x:\d+:\d+:refitd weight-refit daemon:/var/lib/refitd:/usr/sbin/nologin$",
                     passwd, re.M), passwd
    r = subprocess.run([_tool("systemd-tmpfiles"), "--root", str(root), "--create",
                        str(ROOT / "systemd" / "refitd.tmpfiles.conf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for d in ("var/lib/refitd", "var/lib/refitd/incoming", "var/lib/refitd/trust", "etc/refitd"):
        st = os.stat(root / d)
        assert oct(st.st_mode & 0o777) == "0o750", d
