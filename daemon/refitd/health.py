"""Health checks: the shadow check run on new weights *before* they serve, and the post-swap
watch window that can roll an update back after it serves.

Shadow check (``ShadowCheck``): each configured check runs its inputs through
``engine.infer_staged(staged, inputs)`` -- the staged, unpublished weight set -- and compares the
outputs with its expectation:

* ``golden``: ``expect`` maps output names to expected tensors; ``|got - want| <= atol + rtol *
  |want|`` elementwise (numpy ``isclose``, NaN never matches);
* ``finite``: every output value is finite;
* ``range``: every output value lies in ``[min, max]`` (and is not NaN).

Inputs and expectations are given as config tensors: a number (fills the tensor's shape), a
nested list, or a path to a ``.npy`` file. They are resolved against the engine's input/output
shapes once, when the check is built, so a config mistake is reported at start-up, not at the
first update. A failed check raises ``HealthError`` with one line naming the check, the output,
the first offending index and both values.

Watch window (``WatchWindow``): after a swap, the runner hands every inference result to
``observe(result)`` (cheap: a flag test and a few numpy reductions). Results computed with the
watched version count; one is *bad* when an output is non-finite or outside ``range_min`` /
``range_max``. Once ``min_results`` results are in and the bad share exceeds ``max_bad_share``
the window fails at once; otherwise it is judged after ``seconds`` (then the optional ``hook``
executable runs with the version as its argument; a nonzero exit fails the window). A failed
window calls ``on_fail(version, previous, reason)`` from its own thread -- the pipeline rolls
back there.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .plugins import config_types, plugin, plugins
from .schema import _Ctx, _build_typed, _f, k_float, k_tensor_map, section

__all__ = ["HealthError", "ShadowCheck", "Check", "WatchWindow", "resolve_tensor",
           "GoldenCheck", "FiniteCheck", "RangeCheck"]


class HealthError(Exception):
    """A shadow check failed (or a check is misconfigured). ``str(e)`` is one line."""


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """Reads ``key`` from a config dataclass or a plain mapping."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _q(name: str) -> str:
    return json.dumps(name)


def resolve_tensor(spec: Any, shape: Sequence[int], what: str, base_dir: Optional[str] = None
                   ) -> np.ndarray:
    """A config tensor (number, nested list, ``.npy`` path) as a float32 array of ``shape``."""
    shape = tuple(int(d) for d in shape)
    if isinstance(spec, np.ndarray):
        arr = spec
    elif isinstance(spec, bool):
        raise HealthError("%s: a boolean is not a tensor" % what)
    elif isinstance(spec, (int, float)):
        return np.full(shape, float(spec), dtype=np.float32)
    elif isinstance(spec, str):
        path = spec if os.path.isabs(spec) or base_dir is None else os.path.join(base_dir, spec)
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise HealthError("%s: file not found: %s" % (what, path)) from None
        except (OSError, ValueError) as e:
            raise HealthError("%s: cannot read %s: %s" % (what, path, str(e).splitlines()[0])) from None
    elif isinstance(spec, (list, tuple)):
        try:
            arr = np.asarray(spec, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise HealthError("%s: not a numeric nested list (%s)" % (what, e)) from None
    else:
        raise HealthError("%s: expected a number, a nested list or a .npy path, got %s"
                          % (what, type(spec).__name__))
    if arr.dtype.kind not in "fiu":
        raise HealthError("%s: dtype %s is not numeric" % (what, arr.dtype.name))
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != shape:
        if arr.size == int(np.prod(shape)):
            arr = arr.reshape(shape)  # e.g. a flat list for a 1x1x3x3 tensor
        else:
            raise HealthError("%s: shape %s, the model's is %s"
                              % (what, list(arr.shape), list(shape)))
    return np.asarray(arr, order="C")  # keeps a 0-d input 0-d


def _first_index(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(-1))[0])


_FINITE_CHUNK = 1 << 16


def _all_finite(a: np.ndarray) -> bool:
    """``np.isfinite(a).all()`` in cache-sized pieces: no temporary as large as ``a`` (a fresh
    64 MiB array costs more in page faults than the check itself)."""
    flat = a.reshape(-1)
    mask = np.empty(min(flat.size, _FINITE_CHUNK), dtype=bool)
    for i in range(0, flat.size, _FINITE_CHUNK):
        part = flat[i: i + _FINITE_CHUNK]
        m = mask[: part.size]
        np.isfinite(part, out=m)
        if not m.all():
            return False
    return True


def _fmt(x: float) -> str:
    return "%.7g" % float(x)


# ---- the check plugins (one declaration each: plugins.py) -----------------------------------

