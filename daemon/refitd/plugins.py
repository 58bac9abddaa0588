"""One declaration per plugin: a source, a sink, a health check or a channel is one class, declared with
``@plugin(kind, type_key, ConfigClass)`` in the module that implements it. The config class is a
schema dataclass (schema.py) whose fields carry their converters and descriptions; its ``type``
is the key. Config validation (config.py: ``config_types(kind)``, the union on ``type``) and
construction (runner.py, health.py: ``plugins(kind)[type]``) both read this one registry.
Channels (channels/base.py ``register``) are a kind too; their config is a config section, so
they register no config class.

Adding one: write the class and its config in the module of its kind (or a new module listed
in ``KINDS``), decorate it, and document its keys in config/refitd.yaml (docs/design.md).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Tuple, Type

__all__ = ["plugin", "plugins", "config_types", "KINDS"]

#: kind -> the modules that declare plugins of that kind (imported on first use)
KINDS: Dict[str, Tuple[str, ...]] = {"source": ("runner",), "sink": ("runner",), "check": ("health",),
                                     "channel": ("channels.watch", "channels.control")}

_REGISTRY: Dict[str, Dict[str, type]] = {k: {} for k in KINDS}


def plugin(kind: str, key: str, config: Optional[Type]) -> Callable[[type], type]:
    """Registers the decorated class as the ``kind`` plugin ``key`` with config class
    ``config`` (available as ``cls.Config``; ``cls.kind`` is the key)."""
    reg = _REGISTRY[kind]

    def deco(cls: type) -> type:
        if key in reg:
            raise ValueError("%s plugin %r declared twice" % (kind, key))
        cls.kind = key  # type: ignore[attr-defined]
        cls.Config = config  # type: ignore[attr-defined]
        reg[key] = cls
        return cls
    return deco


def plugins(kind: str) -> Dict[str, type]:
    """The ``kind`` plugins by key, in declaration order."""
    for module in KINDS[kind]:
        importlib.import_module("%s.%s" % (__package__, module))
    return dict(_REGISTRY[kind])


def config_types(kind: str) -> Dict[str, Type]:
    """The config class of each ``kind`` plugin, by key (what ``type:`` may name)."""
    return {key: cls.Config for key, cls in plugins(kind).items()}  # type: ignore[attr-defined]
