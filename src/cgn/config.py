"""Typed configs: dataclasses with documented, validated fields.

Each component defines its own dataclass (``field(metadata={"help": ...})`` documents a field,
``__post_init__`` validates it). Experiment configs nest them. This module turns configs into
plain dicts (for run directories and checkpoints), rebuilds them from dicts (strictly: unknown
keys are an error), applies ``section.field=value`` overrides from the command line, and
decides whether a rerun may continue a stored config (``metadata={"resume": ...}``,
:func:`resume_diff`).
"""

from __future__ import annotations

import copy
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
    side only counts as changed), leaving out ``ignore``."""
    a, b, skip = flatten(old), flatten(new), set(ignore)
    return sorted(k for k in a.keys() | b.keys()
                  if k not in skip and a.get(k, _ABSENT) != b.get(k, _ABSENT))


# --- the resume rule ---------------------------------------------------------------------------
# May a rerun continue the same work? Each field says so in ``metadata["resume"]``:
#   "free":   how the run executes (device, threads, jobs, workers, cadence, where data lives);
#             a resume may use another value.
#   "extend": how far the run goes (epochs, steps, episodes, ablation sizes); a resume may set
#             another value (a smaller one too, as the checks this rule replaced allowed) and
#             the run records the new one.
# A rule on a section field holds for all of its fields. Every other field, and every field the
# dataclass does not know, must keep its stored value.
RESUME_RULES = ("free", "extend")


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field annotation holds (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def _resume_rule(cls: type, path: str) -> str | None:
    tp: Any = cls
    for part in path.split("."):
        fields = {f.name: f for f in dataclasses.fields(tp)} if tp is not None else {}
        if part not in fields:
            return None
        rule = fields[part].metadata.get("resume")
        if rule is not None:
            if rule not in RESUME_RULES:
                raise ValueError(f"{tp.__name__}.{part}: resume rule {rule!r} is not one of {RESUME_RULES}")
            return rule
        tp = _dataclass_in(_field_types(tp)[part])
    return None


@dataclasses.dataclass(frozen=True)
class ResumeDiff:
    """How a new config differs from a stored one: dotted path -> (stored, new) by resume rule."""
    conflicts: dict[str, tuple[Any, Any]]
    free: dict[str, tuple[Any, Any]]
    extended: dict[str, tuple[Any, Any]]

    @property
    def allowed(self) -> dict[str, tuple[Any, Any]]:
        """The changes a resume may make, sorted by path."""
        return dict(sorted({**self.free, **self.extended}.items()))

    @staticmethod
    def describe(changes: dict[str, tuple[Any, Any]]) -> str:
        show = lambda v: "absent" if v is _ABSENT else repr(v)  # noqa: E731
        return ", ".join(f"{k} ({show(a)} -> {show(b)})" for k, (a, b) in changes.items())

    def apply(self, stored: dict) -> dict:
        """A copy of ``stored`` with the allowed changes made."""
        out = copy.deepcopy(stored)
        for path, (_, value) in self.allowed.items():
            *parents, leaf = path.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            if value is _ABSENT:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        return out


def resume_diff(cls: type, stored: dict, new: dict) -> ResumeDiff:
    """Compare a stored config dict with a new one (both as :func:`to_dict` writes them) under the
    resume rules of dataclass ``cls``: the one place that decides whether a rerun may continue
    the same work. A setting present on one side only counts as changed."""
    a, b = flatten(stored), flatten(new)
    parts: dict[str | None, dict] = {None: {}, "free": {}, "extend": {}}
    for k in changed_fields(stored, new):
        parts[_resume_rule(cls, k)][k] = (a.get(k, _ABSENT), b.get(k, _ABSENT))
    return ResumeDiff(conflicts=parts[None], free=parts["free"], extended=parts["extend"])


def check_resume(cls: type, stored: dict, new: dict, where: str,
                 fix: str = "pass the same values or choose another --out") -> ResumeDiff:
    """:func:`resume_diff`, raising one :class:`CGNError` line (``where``: what holds the
    stored config) when the new config changes a setting a resume must keep."""
    diff = resume_diff(cls, stored, new)
    if diff.conflicts:
        raise CGNError(f"{where}: a resume may not change {ResumeDiff.describe(diff.conflicts)}; {fix}")
    return diff


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, tp: Any, where: str) -> Any:
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
                return coerce(value, a, where)
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
        out = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
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
    upgrade = getattr(cls, "upgrade_dict", None)  # fields renamed since a stored config was written
    if upgrade is not None and isinstance(data, dict):
        data = upgrade(dict(data))
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CGNError(
            f"config {where or cls.__name__}: unknown field(s) {sorted(unknown)}; "
            f"valid fields are {sorted(names)}"
        )
    kwargs = {k: coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
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
