"""Typed configs: dataclasses with documented, validated fields.

Each component defines its own dataclass (``field(metadata={"help": ...})`` documents a field,
``__post_init__`` validates it). Experiment configs nest them. This module turns configs into
plain dicts (for run directories and checkpoints), rebuilds them from dicts (strictly: unknown
keys are an error), and applies ``section.field=value`` overrides from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, TypeVar

from cgn.errors import CGNError

T = TypeVar("T")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config dict -> {dotted path: leaf value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_ABSENT = object()


def changed_fields(old: dict, new: dict, ignore: typing.Iterable[str] = ()) -> list[str]:
    """Sorted dotted paths of the settings that differ between two config dicts (a setting on one
    side only counts as changed), leaving out ``ignore``: how runs, datasets and reproductions
    decide whether a rerun continues the same work (execution-only settings are ignored)."""
    a, b, skip = flatten(old), flatten(new), set(ignore)
    return sorted(k for k in a.keys() | b.keys()
                  if k not in skip and a.get(k, _ABSENT) != b.get(k, _ABSENT))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from JSON or a CLI string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise CGNError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except CGNError as e:
                errors.append(str(e))
        raise CGNError(errors[0] if errors else f"config {where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise CGNError(f"config {where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            except json.JSONDecodeError:
                raise CGNError(f"config {where}: {value!r} is not a list; write it as [a, b] or a,b") from None
        if not isinstance(value, (list, tuple)):
            raise CGNError(f"config {where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise CGNError(f"config {where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise CGNError(f"config {where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise CGNError(f"config {where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise CGNError(f"config {where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise CGNError(f"config {where}: expected a number, got {value!r}") from None
        if not math.isfinite(f):  # nan / inf train to NaN or never stop: no setting needs them
            raise CGNError(f"config {where}: expected a finite number, got {value!r}")
        return f
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build ``cls`` from a dict; unknown keys and bad values raise :class:`CGNError`."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CGNError(
            f"config {where or cls.__name__}: unknown field(s) {sorted(unknown)}; "
            f"valid fields are {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise CGNError(f"config {where or cls.__name__}: {e}") from None


def override(cfg: T, assignments: list[str] | dict[str, Any]) -> T:
    """Return a copy of ``cfg`` with ``a.b.c=value`` assignments applied (validated)."""
    data = to_dict(cfg)
    items = assignments.items() if isinstance(assignments, dict) else (_split(a) for a in assignments)
    for key, value in items:
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise CGNError(f"config override {key!r}: no section {p!r}")
            node = node[p]
        if parts[-1] not in node:
            raise CGNError(f"config override {key!r}: unknown field; valid here: {sorted(node)}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def _split(assignment: str) -> tuple[str, str]:
    if "=" not in assignment:
        raise CGNError(f"config override {assignment!r}: write it as section.field=value")
    k, v = assignment.split("=", 1)
    return k.strip(), v.strip()


def check(cond: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise ``ValueError(message)`` unless ``cond``."""
    if not cond:
        raise ValueError(message)
