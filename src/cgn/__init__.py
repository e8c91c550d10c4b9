"""cgn: Counterfactual Generative Networks (Sauer & Geiger, ICLR 2021).

One shared core (composer, losses, counterfactual sampling, classifier training, metrics,
run directories, checkpoints) plus thin MNIST and ImageNet variants that only add their
mechanisms, data and presets.

The Python API of the MNIST half is importable from here (``cgn.load_cgn``, ``cgn.sample``,
``cgn.MnistVariant``, ...; docs/api.md). Its names are resolved on first use, so ``import cgn``
itself loads neither torch nor the rest of the package.
"""

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "load_cgn": "cgn.api",
    "sample": "cgn.api",
    "save_sample_grid": "cgn.api",
    "generate_counterfactuals": "cgn.api",
    "train_classifier": "cgn.api",
    "evaluate_classifier": "cgn.api",
    "load_classifier": "cgn.api",
    "ClassifierRun": "cgn.api",
    "MnistVariant": "cgn.mnist.variants",
    "CounterfactualSet": "cgn.mnist.cfdata",
    "CGNSample": "cgn.core.sampling",
    "MnistCGN": "cgn.mnist.model",
    "MnistClassifier": "cgn.mnist.classifier",
    "CGNError": "cgn.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cgn' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
