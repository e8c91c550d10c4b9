"""Nothing lost, nothing silently wrong: checked files, locked folders, step-boundary stops,
valid JSON. Each test reproduces a failure a user met (the catalogue of issue 15) and checks the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cgn.mnist.cfdata import CounterfactualSet
from cgn.core.checkpoint import load_checkpoint, save_checkpoint, state_digest
from cgn.core.lock import lock_dir, release_all
from cgn.errors import CGNError
from cgn.io import read_jsonl, write_json_atomic

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _flip_tensor_bytes(path: Path, marker: torch.Tensor, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    at = bytes(data).find(marker.numpy().tobytes())
    assert at >= 0, "marker tensor not found in the file"
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- digests ----------------------------------------------------------------------------------

def test_state_digest_sees_every_byte_dtype_and_key():
    a = {"w": torch.arange(6.0).reshape(2, 3), "n": 3, "cfg": {"lr": 0.1}}
    assert state_digest(a) == state_digest({"w": torch.arange(6.0).reshape(2, 3), "n": 3, "cfg": {"lr": 0.1}})
    for b in ({**a, "w": a["w"].clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(9.0))},
              {**a, "w": a["w"].double()}, {**a, "w": a["w"].reshape(3, 2)}, {**a, "n": 4},
              {"W": a["w"], "n": 3, "cfg": {"lr": 0.1}}, {**a, "cfg": {"lr": 0.2}}):
        assert state_digest(b) != state_digest(a)
    assert state_digest({"b": torch.ones(2, dtype=torch.bfloat16)})  # every dtype hashes


def test_damaged_checkpoint_is_refused(tmp_path):
    marker = torch.full((256,), 1.2345)
    p = tmp_path / "last.pt"
    save_checkpoint(p, kind="k", step=3, config={"a": 1}, model={"w": marker})
    assert load_checkpoint(p, kind="k")["step"] == 3
    _flip_tensor_bytes(p, marker)
    with pytest.raises(CGNError, match="damaged"):
        load_checkpoint(p, kind="k")


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path, capsys):
    p = tmp_path / "old.pt"
    torch.save({"format": "cgn-checkpoint", "kind": "k", "step": 1, "config": {}, "model": {}}, p)
    assert load_checkpoint(p)["step"] == 1
    assert "no digest" in capsys.readouterr().err


def test_checkpoint_header_without_payload_is_one_line(tmp_path):
    p = tmp_path / "hdr.pt"
    torch.save({"format": "cgn-checkpoint", "version": "0.1.0"}, p)
    with pytest.raises(CGNError, match="damaged cgn checkpoint"):
        load_checkpoint(p)


def test_authors_file_checked_by_md5_before_loading(tmp_path, capsys):
    from cgn.mnist.reference import load_reference
    from cgn.mnist.model import MnistCGN
    from cgn.mnist.config import ModelConfig
    from cgn.mnist.reference import to_reference
    state = to_reference(MnistCGN(ModelConfig()).state_dict())
    # a released file name with another digest: damaged, refused before unpickling
    torch.save(state, tmp_path / "colored_mnist.pth")
    with pytest.raises(CGNError, match="damaged.*md5"):
        load_reference(tmp_path / "colored_mnist.pth")
    # any other name: loads, with a warning that it is unchecked
    torch.save(state, tmp_path / "mine.pth")
    _, info = load_reference(tmp_path / "mine.pth")
    assert info["dataset"] == "unknown" and "not one of the authors' released" in capsys.readouterr().err


def test_flipped_bytes_in_an_authors_checkpoint_are_refused(shared_data, tmp_path):
    from cgn.mnist.reference import load_reference
    src = shared_data / "cgn_reference/checkpoints/colored_mnist.pth"
    _, info = load_reference(src)
    assert info["dataset"] == "colored-mnist"
    bad = tmp_path / "colored_mnist.pth"
    data = bytearray(src.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CGNError, match="damaged"):
        load_reference(bad)


# -- JSON files -------------------------------------------------------------------------------

def test_json_files_never_hold_nan(tmp_path):
    p = tmp_path / "r.json"
    write_json_atomic(p, {"acc": float("nan"), "x": [1.0, float("inf")], "ok": 0.5})
    assert json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == \
        {"acc": None, "x": [1.0, None], "ok": 0.5}


def test_half_written_last_metrics_line_is_dropped(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
    p.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(CGNError, match="line 2"):
        read_jsonl(p)


# -- locks ------------------------------------------------------------------------------------

def test_a_folder_in_use_is_refused_and_a_dead_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "run"
    holder = _python(f"""
        import sys, time
        from cgn.core.lock import lock_dir
        lock_dir({str(folder)!r}); print("locked", flush=True); time.sleep(60)
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CGNError, match=f"in use by pid {holder.pid}"):
            lock_dir(folder)
    finally:
        holder.kill()  # kill -9: no cleanup runs, the kernel drops the lock
        holder.wait()
    lock_dir(folder)  # stale lock: taken over without a word
    release_all()


