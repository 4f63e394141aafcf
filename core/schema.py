"""Config schema helpers: a field's range or choices sit next to its default, one walker checks them.

The config schema is a tree of dataclasses (orchestrator/schema.py, with the parts that belong
to learners/ and actors/ defined there) registered in Hydra's ConfigStore, so Hydra refuses
unknown keys and values of the wrong type while composing. What a type cannot say lives in the
field's metadata, written with `checked`:

    lr: float = checked(1e-5, gt=0, le=1)          # AdamW learning rate
    mode: str = checked("local", choices=("inline", "local", "ray"))

and `problems(schema, node)` lists every value that breaks it, each with the field's full name.
A value of None (an Optional field left unset) and an interpolation's resolved value are checked
like any other; a required field (no default: omegaconf's MISSING, "???") left unset is reported.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

CHECKS = ("ge", "gt", "le", "lt", "choices")


def checked(default: Any = MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None,
            **metadata) -> Any:
    """A dataclass field with its default and its checks (a number's bounds, or choices)."""
    limits = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if choices is not None:
        limits["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata={**limits, **metadata})


def problem(f: dataclasses.Field, value: Any, hint: Any = None) -> str | None:
    """What is wrong with `value` for field `f` (of type `hint`), or None."""
    m = f.metadata
    if value is None:
        return None
    if "choices" in m:
        return None if value in m["choices"] else f"choose one of {list(m['choices'])}"
    bounds = [(k, m[k]) for k in ("ge", "gt", "le", "lt") if k in m]
    if not bounds:
        return None
    integer = int in (hint, *typing.get_args(hint))
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (not integer or isinstance(value, int))
    ok = ok and all({"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[k]
                    for k, b in bounds) if ok else False
    if ok:
        return None
    what = "an integer" if integer else "a number"
    low = next(((k, b) for k, b in bounds if k in ("ge", "gt")), None)
    high = next(((k, b) for k, b in bounds if k in ("le", "lt")), None)
    if low and high:
        return (f"must be {what} in {'[' if low[0] == 'ge' else '('}{low[1]}, "
                f"{high[1]}{']' if high[0] == 'le' else ')'}")
    k, b = low or high
    return f"must be {what} {dict(ge='>=', gt='>', le='<=', lt='<')[k]} {b}"


def problems(schema: type, node: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(full field name, value, what is wrong) for every value in `node` (a DictConfig or an
    instance of `schema`) that breaks its field's checks, walking nested schemas and lists of
    them (named `reward.sources[0].timeout_s`)."""
    found = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if isinstance(node, DictConfig):
            if f.name not in node:
                continue
            if OmegaConf.is_missing(node, f.name):
                found.append((key, MISSING, "is required"))
                continue
            value = node[f.name]
        else:
            value = getattr(node, f.name)
            if value == MISSING:
                found.append((key, MISSING, "is required"))
                continue
        why = problem(f, value, hints[f.name])
        if why:
            found.append((key, value, why))
        inner = _schema_of(hints[f.name])
        if inner is None or value is None:
            continue
        if isinstance(value, (list, tuple, ListConfig)):
            for i, item in enumerate(value):
                found += problems(inner, item, f"{key}[{i}]")
        elif isinstance(value, (DictConfig, inner)):
            found += problems(inner, value, key)
    return found


def _schema_of(hint) -> type | None:
    """The dataclass of a field typed `X`, `Optional[X]` or `list[X]`, if X is one."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _schema_of(arg)
        if found is not None:
            return found
    return None
