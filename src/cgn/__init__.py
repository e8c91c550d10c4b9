"""cgn: Counterfactual Generative Networks (Sauer & Geiger, ICLR 2021).

One shared core (composer, losses, counterfactual sampling, classifier training, metrics,
run directories, checkpoints) plus thin MNIST and ImageNet variants that only add their
mechanisms, data and presets.
"""

__version__ = "0.1.0"
