"""Progress bars (tqdm) that stay quiet when not attached to a terminal unless forced."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", **kw) -> tqdm:
    disable = os.environ.get("CGN_PROGRESS", "auto")
    off = disable == "0" or (disable == "auto" and not sys.stderr.isatty())
    return tqdm(iterable, total=total, desc=desc, disable=off, dynamic_ncols=True, leave=False, **kw)
