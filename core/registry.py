"""Name -> object registries for rewards, advantage estimators, losses and buffers.

`register("reward", "toy_exact")(fn)` files `fn` under a kind. `lookup(kind, name)` finds it;
a name that is not registered is imported as a dotted path (`my_pkg.my_mod.my_fn`), so a
user's own function works inside every Ray worker without registering it there first.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

_REGISTRY: dict[str, dict[str, Any]] = {}

# Modules whose import fills each kind's registry with the built-in entries.
_BUILTIN_MODULES = {
    "reward": ["rewards.toy", "rewards.shaping", "rewards.pairwise", "rewards.code",
               "rewards.verifiers", "rewards.judges", "rewards.self_rewards", "rewards.policy_rewards",
               "rewards.reward_model", "actors.labeler"],
    "advantage": ["learners.advantages"],
    "loss": ["learners.losses"],
    "buffer": ["actors.buffer"],
    "combine": ["actors.reward"],
    "extractor": ["core.answers", "tasks.toy_arith"],
}


def register(kind: str, name: str) -> Callable[[Any], Any]:
    def wrap(obj: Any) -> Any:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        return obj
    return wrap


def lookup(kind: str, name: str) -> Any:
    for module in _BUILTIN_MODULES.get(kind, []):
        importlib.import_module(module)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise KeyError(f"{kind} {name!r}: not registered and not importable ({err})") from err
    known = ", ".join(sorted(table)) or "none"
    raise KeyError(f"unknown {kind} {name!r}; registered: {known}; "
                   "or give a dotted import path such as my_pkg.module.function")


def names(kind: str) -> list[str]:
    for module in _BUILTIN_MODULES.get(kind, []):
        importlib.import_module(module)
    return sorted(_REGISTRY.get(kind, {}))