@section
class GoldenCheck:
    expect: Dict[str, Any] = _f(kind=k_tensor_map, doc="model output name -> expected tensor")
    inputs: Optional[Dict[str, Any]] = _f(None, k_tensor_map, "model input name -> tensor; default: ones", nullable=True)
    atol: float = _f(1e-5, k_float(0.0), "absolute tolerance")
    rtol: float = _f(1e-4, k_float(0.0), "relative tolerance")
    type: str = "golden"


@section
class FiniteCheck:
    inputs: Optional[Dict[str, Any]] = _f(None, k_tensor_map, "model input name -> tensor; default: ones", nullable=True)
    type: str = "finite"


@section
class RangeCheck:
    inputs: Optional[Dict[str, Any]] = _f(None, k_tensor_map, "model input name -> tensor; default: ones", nullable=True)
    min: Optional[float] = _f(None, k_float(), "every output value must be >= this", nullable=True)
    max: Optional[float] = _f(None, k_float(), "every output value must be <= this", nullable=True)
    type: str = "range"


def check_config(raw: Any, path: Tuple[str, ...], ctx: Any) -> Any:
    """One shadow check's config validated into its typed class (``GoldenCheck``, ...), every
    problem added to ``ctx`` (schema._Ctx) under ``path``; None if unusable. The one validation
    of a check: config.py for the config file, ``ShadowCheck`` for a spec given as a mapping."""
    obj = _build_typed(config_types("check"), raw, path, ctx, None)
    if isinstance(obj, GoldenCheck) and not obj.expect:
        ctx.add(path + ("expect",), "names no output (a golden check compares at least one)")
    elif isinstance(obj, RangeCheck) and obj.min is None and obj.max is None:
        ctx.add(path, "a range check needs min, max or both")
    elif isinstance(obj, RangeCheck) and obj.min is not None and obj.max is not None \
            and obj.min > obj.max:
        ctx.add(path + ("min",), "must be <= max (%g > %g)" % (obj.min, obj.max))
    return obj


class Check:
    """One resolved shadow check; a plugin subclass judges the outputs. ``config``: its typed
    config (``GoldenCheck``, ``FiniteCheck``, ``RangeCheck``), whose fields carry the defaults."""

    def __init__(self, label: str, config: Any, inputs: Dict[str, np.ndarray],
                 expect: Optional[Dict[str, np.ndarray]] = None):
        self.label, self.kind, self.inputs = label, config.type, inputs
        self.expect = expect or {}
        self.rtol, self.atol = getattr(config, "rtol", None), getattr(config, "atol", None)
        self.vmin, self.vmax = getattr(config, "min", None), getattr(config, "max", None)
        self.outputs: Optional[Dict[str, np.ndarray]] = None  # reused by ShadowCheck.run

    def judge(self, outputs: Mapping[str, np.ndarray]) -> Optional[str]:
        """Why ``outputs`` fail this check, or None."""
        raise NotImplementedError


@plugin("check", "golden", GoldenCheck)
class GoldenJudge(Check):
    def judge(self, outputs: Mapping[str, np.ndarray]) -> Optional[str]:
        for name, want in self.expect.items():
            got = np.asarray(outputs[name], dtype=np.float32)
            ok = np.isclose(got, want, rtol=self.rtol, atol=self.atol, equal_nan=False)
            if not ok.all():
                i = _first_index(~ok)
                return ("%s: output %s differs from golden at flat index %d: got %s, expected "
                        "%s (%d of %d values off; rtol %g, atol %g)"
                        % (self.label, _q(name), i, _fmt(got.reshape(-1)[i]),
                           _fmt(want.reshape(-1)[i]), int((~ok).sum()), ok.size,
                           self.rtol, self.atol))
        return None


@plugin("check", "finite", FiniteCheck)
class FiniteJudge(Check):
    """Every output value finite; ``RangeJudge`` adds bounds (non-finite fails it too)."""

    def judge(self, outputs: Mapping[str, np.ndarray]) -> Optional[str]:
        for name, got in outputs.items():
            got = np.asarray(got)
            if not _all_finite(got):
                fin = np.isfinite(got)
                i = _first_index(~fin)
                return ("%s: output %s has %d non-finite values (first %s at flat index %d)"
                        % (self.label, _q(name), int((~fin).sum()), _fmt(got.reshape(-1)[i]), i))
            why = self._bounds(name, got)
            if why is not None:
                return why
        return None

    def _bounds(self, name: str, got: np.ndarray) -> Optional[str]:
        return None


