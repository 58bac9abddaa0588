#!/usr/bin/env python3
"""Check the glibc symbol versions an ELF shared object needs (its .gnu.version_r section).

    check_glibc.py [--max 2.17] [--json] PATH...

PATH is a shared object, a directory (searched for *.so and *.so.*) or a wheel (.whl, its .so
members are checked). For every file it prints the machine, the highest GLIBC_x.y version it
requires, and the symbols that need it. Exit status: 0 if every file needs at most --max, 1 if
some file needs more, 2 if no ELF file was found or a file is not a valid ELF object.

The ELF is parsed here with struct (no binutils needed): section headers -> SHT_GNU_verneed
(.gnu.version_r: which versions of which libraries are needed), SHT_GNU_versym (.gnu.version: the
version index of each dynamic symbol) and SHT_DYNSYM (.dynsym) to name the symbols.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import sys
import zipfile

SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
GLIBC_RE = re.compile(r"^GLIBC_(\d+(?:\.\d+)*)$")


class ElfError(ValueError):
    pass


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _cstr(blob: bytes, off: int) -> str:
    end = blob.find(b"\0", off)
    if off >= len(blob) or end < 0:
        raise ElfError(f"string offset {off} outside its table")
    return blob[off:end].decode("ascii", "replace")


def parse_elf(data: bytes) -> dict:
    """Return {'machine', 'needs': {lib: [versions]}, 'symbols': {version: [names]}}."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ElfError("bad ELF class/data")
    end = "<" if ei_data == 1 else ">"
    is64 = ei_class == 2
    if is64:
        (e_type, e_machine, _ver, _entry, _phoff, e_shoff, _flags, _ehsize, _phentsize, _phnum,
         e_shentsize, e_shnum, _shstrndx) = struct.unpack_from(end + "HHIQQQIHHHHHH", data, 16)
        sh_fmt, sym_size = end + "IIQQQQIIQQ", 24
    else:
        (e_type, e_machine, _ver, _entry, _phoff, e_shoff, _flags, _ehsize, _phentsize, _phnum,
         e_shentsize, e_shnum, _shstrndx) = struct.unpack_from(end + "HHIIIIIHHHHHH", data, 16)
        sh_fmt, sym_size = end + "IIIIIIIIII", 16
    if e_shoff == 0 or e_shnum == 0:
        raise ElfError("no section headers")
    if e_shoff + e_shnum * e_shentsize > len(data):
        raise ElfError("section headers outside the file")
    sections = []
    for i in range(e_shnum):
        (_name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, sh_info, _align,
         _entsize) = struct.unpack_from(sh_fmt, data, e_shoff + i * e_shentsize)
        if sh_type != 8 and sh_offset + sh_size > len(data):  # 8 = SHT_NOBITS
            raise ElfError(f"section {i} outside the file")
        sections.append((sh_type, sh_offset, sh_size, sh_link, sh_info))

    def body(idx: int) -> bytes:
        _t, off, size, _l, _i = sections[idx]
        return data[off:off + size]

    needs: dict[str, list[str]] = {}
    index_to_version: dict[int, str] = {}
    for sh_type, off, size, link, info in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strtab = body(link)
        pos, count = off, info  # sh_info = number of Verneed entries
        for _ in range(count):
            vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from(end + "HHIII", data, pos)
            if vn_version != 1:
                raise ElfError(f"unknown Verneed version {vn_version}")
            lib = _cstr(strtab, vn_file)
            apos = pos + vn_aux
            for _ in range(vn_cnt):
                _hash, _flags, vna_other, vna_name, vna_next = struct.unpack_from(end + "IHHII", data, apos)
                name = _cstr(strtab, vna_name)
                needs.setdefault(lib, []).append(name)
                index_to_version[vna_other] = name
                if not vna_next:
                    break
                apos += vna_next
            if not vn_next:
                break
            pos += vn_next

    symbols: dict[str, list[str]] = {}
    dynsym = next((i for i, s in enumerate(sections) if s[0] == SHT_DYNSYM), None)
    versym = next((i for i, s in enumerate(sections) if s[0] == SHT_GNU_VERSYM), None)
    if dynsym is not None and versym is not None:
        syms, names = body(dynsym), body(sections[dynsym][3])
        vers = body(versym)
        for i in range(min(len(syms) // sym_size, len(vers) // 2)):
            (idx,) = struct.unpack_from(end + "H", vers, 2 * i)
            version = index_to_version.get(idx & 0x7FFF)
            if version is None:
                continue
            (st_name,) = struct.unpack_from(end + "I", syms, i * sym_size)
            symbols.setdefault(version, []).append(_cstr(names, st_name))
    return {"machine": MACHINES.get(e_machine, f"e_machine={e_machine}"),
            "type": {2: "exec", 3: "dyn"}.get(e_type, str(e_type)),
            "needs": needs, "symbols": symbols}


def highest_glibc(info: dict) -> str | None:
    found = [m.group(1) for vs in info["needs"].values() for v in vs if (m := GLIBC_RE.match(v))]
    return max(found, key=version_key) if found else None


def iter_targets(paths):
    """Yield (display name, bytes) for every ELF shared object under the given paths."""
    for path in paths:
        if os.path.isdir(path):
            for root, _dirs, files in sorted(os.walk(path)):
                for f in sorted(files):
                    if f.endswith(".so") or ".so." in f:
                        full = os.path.join(root, f)
                        if os.path.isfile(full) and not os.path.islink(full):
                            with open(full, "rb") as fh:
                                yield full, fh.read()
        elif path.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    base = member.rsplit("/", 1)[-1]
                    if base.endswith(".so") or ".so." in base:
                        yield f"{path}!{member}", zf.read(member)
        else:
            with open(path, "rb") as fh:
                yield path, fh.read()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--max", default="2.17", help="highest glibc version allowed (default 2.17)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per file")
    args = ap.parse_args(argv)
    limit = version_key(args.max)
    seen = bad = broken = 0
    overall = None
    for name, data in iter_targets(args.paths):
        if data[:4] != b"\x7fELF":
            continue
        seen += 1
        try:
            info = parse_elf(data)
        except (ElfError, struct.error) as exc:
            print(f"{name}: invalid ELF: {exc}", file=sys.stderr)
            broken += 1
            continue
        top = highest_glibc(info)
        ok = top is None or version_key(top) <= limit
        bad += not ok
        if top and (overall is None or version_key(top) > version_key(overall)):
            overall = top
        culprits = sorted(info["symbols"].get(f"GLIBC_{top}", [])) if top else []
        if args.json:
            print(json.dumps({"file": name, "machine": info["machine"], "highest_glibc": top,
                              "ok": ok, "symbols": culprits, "needs": info["needs"]}))
        else:
            verdict = "ok" if ok else f"TOO NEW (> {args.max})"
            shown = ", ".join(culprits[:8]) + (" ..." if len(culprits) > 8 else "")
            print(f"{name}: {info['machine']}: highest GLIBC_{top or '(none)'} {verdict}"
                  + (f" [{shown}]" if shown else ""))
    if not seen:
        print(f"check_glibc: no ELF shared objects in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    if not args.json:
        print(f"check_glibc: {seen} file(s), highest required GLIBC_{overall or '(none)'}, "
              f"limit {args.max}: {'FAIL' if bad else 'ok'}")
    if broken:
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
