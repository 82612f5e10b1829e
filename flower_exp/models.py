"""Model registry: ``name -> builder`` (timm style).

``create_model("densenet201", num_classes=104, image_size=331, weights="imagenet")`` returns
a Keras model whose input is a batch of float32 images in the range its family expects
(:func:`normalization_for`; the data pipeline applies it) and whose output is a float32
softmax over the classes, even under mixed precision. Every network is built trainable end to
end, as the seed fine-tuned all layers; :func:`set_backbone_trainable` freezes all or part of
a pretrained backbone (the transfer-learning phases of ``flower_exp.train``).

Pretrained weights are files: :func:`weights_file` names the one each architecture and
weights name needs (the name the download saves), and :func:`resolve_weights` finds it in
``weights_dir``, ``$FLOWER_EXP_WEIGHTS`` or Keras' cache before anything is downloaded. Neither
needs TensorFlow, so ``flower-exp weights`` lists them instantly.
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
WEIGHTS_ENV = "FLOWER_EXP_WEIGHTS"


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture."""

    name: str
    family: str  # "cnn", "densenet", "efficientnet", "efficientnet_ns"
    normalization: str  # pipeline normalization mode the network expects
    # (weights name, URL) of each pretrained headless network it can download; the file name
    # is the URL's last part, as the download saves it.
    downloads: tuple[tuple[str, str], ...]
    build_base: Callable[..., Any]  # (input_shape, weights) -> headless keras model

    @property
    def pretrained(self) -> tuple[str, ...]:
        """The weights names it can download, the best published last."""
        return tuple(name for name, _url in self.downloads)

    @property
    def has_backbone(self) -> bool:
        """Whether it is a headless network under a new head (what transfer learning freezes
        and fine-tunes); the from-scratch ``cnn`` is not."""
        return self.family != "cnn"


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, family: str, normalization: str, downloads: dict[str, str] | None = None):
    """Decorator registering ``fn(input_shape, weights) -> keras.Model`` (no classifier head);
    ``downloads`` maps each pretrained weights name to the URL of its headless weights file."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = ModelSpec(name, family, normalization, tuple((downloads or {}).items()), fn)
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
    weights_dir: str | None = None,
    dropout: float = 0.2,
    cnn_width: int = 32,
    cnn_depth: int = 4,
    cnn_dropout: float = 0.25,
    cnn_bn_momentum: float = 0.9,
) -> Any:
    """Build ``name`` with a GAP → dropout → softmax head over ``num_classes``.

    ``weights``: ``none``, ``imagenet``, ``noisy-student``, ``pretrained`` (the architecture's
    best published weights: noisy-student for ``efficientnet_ns_*``, imagenet for the others,
    none for ``cnn``) or a path to a local weights file of the headless network (e.g. a pre-downloaded ``..._notop.h5``).
    A named one is loaded from its file (:func:`weights_file`) when ``weights_dir``,
    ``$FLOWER_EXP_WEIGHTS`` or Keras' cache holds it (:func:`resolve_weights`), and downloaded
    otherwise; offline, the download fails fast with one line saying which file to put where.
    """
    keras = _keras()
    spec = get_spec(name)
    weights = resolve_weights(name, weights, weights_dir)
    input_shape = (image_size, image_size, 3)
    if spec.family == "cnn":
        base = spec.build_base(
            input_shape, None, width=cnn_width, depth=cnn_depth, dropout=cnn_dropout, bn_momentum=cnn_bn_momentum
        )
    else:
        base = _download_guard(spec, weights, weights_dir, lambda: spec.build_base(input_shape, _download_name(weights)))
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


def backbone(network: Any) -> Any:
    """The headless network inside ``network`` (a model :func:`create_model` built): the one
    layer that is itself a model."""
    keras = _keras()
    return next(layer for layer in network.layers if isinstance(layer, keras.Model))


def set_backbone_trainable(network: Any, top_layers: int | str) -> None:
    """Freeze the backbone of ``network`` except its top ``top_layers`` layers (``"all"``: every
    layer; 0: none; more than it has: all of them) and all its BatchNormalization layers; the
    head stays trainable. The caller recompiles: Keras applies ``trainable`` only on ``compile``.

    Why BatchNormalization stays frozen even among the trainable top layers (the Keras
    transfer-learning guide's advice): in Keras 3 a frozen BatchNormalization layer runs in
    inference mode, normalising with the moving statistics of the pretraining data, which the
    pretrained layers after it learnt to expect. Left trainable, it would normalise with the
    statistics of a small dataset's few, noisy batches and pull its moving statistics towards
    them, so the first fine-tuning steps would see inputs unlike pretraining's and wreck what
    the backbone learnt.
    """
    keras = _keras()
    layers = backbone(network).layers
    count = len(layers) if top_layers == "all" else min(int(top_layers), len(layers))
    for index, layer in enumerate(layers):
        layer.trainable = index >= len(layers) - count and not isinstance(layer, keras.layers.BatchNormalization)


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


# Where keras.applications and the efficientnet package download headless (include_top=False)
# weights from, copied from their sources (keras/src/applications/{densenet,efficientnet}.py,
# efficientnet/model.py and weights.py) so that listing them needs no TensorFlow; each saves the
# file under the URL's last part. tests/test_models.py checks them against the installed packages.
_DENSENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/densenet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
_EFFICIENTNET_URL = "https://storage.googleapis.com/keras-applications/efficientnetb{b}_notop.h5"
_EFN_IMAGENET_URL = (
    "https://github.com/Callidior/keras-applications/releases/download/efficientnet/"
    "efficientnet-b{b}_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"
)
_EFN_NOISY_STUDENT_URL = (
    "https://github.com/qubvel/efficientnet/releases/download/v0.0.1/efficientnet-b{b}_noisy-student_notop.h5"
)


def _register_keras_applications() -> None:
    for depth in (121, 169, 201):
        register_model(f"densenet{depth}", "densenet", "torch", {"imagenet": _DENSENET_URL.format(depth=depth)})(
            _app_builder(f"DenseNet{depth}")
        )
    for b in range(8):
        # keras.applications EfficientNet rescales and normalises inside the model.
        register_model(f"efficientnet_b{b}", "efficientnet", "raw", {"imagenet": _EFFICIENTNET_URL.format(b=b)})(
            _app_builder(f"EfficientNetB{b}")
        )
    for b in range(8):
        downloads = {"imagenet": _EFN_IMAGENET_URL.format(b=b), "noisy-student": _EFN_NOISY_STUDENT_URL.format(b=b)}
        register_model(f"efficientnet_ns_b{b}", "efficientnet_ns", "torch", downloads)(_efn_builder(f"EfficientNetB{b}"))


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


def weights_file(spec: ModelSpec, weights: str) -> tuple[str, str]:
    """``(file name, URL)`` of the headless weights ``weights`` (one of ``spec.pretrained``) of
    ``spec``: the file a download saves into Keras' cache, and what to put in a weights folder
    to use it offline."""
    url = dict(spec.downloads)[weights]
    return url.rsplit("/", 1)[-1], url


def keras_cache_dir() -> str:
    """Keras' download cache of weights files (``get_file(cache_subdir="models")``):
    ``$KERAS_HOME/models``, else ``~/.keras/models`` (``/tmp/.keras/models`` when the home folder
    is not writable, as Keras decides)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(os.path.expanduser(home), "models")


def weights_folders(weights_dir: str | None = None) -> list[tuple[str, str | None]]:
    """``(label, folder or None when unset)`` of each place a pretrained weights file is looked
    for, in lookup order: the experiment's ``weights_dir``, ``$FLOWER_EXP_WEIGHTS``, Keras' cache."""
    return [
        ("weights_dir", weights_dir or None),
        (f"${WEIGHTS_ENV}", os.path.expanduser(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else None),
        ("Keras cache", keras_cache_dir()),
    ]


def find_weights_file(spec: ModelSpec, weights: str, weights_dir: str | None = None) -> tuple[str, str] | None:
    """``(label, path)`` of the first of :func:`weights_folders` that holds the file of
    ``spec``'s ``weights`` (:func:`weights_file`), or None."""
    name, _url = weights_file(spec, weights)
    for label, folder in weights_folders(weights_dir):
        if folder is not None and os.path.isfile(os.path.join(folder, name)):
            return label, os.path.join(folder, name)
    return None


def resolve_weights(name: str, weights: str, weights_dir: str | None = None) -> str:
    """What :func:`create_model` builds ``name`` from: ``none``, a local weights file, or the
    name of weights to download. A named one (``pretrained`` included) whose file one of
    :func:`weights_folders` holds becomes that file, loaded as is: nothing is downloaded, and
    its checksum is not compared with the published one (a wrong file fails to load, naming it)."""
    spec = get_spec(name)
    weights = _check_weights(spec, weights)
    if weights in spec.pretrained:
        found = find_weights_file(spec, weights, weights_dir)
        if found is not None:
            return found[1]
    return weights


def _download_name(weights: str) -> str | None:
    return weights if weights in ("imagenet", "noisy-student") else None


def _download_guard(spec: ModelSpec, weights: str, weights_dir: str | None, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except Exception as exc:
        # keras.utils.get_file raises a bare Exception("URL fetch failure on URL: ...") offline.
        if "URL fetch failure" not in str(exc):
            raise
        filename, url = weights_file(spec, weights)
        folders = ", ".join(f"{label} ({folder or 'not set'})" for label, folder in weights_folders(weights_dir))
        raise FlowerExpError(
            f"could not download {weights} weights for {spec.name} ({url}): offline? put {filename} in one of "
            f"{folders} or set weights: /path/to/{filename} (flower-exp weights lists the files)"
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
