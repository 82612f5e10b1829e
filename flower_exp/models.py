"""Model registry: ``name -> builder`` (timm style).

``create_model("densenet201", num_classes=104, image_size=331, weights="imagenet")`` returns
a Keras model whose input is a batch of float32 images in the range its family expects
(:func:`normalization_for`; the data pipeline applies it) and whose output is a float32
softmax over the classes, even under mixed precision. Every network is trainable end to end,
as the seed fine-tuned all layers.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._imports import tensorflow
from .errors import FlowerExpError

WEIGHTS = ("none", "imagenet", "noisy-student", "pretrained")


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture."""

    name: str
    family: str  # "cnn", "densenet", "efficientnet", "efficientnet_ns"
    normalization: str  # pipeline normalization mode the network expects
    pretrained: tuple[str, ...]  # weight names it can download
    build_base: Callable[..., Any]  # (input_shape, weights) -> headless keras model


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, family: str, normalization: str, pretrained: tuple[str, ...] = ()):
    """Decorator registering ``fn(input_shape, weights) -> keras.Model`` (no classifier head)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = ModelSpec(name, family, normalization, pretrained, fn)
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered architecture names."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; unknown names fail with the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FlowerExpError(f"architecture {name!r}: unknown; allowed: {', '.join(_REGISTRY)}") from None


def select_models(patterns: Sequence[str] = ()) -> list[ModelSpec]:
    """Registered architectures matching any of ``patterns`` (names or shell patterns such as
    ``efficientnet_b*``), in registry order; all of them without patterns. A pattern that
    matches nothing fails with the registered names."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in _REGISTRY):
            raise FlowerExpError(f"architecture {pattern!r}: matches no registered one; allowed: {', '.join(_REGISTRY)}")
    return [spec for name, spec in _REGISTRY.items() if not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def accepted_weights(spec: ModelSpec) -> list[str]:
    """The named ``weights`` values ``spec`` accepts (see :func:`create_model`); every
    architecture also takes a local weights file of its headless network."""
    return ["none", *spec.pretrained, "pretrained"] if spec.pretrained else ["none"]


def count_params(name: str, *, image_size: int, num_classes: int) -> int:
    """Parameters of ``name`` built at ``image_size`` px with a ``num_classes`` head and no
    pretrained weights (the ``cnn`` with its default width and depth). Seconds for the large
    EfficientNets on a CPU: the whole network is built."""
    keras = _keras()
    model = create_model(name, num_classes=num_classes, image_size=image_size, weights="none")
    count = int(model.count_params())
    del model
    keras.backend.clear_session()  # many networks built in a row would otherwise pile up
    return count


def normalization_for(name: str) -> str:
    """Input normalization (see ``flower_exp.data.pipeline.NORMALIZATIONS``) of ``name``."""
    return get_spec(name).normalization


def create_model(
    name: str,
    *,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    dropout: float = 0.2,
    cnn_width: int = 32,
    cnn_depth: int = 4,
    cnn_dropout: float = 0.25,
    cnn_bn_momentum: float = 0.9,
) -> Any:
    """Build ``name`` with a GAP → dropout → softmax head over ``num_classes``.

    ``weights``: ``none``, ``imagenet``, ``noisy-student``, ``pretrained`` (the architecture's
    best published weights: noisy-student for ``efficientnet_ns_*``, imagenet for the others,
    none for ``cnn``) or a path to a local weights file of the headless network (e.g. a pre-downloaded ``..._notop.h5``). Offline, a pretrained
    download fails fast with one line saying which file to pre-place where.
    """
    keras = _keras()
    spec = get_spec(name)
    weights = _check_weights(spec, weights)
    input_shape = (image_size, image_size, 3)
    if spec.family == "cnn":
        base = spec.build_base(
            input_shape, None, width=cnn_width, depth=cnn_depth, dropout=cnn_dropout, bn_momentum=cnn_bn_momentum
        )
    else:
        base = _download_guard(spec, weights, lambda: spec.build_base(input_shape, _download_name(weights)))
    if weights not in WEIGHTS:
        _load_local_weights(base, weights, spec)
    base.trainable = True
    inputs = keras.Input(shape=input_shape, name="image")
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 softmax: under mixed precision a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def custom_objects() -> dict[str, Any]:
    """Objects a saved model may need to reload: the efficientnet package's ``swish`` and
    ``FixedDropout``, which Keras only knows once ``efficientnet.tfkeras`` registered them."""
    import efficientnet.tfkeras  # noqa: F401  (registers its objects with Keras on import)

    registered = _keras().utils.get_custom_objects()
    return {key: registered[key] for key in ("swish", "FixedDropout") if key in registered}


def load_model(path: str) -> Any:
    """Load a saved ``.keras`` model safely (``safe_mode=True``), whatever its family, for
    inference: its training configuration (optimizer, loss, metrics) is not restored."""
    keras = _keras()
    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), safe_mode=True, compile=False)
    except ValueError as exc:
        raise FlowerExpError(f"{path}: cannot load model safely ({str(exc).splitlines()[0][:200]})") from None


# --------------------------------------------------------------------------- builders