def test_lock_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CGNError, match="is a file"):
        lock_dir(tmp_path / "f")


# -- step-boundary stops ----------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_step_finishes_the_step(sig):
    """The signal arrives inside a step; the loop completes that step, then stops."""
    proc = _python("""
        import time
        from cgn.core.interrupt import StepBoundary
        step = 0
        try:
            with StepBoundary() as stop:
                while step < 1000:
                    print("start", step, flush=True)
                    time.sleep(0.2)            # the step's work: the signal lands here
                    step += 1
                    print("end", step, flush=True)
                    if stop.requested:
                        print("saved", step, stop.requested, flush=True)
                        stop.raise_()
        except KeyboardInterrupt:
            print("stopped", step, flush=True)
            raise SystemExit(130)
    """)
    assert proc.stdout.readline().startswith("start 0")
    time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    lines = out.split("\n")
    assert proc.returncode == 130
    assert lines[:4] == ["end 1", f"saved 1 {sig.name}", "stopped 1", ""], out
    assert "stopping after the current step" in err


def test_a_second_signal_stops_at_once():
    proc = _python("""
        import time
        from cgn.core.interrupt import StepBoundary
        try:
            with StepBoundary() as stop:
                print("in", flush=True)
                time.sleep(30)
        except KeyboardInterrupt:
            print("now", flush=True)
    """)
    assert proc.stdout.readline().strip() == "in"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert out.strip() == "now"


# -- the CLI: one line for every OS error, no leftovers after a failed start ---------------------

