#!/usr/bin/env python3
"""Give a refitd wheel the platform tag of the library inside it, after checking that library.

    retag_wheel.py WHEEL --arch aarch64 [--glibc 2.17] [-o OUTDIR]

scikit-build-core names a wheel after the host that built it (py3-none-linux_x86_64) even when
CMake cross-compiled librefit with toolchain/zig-<arch>.cmake. The library is loaded with cffi in
ABI mode, so the wheel is Python-version independent (py3-none) but platform specific. This script
 1. checks every .so in the wheel: ELF machine == --arch, highest GLIBC_x.y needed <= --glibc;
 2. rewrites the Tag line of .dist-info/WHEEL to py3-none-manylinux_2_17_<arch>.manylinux2014_<arch>
    (the manylinux tag for the glibc floor; 2.17 == manylinux2014);
 3. regenerates .dist-info/RECORD (sha256 + size of every file) and writes the renamed wheel.
Prints the path of the new wheel.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_glibc import highest_glibc, parse_elf, version_key  # noqa: E402


def platform_tag(arch: str, glibc: str) -> str:
    major, minor = (int(x) for x in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{minor}_{arch}"]
    legacy = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
    if (major, minor) in legacy:
        tags.append(f"{legacy[(major, minor)]}_{arch}")
    return ".".join(tags)


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def retag(wheel: str, arch: str, glibc: str, outdir: str) -> str:
    base = os.path.basename(wheel)
    m = re.match(r"^(?P<dist>[^-]+)-(?P<ver>[^-]+)(?:-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$", base)
    if not m:
        raise SystemExit(f"retag_wheel: not a wheel file name: {base}")
    plat = platform_tag(arch, glibc)
    with zipfile.ZipFile(wheel) as zin:
        infos = zin.infolist()
        contents = {i.filename: zin.read(i.filename) for i in infos}
    sos = [n for n in contents if n.rsplit("/", 1)[-1].endswith(".so") or ".so." in n.rsplit("/", 1)[-1]]
    if not sos:
        raise SystemExit(f"retag_wheel: {base} holds no shared library")
    for name in sos:
        info = parse_elf(contents[name])
        if info["machine"] != arch:
            raise SystemExit(f"retag_wheel: {name} is {info['machine']}, not {arch}")
        top = highest_glibc(info)
        if top and version_key(top) > version_key(glibc):
            syms = ", ".join(sorted(info["symbols"].get(f"GLIBC_{top}", []))[:8])
            raise SystemExit(f"retag_wheel: {name} needs GLIBC_{top} > {glibc} ({syms})")
        print(f"retag_wheel: {name}: {arch}, highest GLIBC_{top}", file=sys.stderr)
    distinfo = next(n.split("/")[0] for n in contents if n.split("/")[0].endswith(".dist-info"))
    wheel_meta = contents[f"{distinfo}/WHEEL"].decode()
    lines = [ln for ln in wheel_meta.splitlines()
             if ln.strip() and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
    lines.append("Root-Is-Purelib: false")
    for p in plat.split("."):
        lines.append(f"Tag: py3-none-{p}")
    contents[f"{distinfo}/WHEEL"] = ("\n".join(lines) + "\n").encode()
    record_name = f"{distinfo}/RECORD"
    order = [i.filename for i in infos if i.filename != record_name]
    record = "\n".join([record_line(n, contents[n]) for n in order] + [f"{record_name},,"]) + "\n"
    contents[record_name] = record.encode()
    order.append(record_name)
    build = f"-{m['build']}" if m["build"] else ""
    out = os.path.join(outdir, f"{m['dist']}-{m['ver']}{build}-py3-none-{plat}.whl")
    os.makedirs(outdir, exist_ok=True)
    tmp = out + ".tmp"
    modes = {i.filename: i.external_attr for i in infos}
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for n in order:
            zi = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = modes.get(n, 0o644 << 16)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(zi, contents[n])
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel")
    ap.add_argument("--arch", required=True, choices=["aarch64", "x86_64"])
    ap.add_argument("--glibc", default="2.17")
    ap.add_argument("-o", "--outdir", default=None)
    a = ap.parse_args(argv)
    print(retag(a.wheel, a.arch, a.glibc, a.outdir or os.path.dirname(os.path.abspath(a.wheel))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
