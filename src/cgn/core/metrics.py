"""The registry of evaluation metrics, shared by the MNIST and ImageNet variants.

Every number an evaluation reports comes from a registered metric, and evaluations loop over
metric names and call :func:`calc_metric` (as stylegan2-ada's ``calc_metric(name)``):

    for name in ("mask_statistics", "colour_fidelity"):
        stats.update(calc_metric(name, model=G, dataset="colored-mnist", n=1000, seed=0))

A metric is a plain function registered with ``@register_metric("name", help="...")``. Its
parameters declare what it needs: those without a default are its *needs* (``shape_bias(model,
cue_conflict, *, batch_size=64, ...)`` needs a model and the cue-conflict stimuli), those with
one are options. :func:`calc_metric` hands each parameter its entry of the context and ignores
entries the metric does not take, so one context serves every metric of an evaluation; a need
that is missing (or None) is a one-line :class:`~cgn.errors.CGNError`.

The metrics live in :data:`METRIC_MODULES`; they are imported on the first lookup of a name not
yet registered, so the registry is complete whatever the caller imported.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from cgn.errors import CGNError

# The modules that define metrics (imported by name on demand: core imports no variant).
METRIC_MODULES = ("cgn.mnist.quality", "cgn.imagenet.quality", "cgn.imagenet.fid", "cgn.imagenet.accuracy",
                  "cgn.imagenet.shape_bias", "cgn.imagenet.in9", "cgn.imagenet.saliency",
                  "cgn.imagenet.world_metrics", "cgn.imagenet.world_eval")


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable
    help: str
    needs: tuple[str, ...]    # context entries the metric cannot do without
    options: tuple[str, ...]  # context entries it takes when given


_METRICS: dict[str, Metric] = {}
_loaded = False


def register_metric(name: str, help: str = "") -> Callable[[Callable], Callable]:
    """Register ``fn`` under ``name``; its needs and options are read off its signature."""
    def deco(fn: Callable) -> Callable:
        if name in _METRICS and _METRICS[name].fn is not fn:
            raise ValueError(f"metric {name!r} registered twice")
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        _METRICS[name] = Metric(
            name, fn, help or (fn.__doc__ or "").strip().splitlines()[0],
            needs=tuple(p.name for p in params if p.default is p.empty),
            options=tuple(p.name for p in params if p.default is not p.empty))
        return fn
    return deco


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in METRIC_MODULES:
            importlib.import_module(module)
        _loaded = True


def metric(name: str) -> Metric:
    """The registered metric ``name``; an unknown name is a CGNError listing the known ones."""
    if name not in _METRICS:
        _load_all()
    if name not in _METRICS:
        raise CGNError(f"unknown metric {name!r}; available: {', '.join(sorted(_METRICS)) or 'none'}")
    return _METRICS[name]


def get_metric(name: str) -> Callable:
    """The function registered as ``name``."""
    return metric(name).fn


def metric_needs(name: str) -> tuple[str, ...]:
    """The context entries metric ``name`` cannot do without."""
    return metric(name).needs


def available_metrics() -> dict[str, str]:
    """Every registered metric: name -> one line of help."""
    _load_all()
    return {k: m.help for k, m in sorted(_METRICS.items())}


def check_metric_names(names, allowed: tuple[str, ...], what: str) -> list[str]:
    """``names`` as a list if each is among ``allowed`` (the metrics that ``what``, an
    evaluation, computes); otherwise a CGNError naming the ones it offers."""
    names = list(names)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise CGNError(f"{what}: unknown metric(s) {', '.join(map(repr, bad))}; "
                       f"choose from {', '.join(allowed)}")
    return names


def calc_metric(name: str, **context: Any) -> Any:
    """Compute metric ``name`` from ``context``: each of the metric's parameters gets its entry
    (entries it does not take are ignored); a missing need is a CGNError."""
    m = metric(name)
    missing = [k for k in m.needs if context.get(k) is None]
    if missing:
        raise CGNError(f"metric {name!r} needs {', '.join(missing)}; "
                       f"give {'them' if len(missing) > 1 else 'it'} to calc_metric")
    return m.fn(**{k: context[k] for k in m.needs + m.options if k in context})
