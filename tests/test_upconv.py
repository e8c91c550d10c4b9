"""The fused nearest-x2-upsample + 3x3-conv (cgn.mnist.upconv) against the plain pair, alone and
inside the MNIST CGN generator (train and eval mode, gradients, bf16 autocast, channels_last)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cgn.mnist.model import MnistCGN
from cgn.mnist.mechanism import frozen_inference, set_fused
from cgn.mnist.upconv import (FrozenLayers, _zero_phase_border, is_fusable, phase_kernel, polyphase_kernel,
                              run_layers, upconv2x)


def plain(x, w, b=None):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)


def test_derivation_in_float64():
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 5, 4, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(upconv2x(x, w), plain(x, w), atol=1e-12, rtol=0)
    assert phase_kernel(w).shape == (8, 3, 2, 2)


@pytest.mark.parametrize("n,cin,cout,h,w,bias", [
    (3, 5, 4, 6, 7, False), (2, 8, 1, 8, 8, False), (2, 4, 6, 1, 1, True), (1, 16, 8, 16, 16, True),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_and_gradients_match_plain(n, cin, cout, h, w, bias, channels_last):
    torch.manual_seed(1)
    x = torch.randn(n, cin, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(cout, cin, 3, 3) / 3
    b = torch.randn(cout) if bias else None
    leaves = [t.clone().requires_grad_() for t in (x, wt) + ((b,) if bias else ())]
    leaves_ref = [t.clone().requires_grad_() for t in (x, wt) + ((b,) if bias else ())]
    y, y_ref = upconv2x(*leaves), plain(*leaves_ref)
    assert y.shape == (n, cout, 2 * h, 2 * w)
    assert y.is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for a, r in zip(leaves, leaves_ref):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-5)


def test_channels_last_weight_gives_channels_last_output():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(3, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    y = upconv2x(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, plain(x, w), atol=1e-5, rtol=1e-5)


def test_bf16_autocast():
    torch.manual_seed(2)
    x, w = torch.randn(2, 8, 8, 8), torch.randn(4, 8, 3, 3) / 8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = upconv2x(x, w), plain(x, w)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), atol=0.05, rtol=0.02)


def test_only_the_exact_pattern_is_fused():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    assert is_fusable(nn.Upsample(scale_factor=2, mode="nearest"), conv)
    assert is_fusable(nn.Upsample(scale_factor=(2, 2), mode="nearest"), conv)
    assert not is_fusable(nn.Upsample(scale_factor=2, mode="bilinear"), conv)
    assert not is_fusable(nn.Upsample(scale_factor=3, mode="nearest"), conv)
    assert not is_fusable(nn.Upsample(size=8, mode="nearest"), conv)
    for other in (nn.Conv2d(2, 2, 3, padding=1, stride=2), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 5, padding=2),
                  nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Conv2d(2, 2, 3, padding=1, groups=2)):
        assert not is_fusable(nn.Upsample(scale_factor=2, mode="nearest"), other)
    seq = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                        nn.Upsample(scale_factor=2), nn.Conv2d(3, 2, 3, padding=1, stride=2))
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(run_layers(seq, x), seq(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run_layers(seq, x, fused=False), seq(x), atol=0, rtol=0)


def _model_out(model, inp):
    out = model(**inp)
    return [out.mask, out.foreground, out.background, out.composite]


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(3)
    return MnistCGN()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generator_fused_matches_plain(generator, train, dtype):
    """Same outputs (and, in train mode, parameter gradients and BatchNorm running statistics).
    The gradients reach O(100) and pass a clamp and instance norms, so they are compared in
    float64, where the two paths agree to ~1e-12."""
    fused = copy.deepcopy(generator).to(dtype)
    assert fused.shape.fused and fused.texture.fused and fused.background.fused
    plain_model = set_fused(copy.deepcopy(fused), False)
    assert not plain_model.shape.fused and not plain_model.background.fused
    assert list(plain_model.state_dict()) == list(fused.state_dict())
    fused.train(train)
    plain_model.train(train)
    inp = fused.sample_inputs(4, torch.Generator().manual_seed(0))
    inp["noise"] = inp["noise"].to(dtype)
    with torch.set_grad_enabled(train):
        outs, refs = _model_out(fused, inp), _model_out(plain_model, inp)
    tol = {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, **tol)
    if train and dtype == torch.float64:
        weigh = lambda t: (t * torch.linspace(-1, 1, t.numel(), dtype=dtype).view_as(t)).sum()  # noqa: E731
        sum(weigh(o) for o in outs).backward()
        sum(weigh(r) for r in refs).backward()
        for (name, p), (_, q) in zip(fused.named_parameters(), plain_model.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-9, msg=name)
        for (name, s), (_, t) in zip(fused.named_buffers(), plain_model.named_buffers()):
            torch.testing.assert_close(s, t, atol=1e-10, rtol=1e-10, msg=name)  # BN running stats


def test_generator_bf16_channels_last_generation(generator):
    torch.manual_seed(4)
    model = copy.deepcopy(generator).eval().to(memory_format=torch.channels_last)
    inp = {"labels": torch.arange(4), "noise": torch.randn(4, model.latent_dim),
           "offsets": torch.zeros(4, 2, dtype=torch.long)}
    outs = {}
    for fused in (True, False):
        set_fused(model, fused)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[fused] = model.run_mechanism("texture", **inp).float()
    torch.testing.assert_close(outs[True], outs[False], atol=0.05, rtol=0.05)


# ---- the inference path: folded BatchNorm, fused activations, polyphase convs -------------------

def test_polyphase_conv_of_a_phase_map_equals_conv_of_the_interleaved_map():
    torch.manual_seed(5)
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    w1, w2, b2 = (torch.randn(3, 5, 3, 3, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64),
                  torch.randn(2, dtype=torch.float64))
    ref = F.conv2d(plain(x, w1), w2, b2, padding=1)
    phases = _zero_phase_border(F.conv2d(x, phase_kernel(w1), padding=1), 3)
    out = F.pixel_shuffle(F.conv2d(phases, polyphase_kernel(w2), b2.repeat_interleave(4)), 2)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(6)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics to fold
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("mechanism", ["shape", "texture", "background"])
def test_frozen_layers_equal_eval_layers_in_float64(generator, mechanism):
    model = _randomise_bn(copy.deepcopy(generator)).double().eval()
    layers = getattr(model, mechanism).layers
    z = torch.randn(3, layers[0].in_features, dtype=torch.float64)
    frozen = FrozenLayers(layers, torch.float64)
    forms = [s.form for s in frozen.steps if hasattr(s, "form")]
    assert forms == (["up", "up"] if mechanism == "shape" else ["up", "up-phases", "poly"])
    with torch.no_grad():
        torch.testing.assert_close(frozen(z), layers(z), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.06)])
def test_frozen_inference_matches_the_model(generator, dtype, tol):
    model = _randomise_bn(copy.deepcopy(generator)).eval()
    g = torch.Generator().manual_seed(7)
    inp = {"labels": torch.arange(6) % 10, "noise": torch.randn(6, model.latent_dim, generator=g),
           "offsets": torch.randint(0, 33, (6, 2), generator=g)}
    with torch.no_grad():
        ref = {m: model.run_mechanism(m, **(inp if m != "shape" else {k: inp[k] for k in ("labels", "noise")}))
               for m in model.mechanisms}
        with frozen_inference(model, dtype):
            assert all(m.frozen is not None for m in (model.shape, model.texture, model.background))
            out = {m: model.run_mechanism(m, **(inp if m != "shape" else {k: inp[k] for k in ("labels", "noise")}))
                   for m in model.mechanisms}
    assert model.shape.frozen is None and model.texture.frozen is None  # released on exit
    for m in model.mechanisms:
        assert out[m].dtype == dtype
        torch.testing.assert_close(out[m].float(), ref[m], atol=tol, rtol=tol, msg=m)
    with pytest.raises(ValueError, match="eval mode"):
        with frozen_inference(model.train()):
            pass


def test_frozen_layers_fall_back_when_the_fused_kernel_fails(generator, monkeypatch):
    import cgn.mnist.upconv as U
    model = _randomise_bn(copy.deepcopy(generator)).eval()
    layers, z = model.texture.layers, torch.randn(2, model.texture.layers[0].in_features)
    with torch.no_grad():
        ref = layers(z)

        def broken(*args):
            raise RuntimeError("no such kernel")
        monkeypatch.setattr(U, "_pointwise_op", lambda: broken)
        frozen = FrozenLayers(layers, torch.float32)
        torch.testing.assert_close(frozen(z), ref, atol=1e-4, rtol=1e-4)
        assert all(getattr(s, "op", None) is None for s in frozen.steps)
