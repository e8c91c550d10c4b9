"""The shared core used by both the MNIST and the ImageNet variants."""
