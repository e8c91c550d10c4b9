"""FID (closed forms, statistics cache), the TF-Inception port (layout, resize) and `cgn imagenet
metrics` with IS + FID end to end on a random weight file in the published layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cgn.cli import main
from cgn.core.metrics import calc_metric, get_metric
from cgn.errors import CGNError
from cgn.imagenet.fid import GaussianStats, fid, frechet_distance, load_stats
from cgn.imagenet.inception_tf import (TF_INCEPTION_FILE, check_layout, expected_layout, load_tf_inception,
                                       random_tf_inception, tf_resize_bilinear)
from cgn.imagenet.quality import inception_score, reference_statistics


def _closed_form_2d(mu_a, sa, mu_b, sb):
    # for 2x2 M with non-negative eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    tr_root = np.sqrt(np.trace(sa @ sb) + 2 * np.sqrt(np.linalg.det(sa) * np.linalg.det(sb)))
    return float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(sa) + np.trace(sb) - 2 * tr_root)


def test_fid_matches_the_closed_form():
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    mu_a, mu_b = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 3.0])
    a, b = np.array([4.0, 1.0, 9.0]), np.array([1.0, 1.0, 0.25])
    want = 1 + 4 + 9 + (2 - 1) ** 2 + 0 + (3 - 0.5) ** 2
    assert frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # non-commuting 2x2 covariances against the 2x2 formula
    sa, sb = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    mu2a, mu2b = np.array([0.5, -1.0]), np.array([0.0, 0.0])
    exact = _closed_form_2d(mu2a, sa, mu2b, sb)
    assert frechet_distance(mu2a, sa, mu2b, sb) == pytest.approx(exact, rel=1e-12)
    # samples of those two Gaussians: the fitted FID converges to the closed form
    rng = np.random.default_rng(0)
    xa = rng.multivariate_normal(mu2a, sa, size=40000)
    xb = rng.multivariate_normal(mu2b, sb, size=40000)
    assert fid(xa, xb) == pytest.approx(exact, abs=0.03)
    assert calc_metric("fid", features=torch.from_numpy(xa), reference=GaussianStats.of(xb)) == fid(xa, xb)
    with pytest.raises(CGNError, match="differ in dimension"):
        fid(xa, xb[:, :1])


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9)
    few = rng.standard_normal((10, 32))     # N < D: a singular covariance
    assert fid(few, few) == pytest.approx(0.0, abs=1e-9)
    s_few, s_x = GaussianStats.of(few), GaussianStats.of(rng.standard_normal((40, 32)))
    assert s_few.factor is not None and s_x.factor is None      # N <= D: the low-rank factor is kept
    assert fid(s_few, s_x) == pytest.approx(frechet_distance(s_few.mu, s_few.sigma, s_x.mu, s_x.sigma), rel=1e-10)
    assert fid(s_x, s_few) == fid(s_few, s_x)
    # a shift adds |d mu|^2 only (the null space of a singular fit costs ~1e-8 per dimension)
    assert fid(few, few + 1.0) == pytest.approx(32.0, rel=1e-6)
    with pytest.raises(CGNError, match="N >= 2"):
        fid(few[:1], few)


def test_fid_statistics_cache(tmp_path, capsys):
    rng = np.random.default_rng(2)
    s = GaussianStats.of(rng.standard_normal((50, 4)), "net-A")
    s.save(tmp_path / "ref.npz")
    back = load_stats(tmp_path / "ref.npz")
    assert back.n == 50 and back.extractor == "net-A"
    assert np.array_equal(back.mu, s.mu) and np.array_equal(back.sigma, s.sigma)
    with pytest.raises(CGNError, match=r"computed with 'net-A', not with the network used now \('net-B'\)"):
        fid(GaussianStats(s.mu, s.sigma, 50, "net-B"), back)
    np.savez(tmp_path / "foreign.npz", mu=s.mu.astype(np.float32), sigma=s.sigma)  # pytorch-fid style
    assert load_stats(tmp_path / "foreign.npz").extractor == ""
    np.savez(tmp_path / "other.npz", mean=s.mu)
    with pytest.raises(CGNError, match="holds no FID statistics"):
        load_stats(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CGNError, match="not a readable .npz"):
        load_stats(tmp_path / "junk.npz")


def test_tf_resize_is_tensorflow_1x_bilinear():
    # upsampling 2 -> 4: sample points 0, .5, 1, 1.5 (no half-pixel shift; the last clamps)
    x = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2)
    assert tf_resize_bilinear(x, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    # downsampling 4 -> 2 picks rows 0 and 2 (no averaging), unlike F.interpolate
    y = torch.arange(4.0).view(1, 1, 4, 1)
    assert tf_resize_bilinear(y, (2, 1)).flatten().tolist() == [0.0, 2.0]
    img = torch.rand(1, 3, 7, 5)
    assert torch.equal(tf_resize_bilinear(img, (7, 5)), img)


@pytest.fixture(scope="module")
def tf_weights(tmp_path_factory):
    """A random state dict in the published file's layout (as torch-fidelity's file: no
    num_batches_tracked), saved under the published name."""
    net = random_tf_inception(seed=3)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("weights") / TF_INCEPTION_FILE
    torch.save(state, path)
    return path, net


def test_tf_inception_loads_the_public_layout_and_rejects_others(tf_weights, tmp_path, capsys):
    path, ref = tf_weights
    layout = expected_layout()
    assert len(layout) == 472 and layout["fc.weight"] == (1008, 2048)
    assert layout["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    net = load_tf_inception(str(path))
    assert "sha256:" in net.identity and "not that of the published file" in capsys.readouterr().err
    theirs = ref.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        out = net.outputs(torch.rand(1, 3, 32, 32))
    assert out["pool"].shape == (1, 2048) and out["logits_unbiased"].shape == (1, 1008)
    assert torch.allclose(out["logits"] - out["logits_unbiased"], net.fc.bias.expand(1, -1), atol=1e-5)

    renamed = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    renamed["Mixed_5b.branch1x1.conv.kernel"] = renamed.pop("Mixed_5b.branch1x1.conv.weight")
    with pytest.raises(CGNError, match=r"1 missing key.*1 unexpected key") as e:
        check_layout(renamed, "f.pth")
    assert "\n" not in str(e.value) and TF_INCEPTION_FILE in str(e.value)
    torch.save({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, tmp_path / "tv.pth")
    with pytest.raises(CGNError, match="shape mismatch.*--inception torchvision"):
        load_tf_inception(str(tmp_path / "tv.pth"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")    # a pickled module: refused unread
    with pytest.raises(CGNError, match="Python objects"):
        load_tf_inception(str(tmp_path / "module.pth"))
    with pytest.raises(CGNError, match="do not exist"):
        load_tf_inception(str(tmp_path / "missing.pth"))


def _folder(root, n, seed, masks=False):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:07d}.png")
        if masks:
            Image.fromarray(np.full((16, 16), 102, np.uint8)).save(root / "masks" / f"{i:07d}.png")
    return root


def test_cli_metrics_is_and_fid_end_to_end(tf_weights, tmp_path, monkeypatch, capsys):
    path, ref_net = tf_weights
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    (home / "weights" / TF_INCEPTION_FILE).symlink_to(path)      # found by --classifier auto
    monkeypatch.setenv("CGN_HOME", str(home))
    gen, real = _folder(tmp_path / "gen", 2, 0, masks=True), _folder(tmp_path / "real", 2, 1)
    args = ["imagenet", "metrics", "--folder", str(gen), "--splits", "1"]
    assert main([*args, "--fid-reference", str(real), "--save-reference-stats", str(tmp_path / "real.npz"),
                 "--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["n_images"] == 2 and a["mu_mask"] == pytest.approx(0.4)
    assert a["extractor"].startswith("inception-tf sha256:") and a["fid_reference"]["n"] == 2
    # the same numbers from the network by hand: softmax of the 1008 unbiased logits, the formula
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(gen / f"{i:07d}.png"))).permute(2, 0, 1)
                        .float() / 255 for i in range(2)])
    with torch.no_grad():
        feats, logits = ref_net.features_and_logits(imgs)
    probs = torch.softmax(logits.double(), 1).numpy()
    assert a["inception_score"]["mean"] == pytest.approx(inception_score(probs, 1)[0], abs=1e-9)
    # the cached statistics: the reference's features, the network named; FID from them agrees
    stats = load_stats(tmp_path / "real.npz")
    assert stats.n == 2 and stats.extractor == a["extractor"]
    assert a["fid"] > 0 and a["fid"] == pytest.approx(fid(feats.double().numpy(), stats), rel=1e-9)
    capsys.readouterr()
    assert main([*args, "--metrics", "fid"]) == 2
    assert "FID needs a reference" in capsys.readouterr().err
    GaussianStats(stats.mu, stats.sigma, 2, "inception-torchvision sha256:0").save(tmp_path / "tv.npz")
    with pytest.raises(CGNError, match="not with the network used now"):   # another network's cache
        reference_statistics(tmp_path / "tv.npz", ref_net)
    assert get_metric("fid") is fid


def test_matches_torch_fidelity_when_installed(tf_weights):
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3",
                             reason="torch-fidelity is not installed (optional cross-check)")
    path, net = tf_weights
    theirs = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                            feature_extractor_weights_path=str(path))
    imgs = torch.randint(0, 256, (1, 3, 40, 56), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        f, logits = net.features_and_logits(imgs)
        tf_f, tf_logits = theirs(imgs)
    assert torch.allclose(f, tf_f, atol=1e-5) and torch.allclose(logits, tf_logits, atol=1e-5)
