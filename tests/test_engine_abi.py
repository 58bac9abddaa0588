"""The cffi declarations (refitd/_cdef.py) must say what native/include/refit.h says."""
import re
import subprocess
from pathlib import Path

from refitd import engine
from refitd._cdef import CDEF

HEADER = Path(__file__).resolve().parents[1] / "native" / "include" / "refit.h"


def _statements(text: str) -> set:
    text = re.sub(r"__attribute__\s*\(\((?:[^()]|\([^()]*\))*\)\)", " ", text)
    text = re.sub(r"\s+", " ", text)
    return {s.strip() for s in text.split(";") if "refit_" in s and "extern" not in s}


def test_cdef_matches_header():
    pre = subprocess.run(["cc", "-E", "-P", "-x", "c", str(HEADER)], check=True, capture_output=True, text=True)
    header, cdef = _statements(pre.stdout), _statements(CDEF)
    assert header - cdef == set(), "in refit.h but not in _cdef.py"
    assert cdef - header == set(), "in _cdef.py but not in refit.h"


def test_abi_version_matches_library():
    m = re.search(r"#define REFIT_ABI_VERSION (\d+)", HEADER.read_text())
    assert int(m.group(1)) == engine.ABI_VERSION
    assert engine._load().refit_abi_version() == engine.ABI_VERSION
    assert engine.library_version() == "0.1.0"
    assert "reference" in engine.backends()


def test_missing_library_names_each_place_tried(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "_lib", None)
    monkeypatch.setenv("REFITD_NATIVE_LIB", str(tmp_path / "nope.so"))
    try:
        engine._load()
    except engine.LibraryError as exc:
        assert "nope.so: not found" in str(exc) and "REFITD_NATIVE_LIB" in str(exc)
    else:
        raise AssertionError("a missing library must raise LibraryError")
