"""Presets: named starting configs, one shape for every command that takes ``--preset``.

A :class:`Preset` names its config class, the ``section.field`` overrides it applies to that
class's defaults, the command it is for, the documented command line that runs it and the number
it should reproduce. The MNIST CGN presets also carry a *recipe* (the overrides of ``--recipe``).
Each package defines its presets next to its configs (``PRESETS`` in the modules of
:data:`PRESET_MODULES`); :func:`preset` loads any of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any

from cgn.config import override
from cgn.errors import CGNError

# the command a preset is for -> (the module holding its PRESETS, what its presets configure)
PRESET_MODULES = {
    "train-cgn": ("cgn.mnist.config", "MNIST CGN"),
    "imagenet train": ("cgn.imagenet.config", "ImageNet CGN"),
    "imagenet train-classifier": ("cgn.imagenet.classifier_config", "ImageNet classifier"),
    "imagenet pretrain u2net": ("cgn.imagenet.u2net_config", "U2-Net stand-in"),
    "imagenet pretrain biggan": ("cgn.imagenet.biggan_pretrain_config", "BigGAN-deep stand-in"),
    "imagenet pretrain judges": ("cgn.imagenet.world_judges_config", "world judges"),
}


@dataclass(frozen=True)
class Preset:
    name: str
    base: type                  # the config dataclass the overrides apply to
    subcommand: str             # the command it is for (a key of PRESET_MODULES)
    command: str                # the documented command line that runs it
    reproduces: str             # what it should reproduce
    overrides: dict = field(default_factory=dict)   # section.field -> value
    recipe: dict = field(default_factory=dict)      # MNIST CGN: the overrides of --recipe
    recipe_reproduces: str = ""

    def build(self, recipe: bool = False) -> Any:
        """The preset's config (with its recipe applied when ``recipe``)."""
        if recipe and not self.recipe:
            raise CGNError(f"preset {self.name!r} has no recipe; drop --recipe")
        names = {f.name for f in dataclasses.fields(self.base)}
        cfg = override(self.base(), {"preset": self.name} if "preset" in names else {})
        cfg = override(cfg, self.overrides)
        return override(cfg, self.recipe) if recipe else cfg


def presets(subcommand: str | None = None) -> dict[str, Preset]:
    """The presets of one command (``"train-cgn"``, ``"imagenet train"``, ...), or all of them."""
    if subcommand is not None and subcommand not in PRESET_MODULES:
        raise CGNError(f"no presets for {subcommand!r}; commands with presets: "
                       f"{', '.join(PRESET_MODULES)}")
    out: dict[str, Preset] = {}
    for cmd in [subcommand] if subcommand else PRESET_MODULES:
        mine = importlib.import_module(PRESET_MODULES[cmd][0]).PRESETS
        clash = sorted(set(mine) & set(out))
        if clash:  # names are looked up across commands, so each must be unique
            raise AssertionError(f"preset name(s) {clash} defined for two commands")
        out.update(mine)
    return out


def find(name: str, subcommand: str | None = None) -> Preset:
    """The preset called ``name``; an unknown name is a one-line error listing the choices."""
    known = presets(subcommand)
    if name in known:
        return known[name]
    family = subcommand
    if family is None:  # name the family of the closest known name
        close = difflib.get_close_matches(name, list(known), n=1)
        family = known[close[0]].subcommand if close else None
    if family is None:
        raise CGNError(f"unknown preset {name!r}; choose one of {', '.join(known)}")
    names = ", ".join(presets(family))
    raise CGNError(f"unknown {PRESET_MODULES[family][1]} preset {name!r}; choose one of {names}")


def preset(name: str, subcommand: str | None = None, *, recipe: bool = False) -> Any:
    """The config of preset ``name`` (its recipe applied when ``recipe``)."""
    return find(name, subcommand).build(recipe)
