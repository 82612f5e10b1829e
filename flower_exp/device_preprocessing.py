"""Augmentation and normalisation inside the training step, on the accelerator.

A TPU or GPU trains faster than the host CPUs can augment: on the demo data at 192-331 px the
host pipeline with augmentation delivers 0.1-0.2 of the images/s that reading and decoding
alone reach (BENCHMARKS.md). With ``augment.runs_on: device`` the tf.data pipeline ships the
decoded ``uint8`` batches (4x fewer bytes to transfer than float32) and the training model
starts with :class:`DevicePreprocessing`, which augments (training only, with XLA-compatible
ops: the resampling is two matrix products) and normalises there. The model that is saved,
exported and served is the network alone, which takes normalised float input as before.

Importing this module imports TensorFlow; :mod:`flower_exp.train` imports it lazily.
"""

from __future__ import annotations

from typing import Any

from ._imports import tensorflow

tensorflow()  # configures TensorFlow logging before Keras imports it
import keras  # noqa: E402

from .config import AugmentConfig  # noqa: E402
from .data.pipeline import augment, normalize  # noqa: E402


class DevicePreprocessing(keras.layers.Layer):
    """``uint8`` images → (augmented in training) → normalised ``float32`` images.

    ``augment_cfg`` None (or disabled) normalises only. Each training batch draws a fresh
    seed from the layer's seed generator, so runs are reproducible under ``seed``.
    """

    def __init__(self, augment_cfg: AugmentConfig | None, normalization: str, seed: int | None = None, **kwargs):
        # float32 whatever the mixed-precision policy: the model's first layer casts after.
        super().__init__(dtype="float32", **kwargs)
        self.augment_cfg = augment_cfg if augment_cfg is not None and augment_cfg.enabled else None
        self.normalization = normalization
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        x = images
        if training and self.augment_cfg is not None:
            seed = keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator, dtype="int32")
            x = augment(x, self.augment_cfg, seed=keras.ops.cast(seed, "int64"), resample="matmul")
        return keras.ops.cast(normalize(x, self.normalization), "float32")

    def compute_output_shape(self, input_shape):
        return input_shape


def training_model(network: Any, image_size: int, augment_cfg: AugmentConfig | None, normalization: str, seed: int | None) -> Any:
    """``network`` behind a :class:`DevicePreprocessing` input stage; shares its weights."""
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="uint8_images")
    x = DevicePreprocessing(augment_cfg, normalization, seed, name="device_preprocessing")(inputs)
    return keras.Model(inputs, network(x), name=f"{network.name}_trained_with_device_preprocessing")