def test_os_errors_are_one_line(monkeypatch, tmp_path, capsys):
    import errno
    from cgn import cli
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
                        (errno.EROFS, "read-only"), (errno.ENOTDIR, "not a folder")):
        def boom(args, code=code):
            raise OSError(code, os.strerror(code), str(tmp_path / "x"))
        monkeypatch.setattr(cli, "build_parser", lambda boom=boom: _parser_running(boom))
        assert cli.main(["anything"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cgn: error: ") and words in err and err.count("\n") == 1, err


def _parser_running(func):
    import argparse
    p = argparse.ArgumentParser(prog="cgn")
    p.add_argument("command")
    p.set_defaults(func=func)
    return p


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    from cgn.core.rundir import RunDir, discard_unstarted
    fresh, kept = tmp_path / "fresh", tmp_path / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    RunDir(fresh, {"a": 1})
    RunDir(kept, {"a": 1})
    discard_unstarted()  # what the CLI does when the command then fails on its input
    release_all()
    assert not fresh.exists()
    assert sorted(p.name for p in kept.iterdir() if p.name != ".lock") == ["notes.txt"]
    RunDir(fresh, {"a": 2})  # the corrected rerun starts without --resume
    started = RunDir(tmp_path / "started", {"a": 1})
    started.metric({"step": 1})
    discard_unstarted()
    release_all()
    assert (tmp_path / "started" / "config.json").is_file()


def test_damaged_config_json_is_one_line(tmp_path):
    from cgn.core.rundir import RunDir
    RunDir(tmp_path / "r", {"a": 1})
    (tmp_path / "r" / "config.json").write_text('{"config": {"a": ')
    with pytest.raises(CGNError, match="config.json is damaged"):
        RunDir(tmp_path / "r", {"a": 1}, resume=True).stored_config()
    release_all()


def test_stale_temporary_files_are_removed_by_the_next_holder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    left = [run / ".shard-00000.images.npy.k2j3.tmp", run / "checkpoints" / ".last.pt.x8a1.tmp"]
    for p in left:
        p.write_bytes(b"half")
    (run / "keep.npy").write_bytes(b"done")
    lock_dir(run)
    release_all()
    assert not any(p.exists() for p in left) and (run / "keep.npy").exists()


def test_bad_numbers_and_lists_in_settings_are_one_line():
    from cgn.config import override
    from cgn.presets import preset as preset_config
    cfg = preset_config("colored-mnist")
    for assignment, words in (("optim.lr=inf", "finite"), ("optim.lr=nan", "finite"),
                              ("train.max_steps=inf", "integer"),
                              ("loss.style_weights=[0.5", "not a list")):
        with pytest.raises(CGNError, match=words):
            override(cfg, [assignment])


def test_unsafe_pickle_is_refused_with_its_reason(tmp_path):
    from cgn.core.checkpoint import torch_load

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CGNError, match="not loaded .unpickling them could run code"):
        torch_load(tmp_path / "evil.pt")


def test_argument_errors_name_cgn(capsys):
    from cgn.cli import main
    with pytest.raises(SystemExit) as e:
        main(["generate", "--n", "abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cgn: error: argument --n") and err.count("\n") == 1


def test_texture_folder_with_a_directory_or_a_bomb(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from cgn.mnist.textures import load_texture_folder
    for part in ("object", "background"):
        (tmp_path / part).mkdir()
        for c in range(10):
            Image.fromarray(np.full((8, 8, 3), c * 20, np.uint8)).save(tmp_path / part / f"{c}_t.png")
    (tmp_path / "object" / "0_a.jpg").mkdir()  # a folder with an image's name is skipped
    assert load_texture_folder(tmp_path).objects.shape[0] == 10
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 8x8 = 64 pixels is now a "bomb"
    with pytest.raises(CGNError, match="decompression bomb"):
        load_texture_folder(tmp_path)


# -- counterfactual sets: checked shards, bounds, space, one writer -----------------------------
# (tiny_cgn_file: conftest.py)

def _generate(path, out, n=60, log=None):
    from cgn.mnist import counterfactuals as C
    from cgn.mnist.counterfactuals import GenerateConfig, checkpoint_source, generate
    from cgn.mnist.model import load_generator
    model, info = load_generator(path)
    cfg = GenerateConfig(n=n, cf_ratio=5, seed=1, shard_size=25, batch_size=16)
    generate(model, cfg, out, source=checkpoint_source(path, info), log=log or (lambda m: None))
    release_all()
    return C


def test_a_damaged_finished_shard_is_found_and_rewritten(tiny_cgn_file, tmp_path):
    out = tmp_path / "cf"
    _generate(tiny_cgn_file, out)
    lab = out / "shard-00001.labels.npz"
    images = (out / "shard-00001.images.npy").read_bytes()
    labels = lab.read_bytes()
    lab.write_bytes(labels[: len(labels) // 2])  # truncated: a reader would crash (BadZipFile)
    with pytest.raises(CGNError, match="shard 1 damaged"):
        CounterfactualSet(out)
    notes = []
    _generate(tiny_cgn_file, out, log=notes.append)
    assert any("shard 1" in n and "damaged" in n for n in notes)
    assert lab.read_bytes() == labels and (out / "shard-00001.images.npy").read_bytes() == images
    assert len(CounterfactualSet(out)) == 60
    (out / "shard-00000.images.npy").write_bytes(b"\x93NUMPY" + b"\0" * 100)  # damaged images
    with pytest.raises(CGNError, match="shard 0 damaged"):
        CounterfactualSet(out)
    (out / "manifest.json").write_text('{"format": ')
    with pytest.raises(CGNError, match="manifest.*damaged"):
        CounterfactualSet(out)


def test_generation_bounds_and_disk_space(tiny_cgn_file, tmp_path, monkeypatch):
    import shutil
    from cgn.cli import main
    from cgn.mnist.counterfactuals import GenerateConfig
    with pytest.raises(ValueError, match="n must be between"):
        GenerateConfig(n=10**99)
    assert main(["generate", "--checkpoint", str(tiny_cgn_file), "--n", "1e99",
                 "--out", str(tmp_path / "huge")]) == 2
    assert not (tmp_path / "huge").exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))
    with pytest.raises(CGNError, match=r"need .* GB, but only .* GB are free"):
        _generate(tiny_cgn_file, tmp_path / "small")
    release_all()
    assert main(["generate", "--checkpoint", str(tiny_cgn_file), "--n", "1e6",
                 "--out", str(tmp_path / "small2")]) == 2
    assert not (tmp_path / "small2").exists()  # refused before anything was written


def test_reproduce_settings_are_bounded():
    from cgn.mnist.reproduce import ReproduceConfig
    for bad in ({"n_counterfactuals": 10**12}, {"ablation_sizes": [10, 10**12]}, {"epochs": -1},
                {"cgn_steps": 0}):
        with pytest.raises(ValueError):
            ReproduceConfig(**bad)


def test_two_generations_on_one_folder(tiny_cgn_file, tmp_path):
    from cgn.cli import main
    from faults import cgn_process
    out = tmp_path / "cf"
    first = cgn_process(["generate", "--checkpoint", str(tiny_cgn_file), "--n", "400000",
                         "--out", str(out)])
    try:
        deadline = time.monotonic() + 120
        while not ((out / ".lock").exists() and (out / ".lock").read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(["generate", "--checkpoint", str(tiny_cgn_file), "--n", "400000",
                     "--out", str(out)]) == 2
    finally:
        first.kill()
        first.wait()
    assert not any(out.glob("shard-*.images.npy"))  # the second process wrote nothing


# -- bad inputs to the MNIST commands -----------------------------------------------------------

def test_classify_checks_its_images_and_labels(tmp_path, capsys):
    import numpy as np
    from cgn.cli import main
    from cgn.mnist.classifier import CHECKPOINT_KIND, MnistClassifier
    ck = tmp_path / "clf.pt"
    save_checkpoint(ck, kind=CHECKPOINT_KIND, step=0, config={}, model=MnistClassifier().state_dict())
    imgs = np.zeros((6, 32, 32, 3), np.uint8)
    cases = {"mismatched": {"images": imgs, "labels": np.arange(5)},
             "two-d": {"images": imgs, "labels": np.zeros((6, 2), np.int64)},
             "strings": {"images": imgs, "labels": np.array(list("abcdef"))},
             "no-images": {"labels": np.arange(6)}}
    for name, arrays in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        assert main(["classify", "--checkpoint", str(ck), "--images", str(tmp_path / f"{name}.npz")]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("cgn: error: ") and err.count("\n") == 1, (name, err)
    np.savez(tmp_path / "ok.npz", images=imgs, labels=np.arange(6))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert main(["classify", "--checkpoint", str(ck), "--images", str(tmp_path / "cut.npz")]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    np.savez(tmp_path / "nolabels.npz", images=imgs)
    assert main(["classify", "--checkpoint", str(ck), "--images", str(tmp_path / "nolabels.npz")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 6 and "no labels" in err
    assert main(["classify", "--checkpoint", str(ck), "--images", str(tmp_path / "ok.npz")]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 100


def test_a_batch_larger_than_the_data_is_refused_before_any_step(tmp_path, capsys):
    from cgn.cli import main
    from conftest import require_mnist
    require_mnist()
    out = tmp_path / "run"
    assert main(["train-cgn", "--preset", "double-colored-mnist", "--limit-train", "16",
                 "--batch-size", "16", "--steps", "2", "--feature-extractor", "random",
                 "--set", "train.shape_judge=false", "--out", str(out)]) == 0
    assert main(["train-cgn", "--preset", "double-colored-mnist", "--limit-train", "20",
                 "--set", "train.batch_size=32", "--feature-extractor", "random",
                 "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert "limit_train must be >= batch_size" in err or "fewer than one batch" in err
    assert not (tmp_path / "big").exists()  # nothing left behind: the corrected rerun just runs


def test_negative_max_steps_is_refused(tmp_path, capsys):
    from cgn.cli import main
    from conftest import require_mnist
    require_mnist()
    out = tmp_path / "clf"
    assert main(["train-classifier", "--dataset", "double-colored-mnist", "--train-set", "real",
                 "--limit-real", "64", "--epochs", "1", "--max-steps", "-5", "--out", str(out)]) == 2
    assert "max_steps must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_a_damaged_shape_judge_cache_is_rebuilt(tmp_path, monkeypatch):
    import numpy as np
    from conftest import require_mnist
    from cgn.mnist.quality import ShapeJudge
    require_mnist()
    judge = ShapeJudge.load()  # the session's cache (built once, shared with other tests)
    monkeypatch.setenv("CGN_HOME", str(tmp_path))
    (tmp_path / "judges").mkdir()
    np.savez(tmp_path / "judges" / "probe.npz", weights=judge.weights.numpy(), proj=judge.proj.numpy())
    good = (tmp_path / "judges" / "probe.npz").read_bytes()
    name = f"mnist-shape-judge-v{ShapeJudge.VERSION}-f{ShapeJudge.N_FEATURES}-r{ShapeJudge.RIDGE:g}.npz"
    path = tmp_path / "judges" / name   # a judge with other settings never reads this file
    path.write_bytes(good[: len(good) // 3])  # truncated: rebuilt, not trusted
    again = ShapeJudge.load()
    assert torch.equal(again.weights, judge.weights) and torch.equal(again.proj, judge.proj)
    np.savez(path, weights=np.zeros((3, 10), np.float32), proj=np.zeros((3, 3), np.float32))
    assert ShapeJudge._read_cache(path) is None  # another judge's shapes: not reused


def test_a_damaged_image_in_an_image_folder_is_one_line(tmp_path):
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader
    from cgn.cli import _worker_error
    from cgn.imagenet.imagefolder import ImageNetFolder
    from torchvision.transforms import ToTensor
    d = tmp_path / "val" / "n01440764"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "good.png")
    png = (d / "good.png").read_bytes()
    (d / "cut.png").write_bytes(png[: len(png) // 2])    # truncated
    (d / "text.png").write_text("not an image")          # not an image at all
    ds = ImageNetFolder(tmp_path / "val", ToTensor())
    names = [Path(p).name for p, _ in ds.samples]
    for name in ("cut.png", "text.png"):
        with pytest.raises(CGNError, match=f"{name} is not a readable image"):
            ds[names.index(name)]
    with pytest.raises(CGNError) as e:  # from a worker process, as training reads it
        list(DataLoader(ds, batch_size=1, num_workers=1))
    line = _worker_error(str(e.value))
    assert "is not a readable image" in line and "\n" not in line and "Traceback" not in line


def test_a_failing_command_never_removes_an_earlier_commands_run(tmp_path, capsys):
    from cgn.cli import main
    from cgn.core.rundir import RunDir
    earlier = tmp_path / "earlier"
    RunDir(earlier, {"a": 1})                       # started by an earlier command ...
    assert main(["download", "--list"]) == 0        # ... which ended
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert (earlier / "config.json").is_file()      # the failure cleaned up only its own start
