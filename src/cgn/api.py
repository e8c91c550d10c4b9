"""The Python API of cgn's MNIST half: what the commands do, as functions (``import cgn``).

    model = cgn.load_cgn("runs/colored/checkpoints/final.pt")         # or the authors' .pth
    s = cgn.sample(model, shape=3, texture=7, background=1, n=64, seed=0)
    cf = cgn.generate_counterfactuals(model, "runs/cf", n=10_000)     # what `cgn generate` writes
    run = cgn.train_classifier("runs/clf", dataset="colored-mnist", train_set="real+cf", generated=cf)
    cgn.evaluate_classifier(run, cgn.MnistVariant("colored-mnist", split="test"))

Every function is a thin layer over the library code that the commands run
(:mod:`cgn.mnist.model`, :mod:`cgn.core.sampling`, :mod:`cgn.mnist.counterfactuals`,
:mod:`cgn.mnist.classify`), so the API and the command line give the same results for the same
settings. Walk-through: docs/api.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from cgn.config import from_dict
from cgn.core.device import resolve_device
from cgn.core.sampling import CGNSample, choose_all_labels, mechanism_seeds
from cgn.core.sampling import sample as _sample
from cgn.errors import CGNError
from cgn.mnist.cfdata import CounterfactualSet
from cgn.mnist.classifier import MnistClassifier
from cgn.mnist.model import MnistCGN

PathLike = Union[str, os.PathLike]
Labels = Union[int, Sequence[int], torch.Tensor, str, None]


def load_cgn(spec: PathLike, *, device: torch.device | str = "cpu") -> MnistCGN:
    """The MNIST CGN of ``spec``, in eval mode on ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``).

    ``spec``: a checkpoint written by ``cgn train-cgn`` (e.g. ``RUN/checkpoints/final.pt``; a run
    directory means its ``final.pt``), one of the authors' MNIST files (``colored_mnist.pth``
    ...; recognised by name, digest or content), or the name of a CGN shipped with cgn
    (``"colored-mnist"``, ``"double-colored-mnist"``, ``"wildlife-mnist"``). What was loaded is
    recorded in ``model.load_info`` (format, path, dataset, ...).
    """
    from cgn.mnist.model import load_generator
    from cgn.mnist.reference import is_reference_file

    path = Path(spec)
    if path.is_dir():
        final = path / "checkpoints" / "final.pt"
        if not final.is_file():
            raise CGNError(f"{path} is a folder without checkpoints/final.pt; give a checkpoint "
                           "file (a cgn train-cgn checkpoint or the authors' .pth)")
        path = spec = final
    reference = path.is_file() and is_reference_file(path)
    model, info = load_generator(spec, reference_format=reference, device=resolve_device(str(device)))
    model.load_info = info
    return model


def sample(model: MnistCGN, *, shape: Labels = None, texture: Labels = None,
           background: Labels = None, n: int | None = None, seed: int = 0,
           batch_size: int = 500) -> CGNSample:
    """Counterfactual samples: the shape of ``shape``, the texture of ``texture``, the background
    of ``background``.

    Each label is one digit (repeated ``n`` times), ``n`` digits (a list, range or tensor), or
    ``None`` for uniformly random digits drawn from ``seed``. ``n`` defaults to the length of
    the label lists given (1 if none is a list). Each mechanism draws its noise from its own
    stream of ``seed``: the same call gives the same samples, and ``cgn sample`` with the same
    labels, ``--n`` and ``--seed`` gives the same images. Returns a :class:`CGNSample` on the
    CPU: ``composite`` (the image) [n, 3, 32, 32], ``foreground`` and ``background`` in
    [-1, 1], ``mask`` [n, 1, 32, 32] in [0, 1], ``labels`` per mechanism and ``seeds``.
    """
    if n is None:
        sizes = {k for k in map(_list_length, (shape, texture, background)) if k is not None}
        if len(sizes) > 1:
            raise CGNError(f"label lists of different lengths {sorted(sizes)}; give lists of one "
                           "length, or n")
        n = sizes.pop() if sizes else 1
    if n < 1:
        raise CGNError(f"n must be >= 1, got {n}")
    labels = choose_all_labels(shape, texture, background, n, model.n_classes, seed)
    return _sample(model, n, torch.from_numpy(labels["shape"]), torch.from_numpy(labels["texture"]),
                   torch.from_numpy(labels["background"]), seeds=mechanism_seeds(seed),
                   batch_size=batch_size)


def _list_length(labels: Labels) -> int | None:
    """How many labels a list (range, array, tensor) gives; None for one label or random ones."""
    if labels is None or isinstance(labels, str):
        return None
    try:
        size = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels).size
    except (TypeError, ValueError):
        return None  # choose_labels names the problem
    return None if size == 1 else int(size)


def save_sample_grid(samples: CGNSample, path: PathLike, *, limit: int = 100, ncol: int = 10) -> Path:
    """Write a PNG of the first ``limit`` samples, ``ncol`` per row, in four panels (composite,
    mask, foreground, background), as ``cgn sample --grid`` does. Returns the path."""
    from cgn.mnist.preview import sample_grid, save_png
    if limit < 1 or ncol < 1:
        raise CGNError("limit and ncol must be >= 1")
    save_png(path, sample_grid(samples, limit=limit, ncol=ncol))
    return Path(path)


def generate_counterfactuals(cgn: MnistCGN | PathLike, out: PathLike, *, n: int = 100_000,
                             device: torch.device | str = "cpu", **options: Any) -> CounterfactualSet:
    """Write a counterfactual data set of ``n`` images to the folder ``out``, as ``cgn generate``
    does, and return it as a :class:`CounterfactualSet`.

    ``cgn``: a model (from :func:`load_cgn`) or anything :func:`load_cgn` takes. ``options``: the
    other fields of :class:`cgn.mnist.counterfactuals.GenerateConfig` -- ``cf_ratio`` (10),
    ``seed`` (0), ``counterfactual`` (True; False gives plain CGN samples), ``shard_size``,
    ``batch_size``, ``precision``. Calling it again with the same settings resumes (or just
    reopens) the set. The manifest records the CGN: a file by its sha256 (as ``cgn generate``),
    a model object by the digest of its weights and its ``load_info``.
    """
    from cgn.core.checkpoint import state_digest
    from cgn.mnist.counterfactuals import GenerateConfig, checkpoint_source, generate

    cfg = from_dict(GenerateConfig, {"n": n, **options}, "generate_counterfactuals")
    dev = resolve_device(str(device))
    model = cgn if isinstance(cgn, MnistCGN) else load_cgn(cgn, device=dev)
    info = dict(getattr(model, "load_info", {}))
    if isinstance(cgn, MnistCGN) or not Path(info.get("path", "")).is_file():
        source = {"model": "in memory", **info, "sha256": state_digest(model.state_dict())}
    else:
        source = checkpoint_source(info["path"], info)
    generate(model, cfg, out, source=source, device=dev)
    return CounterfactualSet(out)


@dataclass
class ClassifierRun:
    """A classifier run directory (``cgn train-classifier --out``) and its ``results``:
    ``train_acc`` and ``test_acc`` (percent, the OOD test split), sizes, settings; only
    ``interrupted_at_step`` when it stopped at ``max_steps`` before its last epoch."""

    out: Path
    results: dict

    def load(self, device: torch.device | str = "cpu") -> MnistClassifier:
        """The trained classifier (its last checkpoint), in eval mode."""
        return load_classifier(self.out, device=device)


def train_classifier(out: PathLike, *, dataset: str, train_set: str = "real",
                     generated: CounterfactualSet | PathLike | None = None, resume: bool = False,
                     max_steps: int | None = None, **options: Any) -> ClassifierRun:
    """Train the paper's MNIST classifier into the run directory ``out`` and evaluate it, as
    ``cgn train-classifier`` does.

    ``dataset``: the MNIST variant (its train split is the real data, its test split the OOD
    test set). ``train_set``: ``"real"``, ``"real+cf"``, ``"cf"`` (counterfactuals only) or
    ``"real+gan"`` (plain CGN samples); all but ``"real"`` need ``generated``, a set from
    :func:`generate_counterfactuals` or its folder. ``options``: the other fields of
    :class:`cgn.mnist.classify.ClassifierConfig` -- ``epochs`` (10), ``batch_size`` (64), ``lr``,
    ``gamma``, ``seed``, ``data_seed``, ``textures``, ``official_test``, ``train_eval_size``,
    ``limit_real``, ``precision``, ``threads``, ``device`` ("auto"). ``resume`` continues a
    stopped run; ``max_steps`` stops (with a checkpoint) after that many steps.
    """
    from cgn.mnist.classify import ClassifierConfig
    from cgn.mnist.classify import train_classifier as _train

    if isinstance(generated, CounterfactualSet):
        generated = generated.root
    values = {"dataset": dataset, "train_set": train_set, **options}
    if generated is not None:
        values["generated"] = str(generated)
    cfg = from_dict(ClassifierConfig, values, "train_classifier")
    results = _train(cfg, out, resume=resume, max_steps=max_steps)
    return ClassifierRun(Path(out), results)


def load_classifier(run: ClassifierRun | PathLike, *, device: torch.device | str = "cpu") -> MnistClassifier:
    """A trained MNIST classifier in eval mode: from a :class:`ClassifierRun`, a run directory
    or a ``cgn train-classifier`` checkpoint file."""
    from cgn.mnist.classify import load_classifier as _load
    path = run.out if isinstance(run, ClassifierRun) else Path(run)
    return _load(path, device=resolve_device(str(device)))[0]


def evaluate_classifier(model_or_run: torch.nn.Module | ClassifierRun | PathLike, dataset: Dataset, *,
                        device: torch.device | str = "cpu", batch_size: int = 1000) -> float:
    """Top-1 accuracy (percent) of a classifier on ``dataset``: a :class:`MnistVariant`, a
    :class:`CounterfactualSet`, or any Dataset of (image [3, 32, 32] in [-1, 1], label) items.

    ``model_or_run``: a classifier module (evaluated on the device its weights are on, in eval
    mode, which is restored afterwards), a :class:`ClassifierRun`, a run directory or a
    checkpoint file (loaded onto ``device``).
    """
    from cgn.mnist.classify import accuracy
    if isinstance(model_or_run, torch.nn.Module):
        model = model_or_run
        dev = next(model.parameters()).device
    else:
        dev = resolve_device(str(device))
        model = load_classifier(model_or_run, device=dev)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise CGNError("the evaluation data set is empty")
    return accuracy(model, dataset, device=dev, batch_size=batch_size)
