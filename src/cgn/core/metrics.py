"""A registry of evaluation metrics, shared by the MNIST and ImageNet variants.

Register with ``@register_metric("name", help="...")``; look up with :func:`get_metric`; list
with :func:`available_metrics`. A metric is a plain callable; its signature is documented by its
own docstring (e.g. ``inception_score(probs, splits=10)``).
"""

from __future__ import annotations

from typing import Callable

from cgn.errors import CGNError

_METRICS: dict[str, tuple[Callable, str]] = {}


def register_metric(name: str, help: str = "") -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        if name in _METRICS and _METRICS[name][0] is not fn:
            raise ValueError(f"metric {name!r} registered twice")
        _METRICS[name] = (fn, help or (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return deco


def get_metric(name: str) -> Callable:
    if name not in _METRICS:
        raise CGNError(f"unknown metric {name!r}; available: {', '.join(sorted(_METRICS)) or 'none'}")
    return _METRICS[name][0]


def available_metrics() -> dict[str, str]:
    return {k: v[1] for k, v in sorted(_METRICS.items())}
