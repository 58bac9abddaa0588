#!/usr/bin/env python3
"""Check that a bundle's wheels/ directory can satisfy refitd offline on every target Python.

    check_bundle.py WHEELS_DIR --arch aarch64 --pythons "3.9 3.10 3.11 3.12" [--root refitd]

`pip download --python-version X` picks wheels for X but evaluates dependency markers
(`; python_version < "3.11"`) for the Python running pip, so a backport needed only on an older
target can silently be missing. This walks the dependency tree per target Python with the markers
evaluated for *that* Python and platform, and fails naming each requirement no bundled wheel meets.
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.markers import Marker  # noqa: F401
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_info(path: Path):
    # name-version(-build)?-py-abi-plat.whl
    parts = path.name[:-4].split("-")
    name, version, py, abi, plat = parts[0], parts[1], parts[-3], parts[-2], parts[-1]
    with zipfile.ZipFile(path) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode("utf-8", "replace"))
    return {"name": norm(name), "version": Version(version), "py": py.split("."), "abi": abi.split("."),
            "plat": plat.split("."), "requires": meta.get_all("Requires-Dist") or [],
            "requires_python": meta.get("Requires-Python"), "file": path.name}


def compatible(w, pyver: str, arch: str) -> bool:
    major, minor = (int(x) for x in pyver.split("."))
    cp = f"cp{major}{minor}"
    if not any(p == "any" or p.endswith("_" + arch) for p in w["plat"]):
        return False
    for py in w["py"]:
        for abi in w["abi"]:
            if py in (cp, "py3", f"py{major}{minor}") and abi in ("none", cp):
                return True
            if abi == "abi3" and py.startswith("cp3") and int(py[3:]) <= minor:
                return True
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheels")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--pythons", required=True)
    ap.add_argument("--root", default="refitd")
    a = ap.parse_args(argv)
    wheels = [wheel_info(p) for p in sorted(Path(a.wheels).glob("*.whl"))]
    problems = []
    for pyver in a.pythons.split():
        env = {"python_version": pyver, "python_full_version": pyver + ".0", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "platform_machine": a.arch, "sys_platform": "linux",
               "platform_system": "Linux", "os_name": "posix", "extra": ""}

        def best(req: Requirement):
            cands = [w for w in wheels if w["name"] == norm(req.name) and compatible(w, pyver, a.arch)
                     and req.specifier.contains(w["version"], prereleases=True)
                     and (not w["requires_python"]
                          or SpecifierSet(w["requires_python"]).contains(pyver + ".0", prereleases=True))]
            return max(cands, key=lambda w: w["version"]) if cands else None

        todo, chosen = [Requirement(a.root)], {}
        while todo:
            req = todo.pop()
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            w = best(req)
            if w is None:
                problems.append(f"Python {pyver}: nothing in {a.wheels} satisfies {req}")
                continue
            if w["name"] in chosen:
                continue
            chosen[w["name"]] = w
            for r in w["requires"]:
                r = Requirement(r)
                if r.marker is None or r.marker.evaluate(env):
                    todo.append(r)
        print(f"check_bundle: Python {pyver} ({a.arch}): "
              + ", ".join(f"{w['name']} {w['version']}" for w in sorted(chosen.values(), key=lambda w: w["name"])))
    for p in problems:
        print("check_bundle: MISSING " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
