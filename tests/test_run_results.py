"""The results file of a run directory: one name (``results.json``) written by every trainer;
run directories from before the name was shared (``result.json``, ``final_metrics.json``) read."""

from __future__ import annotations

import json

import pytest

from cgn.core.results import OLD_NAMES, RESULTS_FILE, read_results, results_path, write_results
from cgn.errors import CGNError


def test_written_as_results_json_and_read_back(tmp_path):
    assert read_results(tmp_path) is None and results_path(tmp_path) is None  # not finished yet
    path = write_results(tmp_path, {"test_acc": 91.5})
    assert path == tmp_path / RESULTS_FILE == results_path(tmp_path)
    assert read_results(tmp_path) == {"test_acc": 91.5}
    assert json.loads(path.read_text()) == {"test_acc": 91.5}


@pytest.mark.parametrize("old", OLD_NAMES)
def test_run_directories_written_before_are_read(tmp_path, old):
    (tmp_path / old).write_text(json.dumps({"test_acc": 12.0}))
    assert results_path(tmp_path) == tmp_path / old
    assert read_results(tmp_path) == {"test_acc": 12.0}
    write_results(tmp_path, {"test_acc": 13.0})  # a rerun writes the current name, which wins
    assert read_results(tmp_path) == {"test_acc": 13.0}


def test_a_damaged_file_is_one_line(tmp_path):
    (tmp_path / RESULTS_FILE).write_text('{"test_acc": 1')
    with pytest.raises(CGNError, match="results.json is damaged"):
        read_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("[1, 2]")
    with pytest.raises(CGNError, match="not a JSON object"):
        read_results(tmp_path)