@register_model("cnn", "cnn", "unit")
def _cnn(input_shape, weights, *, width: int = 32, depth: int = 4, dropout: float = 0.25, bn_momentum: float = 0.9):
    """The seed's vanilla network: Conv2D/BatchNorm/Dropout blocks, widening as they shrink."""
    keras = _keras()
    if width < 1 or depth < 1:
        raise FlowerExpError(f"cnn_width and cnn_depth must be >= 1 (got {width}, {depth})")
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block in range(depth):
        filters = width * 2 ** min(block, 4)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum)(x)
        x = keras.layers.Activation("relu")(x)
        if x.shape[1] > 2:
            x = keras.layers.MaxPooling2D()(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, x, name="cnn_base")


def _register_keras_applications() -> None:
    for depth in (121, 169, 201):
        register_model(f"densenet{depth}", "densenet", "torch", ("imagenet",))(_app_builder(f"DenseNet{depth}"))
    for b in range(8):
        # keras.applications EfficientNet rescales and normalises inside the model.
        register_model(f"efficientnet_b{b}", "efficientnet", "raw", ("imagenet",))(_app_builder(f"EfficientNetB{b}"))
    for b in range(8):
        register_model(f"efficientnet_ns_b{b}", "efficientnet_ns", "torch", ("imagenet", "noisy-student"))(
            _efn_builder(f"EfficientNetB{b}")
        )


def _app_builder(cls_name: str):
    def build(input_shape, weights):
        cls = getattr(_keras().applications, cls_name)
        return cls(include_top=False, weights=weights, input_shape=input_shape)

    return build


def _efn_builder(cls_name: str):
    def build(input_shape, weights):
        import efficientnet.tfkeras as efn

        return getattr(efn, cls_name)(include_top=False, weights=weights, input_shape=input_shape)

    return build


_register_keras_applications()


# --------------------------------------------------------------------------- weights


def _check_weights(spec: ModelSpec, weights: str) -> str:
    if weights in (None, "", "none", "None"):
        return "none"
    if weights == "pretrained":
        # The architecture's best published weights; a from-scratch network has none.
        return spec.pretrained[-1] if spec.pretrained else "none"
    if weights in WEIGHTS:
        if weights not in spec.pretrained:
            allowed = ", ".join(("none", *spec.pretrained, "a local weights file"))
            raise FlowerExpError(f"weights {weights!r}: not available for {spec.name}; allowed: {allowed}")
        return weights
    path = os.path.expanduser(weights)
    if spec.family == "cnn" and not os.path.isfile(path):
        raise FlowerExpError(f"weights {weights!r}: not a file; cnn has no pretrained weights (use none or a local file)")
    if not os.path.isfile(path):
        raise FlowerExpError(
            f"weights {weights!r}: no such file; allowed: none, {', '.join(spec.pretrained) or '(no pretrained)'}, or a local weights file"
        )
    return path


def _download_name(weights: str) -> str | None:
    return weights if weights in ("imagenet", "noisy-student") else None


def _download_guard(spec: ModelSpec, weights: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except Exception as exc:
        # keras.utils.get_file raises a bare Exception("URL fetch failure on URL: ...") offline.
        message = str(exc)
        if "URL fetch failure" not in message:
            raise
        url = re.search(r"https?://\S+?(?=:\s|$)", message)
        filename = url.group(0).rsplit("/", 1)[-1] if url else "the weights file"
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise FlowerExpError(
            f"could not download {weights} weights for {spec.name} ({url.group(0) if url else 'no URL'}): offline? "
            f"place {filename} in {cache}/ or set weights: /path/to/{filename}"
        ) from None


def _load_local_weights(base: Any, path: str, spec: ModelSpec) -> None:
    # A mismatched file makes Keras warn once per layer it skips (hundreds of lines) before it
    # raises; the one-line error below says it all.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            base.load_weights(path)
        except Exception as exc:  # h5py/keras raise many types for a wrong or mismatched file
            raise FlowerExpError(
                f"weights {path}: cannot load into {spec.name} ({_load_failure(exc)}); expected the weights of a "
                f"headless {spec.name} (include_top=False)"
            ) from None


def load_saved_weights(network: Any, path: str) -> None:
    """Start ``network`` from the weights of a saved ``.keras`` model of the same configuration
    (weights only: no code in the file is loaded)."""
    with warnings.catch_warnings():  # per-layer warnings before a mismatch error: the line below says it
        warnings.simplefilter("ignore")
        try:
            network.load_weights(path)
        except Exception as exc:  # Keras raises ValueError/OSError/KeyError depending on what differs
            raise FlowerExpError(f"{path}: cannot start from these weights ({_load_failure(exc)})") from None


def _load_failure(exc: Exception) -> str:
    """The gist of a Keras load error: its first line plus, for a shape mismatch, which variable
    (Keras appends the variable's full value to the message)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    gist = text.splitlines()[0].split(" Example error message")[0].rstrip(".:")[:200]
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    variable = re.search(r"Target variable: <Variable path=([^,>]+)", text)
    if shapes and variable:
        gist += f"; e.g. {variable.group(1)} is {shapes.group(1)} in the model but {shapes.group(2)} in the file"
    return gist


def _keras():
    tensorflow()  # TensorFlow first: it configures logging before Keras imports it
    import keras

    return keras
