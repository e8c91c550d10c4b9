"""Where cgn keeps cached data: ``$CGN_HOME`` or ``~/.cache/cgn``."""

from __future__ import annotations

import os
from pathlib import Path


def cgn_home() -> Path:
    """The cache root. Set ``CGN_HOME`` to move it (tests point it at a temporary folder)."""
    env = os.environ.get("CGN_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "cgn"
    return root


def cache_dir(*parts: str) -> Path:
    d = cgn_home().joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d
