"""The TF Inception-v3 graph of 2015-12-05, rebuilt in PyTorch: the network behind published IS/FID.

The Inception Score (Salimans et al.) and FID (Heusel et al.) were defined with TensorFlow's
``inception-2015-12-05`` graph, and torch-fidelity (and pytorch-fid, whose converted weights it
hosts) reproduce it in PyTorch. This module rebuilds that network so that its weight file,
``weights-inception-2015-12-05-6726825d.pth``, loads here with exactly its key names and shapes:

- stem and Mixed blocks as in Inception-v3 (conv without bias, BatchNorm with eps 1e-3, ReLU);
- the TF graph's quirks, unlike torchvision's Inception-v3: the 3×3 average pools of the
  Mixed blocks ignore the zero padding (``count_include_pad=False``), and the last block
  (``Mixed_7c``) pools its fourth branch with a 3×3 *max* pool;
- 2048-d pool features (global average of ``Mixed_7c``), the input of FID;
- ``fc``: 1008 outputs. The graph's classes are its own: output 0 is an unused "background"
  class, 1..1000 the ImageNet classes in the graph's label-map order (not torchvision's sorted
  synsets), 1001..1007 unused. The reference IS code takes the softmax over all 1008 outputs
  of the pool features times ``fc.weight`` *without the bias* ("unbiased logits"); so does
  :meth:`InceptionV3TF.forward`.

Input: images in [0, 1] (or uint8), quantised to 8 bits as a PNG stores them, resized to
299×299 with TensorFlow 1.x's bilinear resize (``align_corners=False``: source coordinate =
output index × in/out, no half-pixel shift; this is not ``F.interpolate``'s bilinear), then
mapped to [-1, 1) by ``(x - 128) / 128``.

The file (95 MB) is looked up in ``$CGN_HOME/weights`` (``cgn download inception-tf``) and in
torch hub's cache (where torch-fidelity puts it), under its own name or pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``. docs/imagenet_cgn.md records the cross-check against
torch-fidelity's implementation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cgn.errors import CGNError

TF_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
TF_INCEPTION_NAMES = (TF_INCEPTION_FILE, "pt_inception-2015-12-05-6726825d.pth")  # torch-fidelity, pytorch-fid
INPUT_SIZE = 299
N_OUTPUTS = 1008
FEATURE_DIM = 2048


def tf_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)`` of [B, C, H, W] float images.

    Per axis, output index i samples the input at ``p = i * (in / out)`` (float32, as TF
    computes it), between rows ``floor(p)`` and ``min(floor(p) + 1, in - 1)`` with weight
    ``p - floor(p)``; columns are blended first, then rows.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise CGNError(f"tf_resize_bilinear needs [B, C, H, W] float images; got {tuple(x.shape)} {x.dtype}")

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
        pos = torch.arange(n_out, dtype=torch.float32) * scale
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = (pos - lo.to(torch.float32)).to(device=x.device, dtype=x.dtype)
        return lo.to(x.device), hi.to(x.device), frac

    (r0, r1, fy), (c0, c1, fx) = axis(x.shape[2], size[0]), axis(x.shape[3], size[1])
    top, bottom = x.index_select(2, r0), x.index_select(2, r1)

    def blend_columns(rows: torch.Tensor) -> torch.Tensor:
        left, right = rows.index_select(3, c0), rows.index_select(3, c1)
        return left + (right - left) * fx.view(1, 1, 1, -1)

    t, b = blend_columns(top), blend_columns(bottom)
    return t + (b - t) * fy.view(1, 1, -1, 1)


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU; children named ``conv`` and ``bn``."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "avg":   # TF's average pool does not count the zero padding
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    if kind == "max/2":
        return F.max_pool2d(x, 3, stride=2)
    return x


class Mixed(nn.Module):
    """An Inception block from a table.

    ``convs``: (name, in, out, kernel, stride, padding) rows, registered under their names.
    ``branches``: (pool, chain, split) per branch: ``pool`` ("", "avg", "max", "max/2") is
    applied to the block input, then the convs of ``chain`` in turn, then, if ``split`` names
    two convs, both on the chain's output, concatenated. The branch outputs are concatenated.
    """

    def __init__(self, convs, branches):
        super().__init__()
        for name, cin, cout, kernel, stride, padding in convs:
            self.add_module(name, ConvBN(cin, cout, kernel, stride, padding))
        self.branches = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for pool, chain, split in self.branches:
            y = _pool(pool, x)
            for name in chain:
                y = getattr(self, name)(y)
            if split:
                y = torch.cat([getattr(self, s)(y) for s in split], 1)
            outs.append(y)
        return torch.cat(outs, 1)


def _block_a(cin: int, pool_features: int) -> Mixed:
    return Mixed([("branch1x1", cin, 64, 1, 1, 0),
                  ("branch5x5_1", cin, 48, 1, 1, 0), ("branch5x5_2", 48, 64, 5, 1, 2),
                  ("branch3x3dbl_1", cin, 64, 1, 1, 0), ("branch3x3dbl_2", 64, 96, 3, 1, 1),
                  ("branch3x3dbl_3", 96, 96, 3, 1, 1), ("branch_pool", cin, pool_features, 1, 1, 0)],
                 [("", ["branch1x1"], None), ("", ["branch5x5_1", "branch5x5_2"], None),
                  ("", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], None),
                  ("avg", ["branch_pool"], None)])


def _block_b(cin: int) -> Mixed:
    return Mixed([("branch3x3", cin, 384, 3, 2, 0),
                  ("branch3x3dbl_1", cin, 64, 1, 1, 0), ("branch3x3dbl_2", 64, 96, 3, 1, 1),
                  ("branch3x3dbl_3", 96, 96, 3, 2, 0)],
                 [("", ["branch3x3"], None),
                  ("", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], None),
                  ("max/2", [], None)])


def _block_c(cin: int, c7: int) -> Mixed:
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorised 7×7
    convs = [("branch1x1", cin, 192, 1, 1, 0), ("branch7x7_1", cin, c7, 1, 1, 0),
             ("branch7x7_2", c7, c7, row[0], 1, row[1]), ("branch7x7_3", c7, 192, col[0], 1, col[1]),
             ("branch7x7dbl_1", cin, c7, 1, 1, 0)]
    for i, (k, p) in enumerate((col, row, col, row), start=2):
        convs.append((f"branch7x7dbl_{i}", c7, 192 if i == 5 else c7, k, 1, p))
    convs.append(("branch_pool", cin, 192, 1, 1, 0))
    return Mixed(convs, [("", ["branch1x1"], None),
                         ("", ["branch7x7_1", "branch7x7_2", "branch7x7_3"], None),
                         ("", [f"branch7x7dbl_{i}" for i in range(1, 6)], None),
                         ("avg", ["branch_pool"], None)])


def _block_d(cin: int) -> Mixed:
    return Mixed([("branch3x3_1", cin, 192, 1, 1, 0), ("branch3x3_2", 192, 320, 3, 2, 0),
                  ("branch7x7x3_1", cin, 192, 1, 1, 0), ("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
                  ("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)), ("branch7x7x3_4", 192, 192, 3, 2, 0)],
                 [("", ["branch3x3_1", "branch3x3_2"], None),
                  ("", [f"branch7x7x3_{i}" for i in range(1, 5)], None), ("max/2", [], None)])


def _block_e(cin: int, pool: str) -> Mixed:
    return Mixed([("branch1x1", cin, 320, 1, 1, 0), ("branch3x3_1", cin, 384, 1, 1, 0),
                  ("branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)), ("branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
                  ("branch3x3dbl_1", cin, 448, 1, 1, 0), ("branch3x3dbl_2", 448, 384, 3, 1, 1),
                  ("branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
                  ("branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)), ("branch_pool", cin, 192, 1, 1, 0)],
                 [("", ["branch1x1"], None), ("", ["branch3x3_1"], ("branch3x3_2a", "branch3x3_2b")),
                  ("", ["branch3x3dbl_1", "branch3x3dbl_2"], ("branch3x3dbl_3a", "branch3x3dbl_3b")),
                  (pool, ["branch_pool"], None)])


class InceptionV3TF(nn.Module):
    """The 2015-12-05 Inception-v3 graph. ``forward``: [B, 3, H, W] images in [0, 1] (or
    uint8) → 1008 unbiased logits (the Inception Score's input); :meth:`features_and_logits`
    adds the 2048-d pool features (FID's input); :meth:`outputs` also the biased logits."""

    def __init__(self, description: str = "inception-v3 TF 2015-12-05 (unloaded)", identity: str = ""):
        super().__init__()
        self.description = description
        self.identity = identity
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _block_a(192, 32), _block_a(256, 64), _block_a(288, 64)
        self.Mixed_6a = _block_b(288)
        self.Mixed_6b, self.Mixed_6c = _block_c(768, 128), _block_c(768, 160)
        self.Mixed_6d, self.Mixed_6e = _block_c(768, 160), _block_c(768, 192)
        self.Mixed_7a = _block_d(768)
        self.Mixed_7b, self.Mixed_7c = _block_e(1280, "avg"), _block_e(2048, "max")
        self.fc = nn.Linear(FEATURE_DIM, N_OUTPUTS)
        self.eval()

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] floats (or uint8) → 8-bit levels → TF bilinear resize to 299 → (x - 128) / 128."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise CGNError(f"the TF Inception needs [B, 3, H, W] RGB images; got {tuple(x.shape)}")
        x = x.float() if x.dtype == torch.uint8 else x.float().mul(255).round().clamp(0, 255)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = tf_resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        return (x - 128) / 128

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2048-d pool features, 1008 unbiased logits)."""
        f = self.pool_features(x)
        return f, f @ self.fc.weight.t()

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f, unbiased = self.features_and_logits(x)
        return {"pool": f, "logits_unbiased": unbiased, "logits": unbiased + self.fc.bias}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


@lru_cache(maxsize=1)
def _layout() -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        state = InceptionV3TF().state_dict()
    return tuple((k, tuple(v.shape)) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def expected_layout() -> dict[str, tuple[int, ...]]:
    """Key → shape of the weight file (the module's state dict without BatchNorm's
    ``num_batches_tracked`` counters, which the converted file does not carry)."""
    return dict(_layout())


def check_layout(state, source: str) -> dict[str, torch.Tensor]:
    """The state dict if it has exactly the file's keys and shapes (``num_batches_tracked``
    may be present or not); otherwise a one-line CGNError naming the difference."""
    hint = (f"{source} is not the TF-Inception weight file ({TF_INCEPTION_FILE}, as torch-fidelity "
            "and pytorch-fid publish it)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CGNError(f"{hint}: it is not a flat state dict of tensors; run `cgn download inception-tf` "
                       "or pass that file")
    want = expected_layout()
    got = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [f"{k} {tuple(got[k].shape)} vs {want[k]}" for k in want
              if k in got and tuple(got[k].shape) != want[k]]
    floats = [k for k, v in got.items() if k in want and not v.is_floating_point()]
    problems = ([f"{len(missing)} missing key(s) e.g. {missing[:2]}"] if missing else []) \
        + ([f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:2]}"] if unexpected else []) \
        + ([f"{len(shapes)} shape mismatch(es) e.g. {shapes[:1]}"] if shapes else []) \
        + ([f"non-float tensors e.g. {floats[:1]}"] if floats else [])
    if problems:
        raise CGNError(f"{hint}: {'; '.join(problems)}; for torchvision's Inception-v3 use --inception torchvision")
    return got


def build(state: dict, source: str, description: str, identity: str) -> InceptionV3TF:
    """The network with the weights of ``state`` (checked by :func:`check_layout`), float32."""
    got = check_layout(state, source)
    with torch.device("meta"):  # no wasted initialisation: every tensor comes from the file
        net = InceptionV3TF(description, identity)
    full = {k: got[k].to(torch.float32) if k in got else torch.zeros((), dtype=torch.long)
            for k in net.state_dict()}  # BatchNorm's num_batches_tracked counters: 0
    net.load_state_dict(full, strict=True, assign=True)
    return net.requires_grad_(False).eval()


def find_tf_inception(weights_dir: Path) -> Path | None:
    """The weight file under one of its names in ``weights_dir`` or torch hub's cache."""
    dirs = [weights_dir, Path(torch.hub.get_dir()) / "checkpoints"]
    return next((d / n for d in dirs for n in TF_INCEPTION_NAMES if (d / n).is_file()), None)


