"""BigGAN-deep and U2-Net: public checkpoint layouts, loading, spectral norm, saliency range."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cgn.errors import CGNError
from cgn.imagenet.biggan import BigGAN, BigGANConfig, tiny_config
from cgn.imagenet.u2net import U2Net, U2NetConfig

DATA = Path(__file__).resolve().parent / "data"


pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")


def _expected(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split()
        out[key] = tuple(int(s) for s in shape.split(",") if s)
    return out


def _shapes(model: torch.nn.Module, skip: str | None = None) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not (skip and k.endswith(skip))}


def test_biggan_deep_256_has_the_public_layout():
    with torch.device("meta"):
        model = BigGAN(BigGANConfig())
    expected = _expected("biggan_deep_256_keys.txt")
    assert len(expected) == 602
    assert _shapes(model) == expected
    assert sum(p.numel() for p in model.parameters()) == 55_880_833
    # 12 GenBlocks + the attention layer before block 8
    assert len(model.generator.layers) == 13
    assert type(model.generator.layers[8]).__name__ == "SelfAttn"


@pytest.mark.parametrize("arch,name,n_params", [("full", "u2net_keys.txt", 44_009_869),
                                                 ("small", "u2netp_keys.txt", 1_131_181)])
def test_u2net_has_the_public_layout(arch, name, n_params):
    with torch.device("meta"):
        model = U2Net(U2NetConfig(arch=arch))
    expected = _expected(name)
    assert len(expected) == 686
    assert _shapes(model, skip="num_batches_tracked") == expected
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_biggan_from_pretrained_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(16, channel_width=4, z_dim=8)
    model = BigGAN(cfg).eval()
    model.save_pretrained(tmp_path / "g")
    loaded = BigGAN.from_pretrained(tmp_path / "g").eval()
    assert loaded.config == cfg
    u = torch.randn(2, 8)
    y = model.class_vector([0, 999])
    with torch.no_grad():
        assert torch.equal(model(u, y, 0.5), loaded(u, y, 0.5))
    # the .bin itself (config next to it) also works
    BigGAN.from_pretrained(tmp_path / "g" / "pytorch_model.bin")
    with pytest.raises(CGNError, match="do not exist"):
        BigGAN.from_pretrained(tmp_path / "nothing")
    (tmp_path / "g2").mkdir()
    with pytest.raises(CGNError, match="config.json"):
        BigGAN.from_pretrained(tmp_path / "g2")
    # a file for another width: a one-line error naming the mismatch
    BigGAN(tiny_config(16, channel_width=8, z_dim=8)).save_pretrained(tmp_path / "g3")
    (tmp_path / "g3" / "config.json").write_text(cfg.to_json())
    with pytest.raises(CGNError, match="shape mismatch"):
        BigGAN.from_pretrained(tmp_path / "g3")
    (tmp_path / "g3" / "pytorch_model.bin").write_bytes(b"not a torch file")
    with pytest.raises(CGNError, match="not a readable"):
        BigGAN.from_pretrained(tmp_path / "g3")


def test_spectral_norm_iterates_only_in_training():
    torch.manual_seed(0)
    model = BigGAN(tiny_config(8, channel_width=4, z_dim=8))
    u, y = torch.randn(1, 8), model.class_vector([3])
    before = model.generator.gen_z.weight_u.clone()
    model.eval()
    with torch.no_grad():
        x = model(u, y, 1.0)
    assert torch.equal(before, model.generator.gen_z.weight_u)
    assert x.shape == (1, 3, 8, 8) and x.abs().max() <= 1
    model.train()
    model(u, y, 1.0).mean().backward()
    assert not torch.equal(before, model.generator.gen_z.weight_u)
    assert model.generator.gen_z.weight_orig.grad is not None
    with pytest.raises(ValueError, match="truncation"):
        model(u, y, 0.0)


def test_standing_stats_interpolate_between_grid_rows():
    model = BigGAN(tiny_config(8, channel_width=4, z_dim=8))
    bn = model.generator.bn
    bn.running_means.copy_(torch.arange(51.0)[:, None].expand_as(bn.running_means))
    assert bn.stats(0.5)[0][0].item() == 25.0
    assert bn.stats(1.0)[0][0].item() == 50.0
    assert bn.stats(0.41)[0][0].item() == pytest.approx(20.5)


def test_u2net_loads_release_files_with_or_without_bn_counters(tmp_path):
    torch.manual_seed(0)
    src = U2Net(U2NetConfig(arch="tiny")).eval()
    state = src.state_dict()
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "new.pth")
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        ref = src(x)
    for name in ("old.pth", "new.pth"):
        net = U2Net.from_pretrained(tmp_path / name)
        assert net.config.arch == "tiny" and not net.training
        assert all(not p.requires_grad for p in net.parameters())
        with torch.no_grad():
            out = net(x)
        assert torch.equal(out, ref)
        assert out.shape == (2, 1, 24, 24) and 0 <= out.min() and out.max() <= 1
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CGNError, match="not a U2-Net"):
        U2Net.from_pretrained(tmp_path / "bad.pth")
    with pytest.raises(CGNError, match="do not exist"):
        U2Net.from_pretrained(tmp_path / "missing.pth")


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_biggan_batchnorm_is_the_formula(conditional, batch_stats):
    """BigGANBatchNorm (native batch_norm + addcmul) against (x - mean) / sqrt(var + eps) * gamma
    + beta written out in float64: value and gradients (input, condition), channels_last too."""
    from cgn.imagenet.biggan_layers import BigGANBatchNorm
    torch.manual_seed(0)
    bn = BigGANBatchNorm(6, 5 if conditional else None, n_stats=3, eps=1e-4).double()
    bn.running_means.normal_()
    bn.running_vars.uniform_(0.5, 2.0)
    if not conditional:
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    bn.batch_stats = batch_stats
    bn.eval()  # spectral norm: no power iteration between the two evaluations
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    cond = torch.randn(4, 5, dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.clone().to(memory_format=layout).requires_grad_()
        ci = cond.clone().requires_grad_()
        got = bn(xi, 0.25, ci if conditional else None)
        xr = x.clone().requires_grad_()
        cr = cond.clone().requires_grad_()
        if batch_stats:  # the batch's own statistics, gradients through them
            mean, var = xr.mean((0, 2, 3)), xr.var((0, 2, 3), unbiased=False)
        else:  # truncation 0.25 on a 3-row grid: halfway between rows 0 and 1
            mean, var = bn.running_means[:2].mean(0), bn.running_vars[:2].mean(0)
        h = (xr - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-4)
        if conditional:
            want = h * (1 + bn.scale(cr)[:, :, None, None]) + bn.offset(cr)[:, :, None, None]
        else:
            want = h * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        assert torch.allclose(got, want, atol=1e-10)
        w = torch.randn_like(want)
        (got * w).sum().backward()
        (want * w).sum().backward()
        assert torch.allclose(xi.grad, xr.grad, atol=1e-10)
        if conditional:
            assert torch.allclose(ci.grad, cr.grad, atol=1e-10)
