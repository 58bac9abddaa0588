"""The config schema on pydantic v2: a section is a ``@section`` class, a pydantic dataclass
with unknown keys forbidden (``extra="forbid"``), whose fields are ``_f(default, kind, doc)``:
the description (``Field(description=doc)``, what config/refitd.yaml and docs are checked
against) and a converter run as pydantic's validator. The converters (``k_*``) word refitd's
messages ("must be an integer >= 1, got 0"); pydantic collects every failing field at once and
``_build`` turns each of its errors into a ``Problem`` with the key path, the YAML line and, for
an unknown key, a did-you-mean. ``_build_typed`` validates a plugin's config through the
discriminated union on ``type`` of the plugins registered for its kind (plugins.py).

Sections stay dataclasses (``dataclasses.fields`` / ``replace`` work on them); config.py
assembles them, plugin modules declare theirs with the same ``section`` and converters.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Tuple, Type, Union

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic_core import PydanticCustomError

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL


# ---- problems --------------------------------------------------------------------------------

@dataclass
class Problem:
    """One config mistake: the dotted key path, the cause, and the YAML line when known."""
    path: str
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        where = " (line %d)" % self.line if self.line else ""
        if not self.path:
            return self.message + where
        return "%s: %s%s" % (self.path, self.message, where)


class ConfigError(Exception):
    """Raised with every problem found; ``str()`` is a multi-line report."""

    def __init__(self, problems: List[Problem], origin: Optional[str] = None):
        # In file order where lines are known (then in discovery order).
        self.problems = sorted(problems, key=lambda p: p.line if p.line else 1 << 30)
        self.origin = origin
        super().__init__(self.report())

    def report(self) -> str:
        head = self.origin or "config"
        if len(self.problems) == 1:
            text = str(self.problems[0])
            return text if text.startswith(head + ":") else "%s: %s" % (head, text)
        lines = ["%s: %d problems" % (head, len(self.problems))]
        lines += ["  %s" % p for p in self.problems]
        return "\n".join(lines)


def _show(value: Any) -> str:
    """A value as it appears in an error message: JSON-ish, short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Ctx:
    """Collects problems while one document is validated."""

    def __init__(self, lines: Optional[Dict[Tuple[str, ...], int]] = None, base_dir: Optional[Path] = None):
        self.problems: List[Problem] = []
        self.lines = lines or {}
        self.base_dir = base_dir

    def add(self, path: Tuple[str, ...], message: str) -> None:
        line = None
        p = tuple(path)
        while p and line is None:  # nearest known line: the key itself or its parent
            line = self.lines.get(p)
            p = p[:-1]
        self.problems.append(Problem(_dotted(path), message, line))


def _dotted(path: Tuple[str, ...]) -> str:
    out = ""
    for part in path:
        if part.startswith("["):
            out += part
        else:
            out += ("." if out else "") + part
    return out


# ---- field kinds -----------------------------------------------------------------------------
# Each converter takes (value, path, ctx) and returns the converted value or _BAD (after adding
# a problem). Converters never raise.

_BAD = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def k_int(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Callable:
    def conv(v, path, ctx):
        if _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum):
            return v
        if minimum is not None and maximum is not None:
            want = "an integer from %d to %d" % (minimum, maximum)
        elif minimum is not None:
            want = "an integer >= %d" % minimum
        else:
            want = "an integer"
        ctx.add(path, "must be %s, got %s" % (want, _show(v)))
        return _BAD
    return conv


def k_float(minimum: Optional[float] = None, maximum: Optional[float] = None,
            exclusive_min: bool = False) -> Callable:
    def conv(v, path, ctx):
        ok = (_is_int(v) or isinstance(v, float)) and v == v and v not in (float("inf"), float("-inf"))
        if ok and minimum is not None:
            ok = v > minimum if exclusive_min else v >= minimum
        if ok and maximum is not None:
            ok = v <= maximum
        if ok:
            return float(v)
        if minimum is not None:
            want = "a number %s %g" % (">" if exclusive_min else ">=", minimum)
            if maximum is not None:
                want += " and <= %g" % maximum
        else:
            want = "a number"
        ctx.add(path, "must be %s, got %s" % (want, _show(v)))
        return _BAD
    return conv