def random_tf_inception(seed: int = 0) -> InceptionV3TF:
    """Random weights in the file's layout (pipeline checks and tests only; scores mean nothing).
    BatchNorm statistics are set to plausible values so activations neither vanish nor explode."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in expected_layout().items():
        if k.endswith("conv.weight") or k == "fc.weight":
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            state[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("bn.weight"):
            state[k] = torch.rand(shape, generator=g) * 0.5 + 0.75
        else:  # bn.bias, running_mean, fc.bias
            state[k] = torch.randn(shape, generator=g) * 0.1
    return build(state, "random weights", f"inception-v3 TF layout, RANDOM weights seed {seed} "
                 "(not a quality measure)", f"inception-tf random seed {seed}")


def load_tf_inception(source: str = "auto", allow_download: bool = False) -> InceptionV3TF:
    """``auto`` (the file in ``$CGN_HOME/weights`` or torch hub's cache; else, if allowed, the
    ``inception-tf`` download), ``random`` (pipeline checks only), or a file path."""
    from cgn.core.checkpoint import torch_load
    from cgn.download import download
    from cgn.errors import warn
    from cgn.imagenet.weights import default_weight_path
    from cgn.io import file_digest

    if source == "random":
        return random_tf_inception()
    if source in ("auto", "imagenet"):
        weights_dir = default_weight_path("inception_tf").parent
        path = find_tf_inception(weights_dir)
        if path is None and allow_download:
            path = download("inception-tf")[0]
        if path is None:
            raise CGNError(f"TF-Inception weights not found; run `cgn download inception-tf` (puts "
                           f"{TF_INCEPTION_FILE} into {weights_dir}), pass the file with "
                           "--classifier PATH, or allow the download with --download")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CGNError(f"TF-Inception weights {path} do not exist; give the file {TF_INCEPTION_FILE} "
                           "or run `cgn download inception-tf`")
    digest = file_digest(path)
    net = build(torch_load(path, what="TF-Inception weights"), f"TF-Inception weights {path}",
                f"inception-v3 TF 2015-12-05 {path} (sha256 {digest[:16]})", f"inception-tf sha256:{digest}")
    if not digest.startswith(TF_INCEPTION_FILE.rsplit("-", 1)[1][:8]):
        warn(f"{path}: sha256 {digest[:16]}... is not that of the published file (6726825d...); "
             "its scores are comparable with published ones only if it holds the same weights")
    return net
