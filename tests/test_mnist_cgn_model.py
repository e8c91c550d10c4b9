"""The MNIST CGN: mechanisms, composer invariants, parameter count, sampling API, and the
authors' checkpoints loaded strictly through our code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgn.config import to_dict
from cgn.core.checkpoint import save_checkpoint
from cgn.core.composer import compose
from cgn.core.sampling import mechanism_seeds, sample, sample_plain, to_uint8
from cgn.errors import CGNError
from cgn.mnist.config import ModelConfig, PRESETS
from cgn.presets import preset
from cgn.mnist.discriminator import ConvDiscriminator, LinearDiscriminator
from cgn.mnist.model import MnistCGN, count_parameters, load_generator
from cgn.mnist.reference import from_reference, load_reference, to_reference
from cgn.mnist.texture import tile_and_crop

REFERENCE_FILES = {"colored-mnist": "colored_mnist.pth", "double-colored-mnist": "double_colored_mnist.pth",
                   "wildlife-mnist": "wildlife_mnist.pth"}


def ref_path(shared_data, name="double-colored-mnist"):
    return shared_data / "cgn_reference" / "checkpoints" / REFERENCE_FILES[name]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MnistCGN()


def test_parameter_count(model):
    counts = count_parameters(model)
    assert counts["trainable"] == 659_992
    # + 470 BatchNorm running statistics = the 660,462 numbers of the authors' state dicts
    assert counts["state_dict"] == 660_462


def test_mechanism_shapes_and_ranges(model):
    inp = model.sample_inputs(6, torch.Generator().manual_seed(0))
    out = model(**inp)
    assert out.mask.shape == (6, 1, 32, 32)
    assert out.foreground.shape == out.background.shape == out.composite.shape == (6, 3, 32, 32)
    assert out.mask.min() >= 1e-4 and out.mask.max() <= 1 - 1e-4
    assert out.foreground.abs().max() <= 1 and out.background.abs().max() <= 1
    assert torch.equal(out.composite, compose(out.mask, out.foreground, out.background))


def test_composer_invariants(model):
    inp = model.sample_inputs(4, torch.Generator().manual_seed(1))
    out = model(**inp)
    ones, zeros = torch.ones_like(out.mask), torch.zeros_like(out.mask)
    assert torch.equal(compose(ones, out.foreground, out.background), out.foreground)
    assert torch.equal(compose(zeros, out.foreground, out.background), out.background)
    half = compose(torch.full_like(out.mask, 0.5), out.foreground, out.background)
    assert torch.allclose(half, (out.foreground + out.background) / 2, atol=1e-6)


def test_tile_and_crop_is_a_circular_shift():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(tile_and_crop(x, torch.zeros(2, 2, dtype=torch.long)), x)
    assert torch.equal(tile_and_crop(x, torch.full((2, 2), 4, dtype=torch.long)), x)  # one full period
    off = torch.tensor([[1, 0], [2, 3]])
    out = tile_and_crop(x, off)
    assert torch.equal(out[0], torch.roll(x[0], shifts=(-1, 0), dims=(1, 2)))
    assert torch.equal(out[1], torch.roll(x[1], shifts=(-2, -3), dims=(1, 2)))


def test_tile_and_crop_equals_the_tiled_crop_with_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    off = torch.randint(0, 7, (5, 2), generator=g)  # every start position 0..H, as draw_offsets
    x_ref = x.detach().clone().requires_grad_()
    tiled = x_ref.repeat(1, 1, 2, 2)
    ref = torch.stack([tiled[i, :, r:r + 6, c:c + 6] for i, (r, c) in enumerate(off.tolist())])
    out = tile_and_crop(x, off)
    assert torch.equal(out, ref)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_init_follows_config():
    m = MnistCGN(ModelConfig(init_type="normal", init_gain=0.03))
    w = m.texture.layers[3].weight
    assert abs(float(w.detach().std()) - 0.03) < 0.005
    bn = m.shape.layers[5].weight
    assert abs(float(bn.detach().mean()) - 1) < 0.03
    assert torch.equal(m.shape.layers[0].bias, torch.zeros_like(m.shape.layers[0].bias))
    mo = MnistCGN(ModelConfig(init_type="orthogonal", init_gain=0.1))
    w = mo.shape.layers[0].weight  # [4096, 42]: orthonormal columns times the gain
    assert torch.allclose(w.T @ w, 0.01 * torch.eye(42), atol=1e-4)


def test_discriminators():
    x, y = torch.randn(5, 3, 32, 32), torch.randint(10, (5,))
    lin, conv = LinearDiscriminator(10, 64), ConvDiscriminator(10, 8)
    assert lin(x, y).shape == (5,) and conv(x, y).shape == (5,)
    assert [m.kernel_size for m in conv.model if isinstance(m, torch.nn.Conv2d)] == [(3, 3), (3, 3), (4, 4), (4, 4), (1, 1)]



def test_linear_discriminator_is_the_layer_on_the_concatenation_without_its_input_gradient():
    """The first layer split into its image and label columns computes the original's
    ``Linear(cat[flatten(x), e(y)])`` with the same parameters; a real (or detached) image then
    gets no [B, 3072] input gradient, only the parameters do."""
    from torch.utils._python_dispatch import TorchDispatchMode
    torch.manual_seed(0)
    d = LinearDiscriminator(10, 64).eval()  # eval: no dropout, so both forms are deterministic
    x, y = torch.randn(5, 3, 32, 32), torch.randint(10, (5,))

    def reference(x):
        return d.model(torch.cat([x.flatten(1), d.label_embedding(y)], 1)).view(-1)

    xr = x.clone().requires_grad_(True)
    ref = reference(xr)
    ref_grads = torch.autograd.grad(ref.square().sum(), [xr, *d.parameters()])
    xs = x.clone().requires_grad_(True)
    out = d(xs, y)
    grads = torch.autograd.grad(out.square().sum(), [xs, *d.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)

    class Shapes(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                self.seen.append(tuple(out.shape))
            return out

    with Shapes() as mode:
        d(x, y).square().sum().backward()  # D's own step: x needs no gradient
    assert mode.seen and (5, 3072) not in mode.seen and (5, 3082) not in mode.seen
    assert d.model[0].weight.grad is not None and d.label_embedding.weight.grad is not None

def test_presets_hold_the_original_hyper_parameters():
    assert set(PRESETS) == {"colored-mnist", "double-colored-mnist", "wildlife-mnist"}
    c, d, w = (preset(n) for n in ("colored-mnist", "double-colored-mnist", "wildlife-mnist"))
    assert (c.loss.mask_weight, c.loss.style_weights, c.model.disc, c.model.init_type, c.model.init_gain, c.model.ndf) == \
        (0.1, [0.05, 0.1, 0.01, 0.0], "linear", "orthogonal", 0.1, 512)
    assert (d.loss.mask_weight, d.loss.style_weights, d.model.disc, d.model.init_gain) == (0.3, [0.0, 0.05, 0.0, 0.05], "linear", 0.2)
    assert (w.loss.mask_weight, w.loss.style_weights, w.model.disc, w.model.init_type, w.model.init_gain, w.model.ndf) == \
        (0.3, [0.01, 0.05, 0.0, 0.01], "conv", "normal", 0.03, 32)
    for cfg in (c, d, w):
        assert (cfg.optim.lr, cfg.optim.betas, cfg.train.batch_size, cfg.train.epochs) == (2e-4, [0.5, 0.999], 16, 15)
    for p in PRESETS.values():
        assert p.command.startswith("cgn train-cgn --preset") and p.reproduces and p.recipe


def test_sampling_is_batch_size_independent_and_per_mechanism(model):
    shape, tex, bg = torch.arange(10) % 10, (torch.arange(10) + 3) % 10, (torch.arange(10) + 5) % 10
    a = sample(model, 10, shape, tex, bg, seed=7, batch_size=3)
    b = sample(model, 10, shape, tex, bg, seed=7, batch_size=10)
    # same latents whatever the batch size; only float rounding of batched kernels differs
    assert torch.allclose(a.composite, b.composite, atol=1e-4) and torch.allclose(a.mask, b.mask, atol=1e-4)
    # changing the background label changes only the background
    c = sample(model, 10, shape, tex, (bg + 1) % 10, seed=7, batch_size=3)
    assert torch.equal(a.mask, c.mask) and torch.equal(a.foreground, c.foreground)
    assert not torch.equal(a.background, c.background)
    # changing only the background seed changes only the background
    seeds = mechanism_seeds(7)
    d = sample(model, 10, shape, tex, bg, seeds={**seeds, "background": seeds["background"] + 1}, batch_size=3)
    assert torch.equal(a.mask, d.mask) and torch.equal(a.foreground, d.foreground)
    assert not torch.equal(a.background, d.background)
    assert len(set(seeds.values())) == 3
    # a plain sample shares the noise
    p = sample_plain(model, shape, seed=7)
    assert torch.equal(p.labels["background"], shape)
    assert model.training  # sampling restores the mode


def test_sampling_rejects_bad_labels(model):
    with pytest.raises(CGNError):
        sample(model, 4, 10, 0, 0, seed=0)
    with pytest.raises(CGNError):
        sample(model, 4, [1, 2], 0, 0, seed=0)


def test_to_uint8_round_trip():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert to_uint8(x).tolist() == [[[[0, 128, 255]]]]


def test_reference_checkpoints_load_strictly(shared_data):
    for name in REFERENCE_FILES:
        m, info = load_reference(ref_path(shared_data, name))
        assert info["dataset"] == name and not m.training
        # round trip to the authors' key names
        state = torch.load(ref_path(shared_data, name), map_location="cpu", weights_only=True)
        back = to_reference(m.state_dict())
        assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
        # masks of the authors' CGN through our code: sparse, non-degenerate (docs/reference.md#the-authors-mnist-checkpoints: 0.07-0.24)
        s = sample_plain(m, torch.arange(10).repeat(20), seed=0)
        per_class = [float(s.mask[s.labels["shape"] == k].mean()) for k in range(10)]
        assert 0.05 < min(per_class) and max(per_class) < 0.3, per_class


def test_reference_mismatches_are_clear_errors(shared_data, tmp_path):
    state = torch.load(ref_path(shared_data), map_location="cpu", weights_only=True)
    missing = {k: v for k, v in state.items() if k != "f_text2.11.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CGNError, match="missing key"):
        load_reference(tmp_path / "missing.pth")
    extra = dict(state, **{"f_shape.99.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CGNError, match="unexpected key"):
        load_reference(tmp_path / "extra.pth")
    with pytest.raises(CGNError, match="shape mismatch"):
        load_reference(ref_path(shared_data), ModelConfig(ngf=16))
    torch.save({"classifier.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CGNError, match="not part of the authors"):
        load_reference(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CGNError, match="not a readable"):
        load_reference(tmp_path / "junk.pth")
    with pytest.raises(CGNError, match="does not exist"):
        load_reference(tmp_path / "nope.pth")
    # our own checkpoint format is recognised and redirected, and vice versa
    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, kind="mnist-cgn", step=0, config={}, model={})
    with pytest.raises(CGNError, match="drop --reference-format"):
        load_reference(ours)
    with pytest.raises(CGNError, match="not a cgn checkpoint"):
        load_generator(ref_path(shared_data))
    with pytest.raises(CGNError):
        from_reference({"f_shape.0.weight": torch.zeros(1), "bogus": torch.zeros(1)})


def test_old_texture_key_names_load_bit_exactly(tmp_path):
    """Our checkpoints written before the texture mechanism was renamed store it as
    ``foreground.*``; they load (load_generator, MnistCGN.load_weights) to the same tensors,
    and the model samples the same images."""
    torch.manual_seed(3)
    cfg = preset("double-colored-mnist")
    model = MnistCGN(cfg.model).eval()
    state = model.state_dict()
    old = {("foreground." + k[len("texture."):] if k.startswith("texture.") else k): v for k, v in state.items()}
    assert sum(k.startswith("foreground.") for k in old) == sum(k.startswith("texture.") for k in state) > 0
    path = tmp_path / "old.pt"
    save_checkpoint(path, kind="mnist-cgn", step=0, config=to_dict(cfg), model=old)
    loaded, _ = load_generator(path)
    fresh = MnistCGN(cfg.model)
    fresh.load_weights(old, "old keys")
    for m in (loaded, fresh):
        got = m.state_dict()
        assert list(got) == list(state)
        assert all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in state.items())
    a = sample(model, 12, torch.arange(12) % 10, 3, 7, seed=1)
    b = sample(loaded, 12, torch.arange(12) % 10, 3, 7, seed=1)
    assert torch.equal(a.composite, b.composite) and torch.equal(a.mask, b.mask)
    with pytest.raises(CGNError, match="missing key"):  # anything else still has to fit exactly
        fresh.load_weights({k: v for k, v in old.items() if not k.startswith("foreground.")}, "partial")