def k_bool(v, path, ctx):
    if isinstance(v, bool):
        return v
    ctx.add(path, "must be true or false, got %s" % _show(v))
    return _BAD


def k_str(v, path, ctx):
    if isinstance(v, str) and v.strip():
        return v
    ctx.add(path, "must be a non-empty string, got %s" % _show(v))
    return _BAD


def k_choice(*choices: str) -> Callable:
    def conv(v, path, ctx):
        if isinstance(v, str) and v in choices:
            return v
        hint = _did_you_mean(v, choices) if isinstance(v, str) else ""
        ctx.add(path, "must be one of %s, got %s%s" % (", ".join(choices), _show(v), hint))
        return _BAD
    return conv


def k_path(v, path, ctx):
    """A filesystem path; relative paths resolve against the config file's directory."""
    if not isinstance(v, str) or not v.strip():
        ctx.add(path, "must be a path (a non-empty string), got %s" % _show(v))
        return _BAD
    if "\0" in v:
        ctx.add(path, "must not contain a NUL byte")
        return _BAD
    p = Path(os.path.expanduser(v))
    if not p.is_absolute() and ctx.base_dir is not None:
        p = ctx.base_dir / p
    return str(p)


def k_socket_path(v, path, ctx):
    p = k_path(v, path, ctx)
    if p is _BAD:
        return p
    if len(os.fsencode(p)) > SOCKET_PATH_MAX:
        ctx.add(path, "is %d bytes long; Unix socket paths are limited to %d bytes"
                % (len(os.fsencode(p)), SOCKET_PATH_MAX))
        return _BAD
    return p


def k_mode(v, path, ctx):
    """A file mode: an integer (YAML 0o660 / 432) or an octal string "0660"."""
    if isinstance(v, str) and re.fullmatch(r"0?o?[0-7]{3,4}", v):
        v = int(v.replace("o", ""), 8)
    if _is_int(v) and 0 <= v <= 0o7777:
        return v
    ctx.add(path, 'must be a file mode such as "0660", got %s' % _show(v))
    return _BAD


def k_listen(v, path, ctx):
    """A loopback listen address "127.0.0.1:9108" / "[::1]:9108" / "localhost:9108"."""
    if not isinstance(v, str):
        ctx.add(path, 'must be a loopback address like "127.0.0.1:9108", got %s' % _show(v))
        return _BAD
    m = re.fullmatch(r"(\[::1\]|127(?:\.\d{1,3}){3}|localhost):(\d{1,5})", v)
    if not m:
        ctx.add(path, 'must be a loopback address like "127.0.0.1:9108" (metrics are never '
                      'exposed beyond this host), got %s' % _show(v))
        return _BAD
    port = int(m.group(2))
    if not 0 < port < 65536:
        ctx.add(path, "port must be from 1 to 65535, got %d" % port)
        return _BAD
    host = m.group(1).strip("[]")
    return (host, port)


def k_str_map(v, path, ctx):
    if not isinstance(v, dict):
        ctx.add(path, "must be a mapping of names to names, got %s" % _show(v))
        return _BAD
    out = {}
    for key, val in v.items():
        if not isinstance(key, str) or not key or not isinstance(val, str) or not val:
            ctx.add(path + (str(key),), "must map a non-empty name to a non-empty name, got %s"
                    % _show(val))
            continue
        out[key] = val
    return out


def k_backend_options(v, path, ctx):
    """Backend options: a mapping of keys to scalars (strings, numbers, booleans), passed to the
    backend as backend.<key>=<value> strings."""
    if not isinstance(v, dict):
        ctx.add(path, "must be a mapping of option names to values, got %s" % _show(v))
        return _BAD
    out = {}
    for key, val in v.items():
        if not isinstance(key, str) or not key or not isinstance(val, (str, int, float, bool)) or val == "":
            ctx.add(path + (str(key),), "must map an option name to a string or number, got %s" % _show(val))
            continue
        out[key] = str(int(val)) if isinstance(val, bool) else str(val)
    return out


