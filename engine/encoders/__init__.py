"""Networks that turn images into vectors: the encoder registry and factory (timm, packaged weights),
projection heads, whitening, test-time augmentation and ensembles. Imports ``engine.core``, ``engine.media``,
``engine.vectors``."""

from engine.encoders import lite  # noqa: F401  (registers the packaged EfficientNet-Lite encoders)