@plugin("check", "range", RangeCheck)
class RangeJudge(FiniteJudge):
    def _bounds(self, name: str, got: np.ndarray) -> Optional[str]:
        for bound, bad, word in ((self.vmin, lambda g, b: g < b, "below min"),
                                 (self.vmax, lambda g, b: g > b, "above max")):
            if bound is None:
                continue
            mask = bad(got, bound)
            if mask.any():
                i = _first_index(mask)
                return ("%s: output %s has %d values %s %s (first %s at flat index %d)"
                        % (self.label, _q(name), int(mask.sum()), word, _fmt(bound),
                           _fmt(got.reshape(-1)[i]), i))
        return None


class ShadowCheck:
    """The configured shadow checks, resolved against an engine's inputs and outputs.

    ``specs``: the config's ``health.checks`` -- dataclasses or mappings with ``type``
    (``golden`` | ``finite`` | ``range``), ``inputs`` (default: ones), ``expect``, ``rtol``,
    ``atol``, ``min``, ``max``. Raises ``HealthError`` for a spec that does not fit the model.
    """

    def __init__(self, specs: Optional[Sequence[Any]], engine: Any, base_dir: Optional[str] = None):
        ins = {s.name: s for s in engine.inputs()}
        outs = {s.name: s for s in engine.outputs()}
        kinds = plugins("check")
        self.checks: List[Check] = []
        for i, spec in enumerate(specs or []):
            label = "health check %d (%s)" % (i + 1, _get(spec, "type", "?"))
            if isinstance(spec, Mapping):  # not from the config file: validated the same way
                ctx = _Ctx()
                spec = check_config(dict(spec), (), ctx)
                if ctx.problems:
                    p = ctx.problems[0]
                    raise HealthError("%s: %s%s" % (label, p.path + ": " if p.path else "", p.message))
            given = spec.inputs or {}
            unknown = sorted(set(given) - set(ins))
            if unknown:
                raise HealthError("%s: %s is not an input of the model (inputs: %s)"
                                  % (label, _q(unknown[0]), ", ".join(ins)))
            inputs = {}
            for name, s in ins.items():
                what = "%s: input %s" % (label, _q(name))
                inputs[name] = resolve_tensor(given.get(name, 1.0), s.shape, what, base_dir)
            expect = {}
            for name, t in (getattr(spec, "expect", None) or {}).items():
                if name not in outs:
                    raise HealthError("%s: %s is not an output of the model (outputs: %s)"
                                      % (label, _q(name), ", ".join(outs)))
                expect[name] = resolve_tensor(t, outs[name].shape,
                                              "%s: expected %s" % (label, _q(name)), base_dir)
            self.checks.append(kinds[spec.type](label, spec, inputs, expect))

    def __len__(self) -> int:
        return len(self.checks)

    def run(self, engine: Any, staged: Any) -> None:
        """Runs every check on the staged weights; raises ``HealthError`` at the first failure.
        Each check keeps its output arrays for the next update (one update at a time)."""
        for check in self.checks:
            try:
                check.outputs = engine.infer_staged(staged, check.inputs, check.outputs)
            except Exception as e:  # EngineError: the staged set cannot even run
                raise HealthError("%s: inference on the new weights failed: %s"
                                  % (check.label, str(e).splitlines()[0] if str(e) else e)) from None
            why = check.judge(check.outputs)
            if why is not None:
                raise HealthError(why)