def k_tensor_spec(v, path, ctx):
    """A tensor given in config: a number (fills the tensor's shape), a nested list, or a path
    to a .npy file (relative to the config file)."""
    if _is_int(v) or isinstance(v, float):
        return float(v)
    if isinstance(v, list):
        return v
    if isinstance(v, str) and v.endswith(".npy"):
        return k_path(v, path, ctx)
    ctx.add(path, "must be a number, a nested list, or a .npy path, got %s" % _show(v))
    return _BAD


def k_tensor_map(v, path, ctx):
    if not isinstance(v, dict) or not v:
        ctx.add(path, "must be a non-empty mapping of tensor name to a tensor "
                      "(number, nested list or .npy path), got %s" % _show(v))
        return _BAD
    out = {}
    for key, val in v.items():
        if not isinstance(key, str) or not key:
            ctx.add(path, "tensor names must be non-empty strings, got %s" % _show(key))
            continue
        t = k_tensor_spec(val, path + (key,), ctx)
        if t is not _BAD:
            out[key] = t
    return out


def k_any_map(v, path, ctx):
    if isinstance(v, dict):
        return v
    ctx.add(path, "must be a mapping, got %s" % _show(v))
    return _BAD


def _did_you_mean(word: Any, options) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return ' (did you mean "%s"?)' % close[0] if close else ""


def _f(default: Any = dataclasses.MISSING, kind: Optional[Callable] = None, doc: str = "",
       nullable: bool = False, factory: Optional[Callable] = None):
    """A config field: its converter, whether null is allowed, and a one-line description."""
    meta = {"kind": kind, "doc": doc, "nullable": nullable}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class _Collect(_Ctx):
    """A converter's problems, paths relative to the field (turned into one pydantic error)."""

    def __init__(self, base_dir: Optional[Path]):
        super().__init__(None, base_dir)
        self.raw: List[Tuple[Tuple[str, ...], str]] = []

    def add(self, path: Tuple[str, ...], message: str) -> None:
        self.raw.append((tuple(path), message))


def _refuse(problems: List[Tuple[Tuple[str, ...], str]]):
    return PydanticCustomError("refitd", "{message}", {"message": problems[0][1], "problems": problems})


def _validator(meta: Any, required: bool) -> Callable[[Any, Any], Any]:
    kind, nullable, doc = meta.get("kind"), meta.get("nullable"), meta.get("doc", "")

    def check(v: Any, info: Any) -> Any:
        if v is None:
            if nullable:
                return None
            raise _refuse([((), "is required (%s), got null" % doc if required else
                            "must not be null (leave the key out for the default)")])
        if kind is None:
            return v
        outer = (info.context or {}).get("ctx") if info is not None else None
        tmp = _Collect(outer.base_dir if outer is not None else None)
        out = kind(v, (), tmp)
        if out is _BAD or tmp.raw:
            raise _refuse(tmp.raw or [((), "is not valid")])
        return out
    return check


def section(cls: Type) -> Type:
    """Makes ``cls`` (fields given with ``_f``) a config section: a pydantic dataclass with
    unknown keys forbidden, each field validated by its converter and described by its doc; a
    ``type`` field with a string default becomes ``Literal[default]`` (the union's tag)."""
    ann = dict(cls.__dict__.get("__annotations__", {}))
    for name in ann:
        f = cls.__dict__.get(name)
        if name == "type" and isinstance(f, str):
            ann[name] = Literal[f]  # type: ignore[valid-type]
        elif isinstance(f, dataclasses.Field) and f.metadata.get("kind") is not None:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            ann[name] = Annotated[Any, BeforeValidator(_validator(f.metadata, required)),
                                  Field(description=f.metadata.get("doc", ""))]
    cls.__annotations__ = ann
    return _pydantic_dataclass(cls, config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))


