"""Two-process ImageNet CGN training with torchrun and the gloo backend (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from cgn.core.checkpoint import load_checkpoint


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "CGN_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cgn", "imagenet", "train", "--preset", "tiny", "--out", str(out),
           "--episodes", "1", "--batch-acc", "2", "--quiet",
           "--set", "model.tiny_resolution=8", "--set", "loss.text_work_size=8",
           "--set", "loss.text_top=10"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt", kind="imagenet-cgn")
    assert ckpt["step"] == 1 and ckpt["extra"]["world_size"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and all(torch.isfinite(torch.tensor(v)) for k, v in rows[0].items()
                                  if k.startswith("loss/"))
    assert (out / "samples" / "sheet_ep0000001.png").is_file()
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1  # TensorBoard: rank 0 only
    # rank 0 alone prints the final record
    assert res.stdout.count('"step": 1') == 1
    # DDP semantics: the update equals one process that averages both ranks' gradients
    # (spectral-norm power iterations do not depend on the data: every rank's vectors follow the
    # same trajectory, which the emulation keeps by replaying each micro-step from one snapshot)
    from cgn.config import override
    from cgn.presets import preset
    from cgn.imagenet.train import Trainer
    cfg = override(preset("tiny"), {"model.tiny_resolution": 8, "loss.text_work_size": 8,
                                    "loss.text_top": 10, "train.episodes": 1, "train.batch_acc": 2})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = Trainer(cfg, tmp_path / "emulated", quiet=True)
        model = tr.model
        for micro in range(2):
            start = {k: b.clone() for k, b in model.named_buffers()}
            tr.micro_step(micro, 0, 1 / 4)
            after0 = {k: b.clone() for k, b in model.named_buffers()}
            for k, b in model.named_buffers():
                b.copy_(start[k])
            tr.micro_step(micro, 1, 1 / 4)
            for k, b in model.named_buffers():
                b.copy_(after0[k])
        tr.step_optimizers()
    finally:
        torch.set_num_threads(n)
    emulated = model.state_dict()
    for k, v in ckpt["model"].items():
        assert torch.allclose(v, emulated[k], rtol=1e-5, atol=1e-8), k