class WatchWindow:
    """The post-swap watch window (see the module docstring).

    ``on_fail(version, previous, reason)`` is called at most once per armed window, from a
    separate thread. ``seconds <= 0`` disables the window (``arm`` does nothing)."""

    def __init__(self, seconds: float = 0.0, max_bad_share: float = 0.0, min_results: int = 1,
                 range_min: Optional[float] = None, range_max: Optional[float] = None,
                 hook: Optional[str] = None, on_fail: Optional[Callable[[int, Optional[int], str], None]] = None,
                 hook_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self.max_bad_share = float(max_bad_share)
        self.min_results = max(1, int(min_results))
        self.range_min, self.range_max = range_min, range_max
        self.hook, self.hook_timeout = hook, hook_timeout
        self.on_fail = on_fail
        self._clock = clock
        self._mu = threading.Lock()
        self._version: Optional[int] = None
        self._previous: Optional[int] = None
        self._good = 0
        self._bad = 0
        self._first_bad: Optional[str] = None
        self._timer: Optional[threading.Timer] = None
        self._generation = 0
        #: ``(version, passed, reason)`` of the last judged window
        self.last: Optional[Tuple[int, bool, Optional[str]]] = None

    @classmethod
    def from_config(cls, cfg: Any, on_fail: Optional[Callable[[int, Optional[int], str], None]] = None
                    ) -> "WatchWindow":
        return cls(seconds=_get(cfg, "seconds", 0.0) or 0.0,
                   max_bad_share=_get(cfg, "max_bad_share", 0.0) or 0.0,
                   min_results=_get(cfg, "min_results", 1) or 1,
                   range_min=_get(cfg, "range_min"), range_max=_get(cfg, "range_max"),
                   hook=_get(cfg, "hook"), on_fail=on_fail)

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @property
    def armed(self) -> Optional[int]:
        """The version being watched, or None."""
        with self._mu:
            return self._version

    def arm(self, version: int, previous: Optional[int]) -> None:
        if not self.enabled:
            return
        with self._mu:
            self._cancel_locked()
            self._generation += 1
            self._version, self._previous = version, previous
            self._good = self._bad = 0
            self._first_bad = None
            gen = self._generation
            self._timer = threading.Timer(self.seconds, self._expire, args=(gen,))
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        """Stops watching (a newer update or a rollback supersedes the window)."""
        with self._mu:
            self._cancel_locked()
            self._version = None

    def _cancel_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _bad_reason(self, outputs: Mapping[str, np.ndarray]) -> Optional[str]:
        for name, out in outputs.items():
            a = np.asarray(out)
            if not np.isfinite(a).all():
                return "output %s non-finite" % _q(name)
            if self.range_min is not None and a.min() < self.range_min:
                return "output %s below %s" % (_q(name), _fmt(self.range_min))
            if self.range_max is not None and a.max() > self.range_max:
                return "output %s above %s" % (_q(name), _fmt(self.range_max))
        return None

    def observe(self, result: Any) -> None:
        """Feeds one inference result (``.version``, ``.outputs``; a runner ``Result``)."""
        version = getattr(result, "version", None)
        if self._version is None or version != self._version:
            return
        outputs = getattr(result, "outputs", None)
        if outputs is None:
            return  # a failed inference (bad input, ...) says nothing about the weights
        why = self._bad_reason(outputs)
        fire = None
        with self._mu:
            if version != self._version:
                return
            if why is None:
                self._good += 1
            else:
                self._bad += 1
                if self._first_bad is None:
                    self._first_bad = why
            n = self._good + self._bad
            if n >= self.min_results and self._bad / n > self.max_bad_share:
                fire = self._fail_locked(
                    "watch window: %d of %d results with version %d were bad (%.1f%% > %.1f%%; "
                    "first: %s)" % (self._bad, n, version, 100.0 * self._bad / n,
                                    100.0 * self.max_bad_share, self._first_bad))
        if fire is not None:
            self._fire(*fire)

    def _fail_locked(self, reason: str) -> Tuple[int, Optional[int], str]:
        v, prev = self._version, self._previous
        self._cancel_locked()
        self._version = None
        self.last = (v, False, reason)  # type: ignore[assignment]
        return v, prev, reason  # type: ignore[return-value]

    def _expire(self, gen: int) -> None:
        with self._mu:
            if gen != self._generation or self._version is None:
                return
            v, prev, good, bad = self._version, self._previous, self._good, self._bad
        reason = None
        if self.hook:
            reason = self._run_hook(v, prev, good, bad)
        with self._mu:
            if gen != self._generation or self._version is None:
                return
            if reason is not None:
                fire = self._fail_locked(reason)
            else:
                self._version = None
                self._timer = None
                self.last = (v, True, None)
                fire = None
        if fire is not None:
            self._fire(*fire)

    def _run_hook(self, version: int, previous: Optional[int], good: int, bad: int) -> Optional[str]:
        env = dict(os.environ, REFITD_VERSION=str(version),
                   REFITD_PREVIOUS_VERSION="" if previous is None else str(previous),
                   REFITD_RESULTS=str(good + bad), REFITD_BAD_RESULTS=str(bad))
        try:
            proc = subprocess.run([self.hook, str(version)], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=self.hook_timeout)
        except subprocess.TimeoutExpired:
            return "watch hook %s timed out after %gs" % (self.hook, self.hook_timeout)
        except OSError as e:
            return "watch hook %s could not run: %s" % (self.hook, e.strerror or e)
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            return "watch hook %s exited with %d for version %d%s" % (
                self.hook, proc.returncode, version, (": " + tail[-1][:200]) if tail else "")
        return None

    def _fire(self, version: int, previous: Optional[int], reason: str) -> None:
        if self.on_fail is None:
            return
        t = threading.Thread(target=self.on_fail, args=(version, previous, reason),
                             name="refitd-watch-rollback", daemon=True)
        t.start()