def describe(cls: Type) -> Dict[str, str]:
    """Field name -> its description (the docs and config/refitd.yaml are checked against it)."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.name != "type"}


_ADAPTERS: Dict[Any, TypeAdapter] = {}


def _adapter(key: Any, make: Callable[[], Any]) -> TypeAdapter:
    a = _ADAPTERS.get(key)
    if a is None:
        a = _ADAPTERS[key] = TypeAdapter(make())
    return a


def _loc(loc: Tuple[Any, ...]) -> Tuple[str, ...]:
    return tuple("[%d]" % x if isinstance(x, int) else str(x) for x in loc)


def _report(e: ValidationError, cls: Type, path: Tuple[str, ...], ctx: _Ctx, strip: int = 0) -> None:
    """Each pydantic error as a Problem: key path (+ line via ctx), refitd's wording."""
    names = [f.name for f in dataclasses.fields(cls)]
    docs = describe(cls)
    for err in e.errors():
        loc = _loc(err["loc"][strip:])
        kind = err["type"]
        if kind == "refitd":
            for sub, message in err["ctx"]["problems"]:
                ctx.add(path + loc + tuple(sub), message)
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            ctx.add(path + loc, "unknown key%s" % _did_you_mean(loc[-1], names))
        elif kind == "missing":
            ctx.add(path + loc, "is required (%s)" % docs.get(loc[-1], ""))
        else:
            ctx.add(path + loc, err["msg"])


def _mapping(raw: Any, path: Tuple[str, ...], ctx: _Ctx, names: List[str]) -> Optional[Dict[str, Any]]:
    """``raw`` as a mapping with string keys (others reported as unknown), or None."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ctx.add(path, "must be a mapping, got %s" % _show(raw))
        return None
    out = {}
    for k, v in raw.items():
        if isinstance(k, str):
            out[k] = v
        else:
            ctx.add(path + (str(k),), "unknown key%s" % _did_you_mean(k, names))
    return out


def _build(cls: Type, raw: Any, path: Tuple[str, ...], ctx: _Ctx, skip: Tuple[str, ...] = ()):
    """Validates mapping ``raw`` into section ``cls`` (pydantic); every problem goes to ``ctx``.
    Returns the instance, or None if the section is unusable. ``skip``: keys built apart."""
    data = _mapping(raw, path, ctx, [f.name for f in dataclasses.fields(cls)])
    if data is None:
        return None
    data = {k: v for k, v in data.items() if k not in skip}
    try:
        return _adapter(cls, lambda: cls).validate_python(data, context={"ctx": ctx})
    except ValidationError as e:
        _report(e, cls, path, ctx)
        return None


def _build_typed(registry: Dict[str, Type], raw: Any, path: Tuple[str, ...], ctx: _Ctx,
                 default_type: Optional[str], reserved: Optional[Dict[str, str]] = None):
    """Validates a plugin's config through the discriminated union on ``type`` of ``registry``
    (plugins.config_types(kind)); ``default_type`` when the mapping names none; a ``reserved``
    type gets its own one-line reason."""
    data = _mapping(raw, path, ctx, ["type"])
    if data is None:
        return None
    t = data.setdefault("type", default_type) if default_type else data.get("type")
    if t is None:
        ctx.add(path + ("type",), "is required (one of %s)" % ", ".join(registry))
        return None
    if reserved and isinstance(t, str) and t in reserved:  # a list or mapping is not hashable
        ctx.add(path + ("type",), "%s %s; use one of %s" % (_show(t), reserved[t], ", ".join(registry)))
        return None
    if not isinstance(t, str) or t not in registry:
        ctx.add(path + ("type",), "must be one of %s, got %s%s"
                % (", ".join(registry), _show(t), _did_you_mean(t, registry)))
        return None
    classes = tuple(registry.values())
    union = _adapter(classes, lambda: Annotated[Union[classes], Field(discriminator="type")])
    try:
        return union.validate_python(data, context={"ctx": ctx})
    except ValidationError as e:
        _report(e, registry[t], path, ctx, strip=1)  # the first loc element is the tag
        return None
