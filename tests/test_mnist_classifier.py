"""The MNIST classifier: architecture, training through the CLI with resume, `cgn classify`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from cgn.cli import main
from cgn.core.checkpoint import load_checkpoint
from cgn.mnist.classifier import MnistClassifier
from conftest import require_mnist


def test_architecture_shapes():
    m = MnistClassifier()
    out = m(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)
    assert sum(p.numel() for p in m.parameters()) == 6 + (3 * 32 * 25 + 32) + (32 * 32 * 9 + 32) + \
        (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 10 + 10)


def _train(out, *extra):
    return main(["train-classifier", "--dataset", "double-colored-mnist", "--train-set", "real",
                 "--limit-real", "640", "--epochs", "2", "--threads", "1", "--out", str(out), *extra])


def test_train_resume_classify(tmp_path, capsys):
    require_mnist()
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["train_set"] == "real" and 0 <= res["test_acc"] <= 100
    # Interrupted after 13 steps (mid-epoch), then resumed: identical weights and result.
    assert _train(part, "--max-steps", "13") == 0
    assert "interrupted_at_step" in capsys.readouterr().out
    assert _train(part, "--resume") == 0
    capsys.readouterr()
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (full, part))
    assert ra["test_acc"] == rb["test_acc"] and ra["train_acc"] == rb["train_acc"]
    metrics = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/test_acc" in r for r in metrics)

    # cgn classify on an exported split: accuracy against the file's labels + predictions file.
    npz = tmp_path / "test.npz"
    assert main(["data", "build", "double-colored-mnist", "--split", "test", "--out", str(npz)]) == 0
    capsys.readouterr()
    preds = tmp_path / "pred.npz"
    assert main(["classify", "--checkpoint", str(full / "checkpoints" / "last.pt"), "--images", str(npz),
                 "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["n"] == 10000 and abs(out["accuracy"] - ra["test_acc"]) < 1e-6
    with np.load(preds) as z:
        assert z["predictions"].shape == (10000,) and "fg_class" in z.files
        assert abs(100 * np.mean(z["predictions"] == z["labels"]) - out["accuracy"]) < 1e-3


def test_resume_keeps_the_stored_config(tmp_path, capsys):
    """--resume continues the run's stored config.json: a changed --lr or --epochs is refused in
    one line before anything runs; how it runs (--threads, --device) may change."""
    require_mnist()
    out = tmp_path / "run"
    small = ["--set", "limit_test=200", "--set", "train_eval_size=200"]
    assert _train(out, "--max-steps", "3", *small) == 0
    capsys.readouterr()
    before = (out / "checkpoints" / "last.pt").read_bytes()
    for change, field in ((["--lr", "0.5"], "lr (1.0 -> 0.5)"), (["--epochs", "3"], "epochs (2 -> 3)")):
        assert _train(out, "--resume", *small, *change) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"a resume may not change {field}" in err, err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # the stored config is the base: no --dataset needed; other run control is accepted
        assert main(["train-classifier", "--out", str(out), "--resume", "--threads", "1",
                     "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "double-colored-mnist" and res["epochs"] == 2
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 20  # 640 / 64 x 2 epochs


def test_classify_errors(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 28, 28), dtype=np.uint8))
    net = MnistClassifier()
    from cgn.core.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "c.pt", kind="mnist-classifier", step=0, config={}, model=net.state_dict())
    assert main(["classify", "--checkpoint", str(tmp_path / "c.pt"), "--images", str(bad)]) == 2
    assert "must be uint8 [N, 32, 32, 3]" in capsys.readouterr().err
    save_checkpoint(tmp_path / "g.pt", kind="mnist-cgn", step=0, config={}, model={})
    assert main(["classify", "--checkpoint", str(tmp_path / "g.pt"), "--images", str(bad)]) == 2
    assert "'mnist-classifier' checkpoint is needed" in capsys.readouterr().err
    assert main(["train-classifier", "--dataset", "colored-mnist", "--train-set", "real+cf",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--generated DIR" in capsys.readouterr().err


def test_classifier_is_the_spec_function_with_the_same_gradients_and_statistics():
    """The classifier folds its input BatchNorm's affine part into the first conv and max-pools
    before its first ReLU (both faster); the paper's plain layer stack Conv -> ReLU -> MaxPool with
    the same weights must give the same outputs, gradients and BatchNorm statistics, in training
    (a few steps) and in eval mode, in NCHW and channels_last."""
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        ours = MnistClassifier().double().to(memory_format=layout)
        with torch.no_grad():  # a non-trivial input affine, so the fold is exercised
            ours.features[0].weight.uniform_(0.5, 2.0)
            ours.features[0].bias.uniform_(-1.0, 1.0)
        f = copy.deepcopy(ours).features
        spec = torch.nn.Sequential(f[0], f[1], torch.nn.ReLU(), f[2], *list(f)[4:], torch.nn.Flatten(),
                                   copy.deepcopy(ours.head), torch.nn.LogSoftmax(dim=1))
        opts = [torch.optim.Adadelta(m.parameters(), lr=1.0) for m in (ours, spec)]
        for step in range(3):
            x = torch.randn(8, 3, 32, 32, dtype=torch.float64) * 0.7 + 0.2
            y = torch.randint(10, (8,))
            outs = []
            for m, opt in zip((ours, spec), opts):
                m.train()
                opt.zero_grad()
                out = m(x)
                torch.nn.functional.nll_loss(out, y).backward()
                outs.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
                opt.step()
            torch.testing.assert_close(outs[0][0], outs[1][0])
            for a, b in zip(outs[0][1], outs[1][1]):
                torch.testing.assert_close(a, b)
        assert list(ours.state_dict()) == list(MnistClassifier().state_dict())
        for key, value in ours.state_dict().items():
            if key.startswith("features.0."):  # running mean / var / batch count of the input BN
                torch.testing.assert_close(value, spec.state_dict()[key.replace("features.", "")])
        ours.eval(), spec.eval()
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
        torch.testing.assert_close(ours(x), spec(x))
