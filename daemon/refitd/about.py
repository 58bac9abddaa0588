"""What this install is, for `refitd --version`: the refitd package version, the librefit it
loads (version string, ABI), and the backends that librefit offers."""
from __future__ import annotations

from typing import Any, Dict, List


def package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported anyway
        return "unknown"
    try:
        return version("refitd")
    except PackageNotFoundError:  # run from a checkout without an install
        return "unknown (not installed)"


def _backend_names() -> List[str]:
    # the backends that load here (a refused plugin is listed by `refitd backends` with its reason)
    from . import engine
    return engine.backends()


def version_info() -> Dict[str, Any]:
    """Never raises: a librefit that does not load is reported, not fatal (--version is the
    first thing run when something is wrong)."""
    from . import engine
    info: Dict[str, Any] = {"refitd": package_version(), "abi": engine.ABI_VERSION}
    try:
        info["librefit"] = engine.library_version()
        info["backends"] = _backend_names()
    except Exception as e:  # LibraryError: what it says is the point
        info["librefit"] = None
        info["backends"] = []
        info["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return info


def format_version(info: Dict[str, Any]) -> str:
    if info.get("librefit") is None:
        return "refitd %s (librefit not loadable: %s)" % (info["refitd"], info.get("error"))
    return "refitd %s (librefit %s, ABI %s; backends: %s)" % (
        info["refitd"], info["librefit"], info["abi"], ", ".join(info["backends"]) or "none")
