"""Accelerator run (issue 7, benchmark 6): training throughput and model FLOPs utilisation.

EfficientNetB0 and DenseNet121 (flower_exp's builders, weights none) train at 224 px with
mixed precision and XLA, fed alternately by synthetic in-memory batches and by flower_exp's
TFRecord pipeline over locally generated demo records. Reports images/s for both inputs,
the input-pipeline ratio (TFRecord / synthetic: 1.0 means the input keeps up), the
pipeline's own images/s, and MFU = achieved training FLOP/s / the GPU's dense fp16/bf16 peak,
with training FLOPs = 3 x the forward FLOPs counted by TensorFlow's profiler.

Run it through ``bash benchmarks/gpu.sh`` (checks nvidia-smi, sets the environment); on a
CPU only ``--smoke`` makes sense (flower-exp's small CNN at 32 px, 2 steps, same JSON, no
MFU: no peak to divide by).
Needs no network: weights none, data generated locally.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "gpu"
TITLE = "Accelerator run: throughput, input pipeline and MFU"
GOAL = (
    "on a GPU, EfficientNetB0 and DenseNet121 at 224 px with mixed precision and XLA: report images/s, "
    "the input-pipeline ratio (TFRecord / synthetic input) and model FLOPs utilisation"
)
# (input, model): float batches into the network (augmentation, if any, done by the pipeline on
# the host), or uint8 batches into the network behind flower_exp's on-device augmentation and
# normalisation (``augment.runs_on: device``, the default on a GPU).
INPUTS = {"synthetic": "host", "tfrecord": "host", "synthetic_uint8": "device", "tfrecord_device": "device"}

# Dense (no structured sparsity) fp16/bf16 tensor-core peak FLOP/s from the vendors' data
# sheets, keyed by a substring of nvidia-smi's name; the longest matching key wins.
PEAK_FLOPS = {
    "H200 NVL": 835e12,
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
}


@dataclass(frozen=True)
class Setup:
    """Sizes of one run."""

    models: tuple[str, ...]
    image_size: int
    batch: int
    warmup_steps: int  # compile + autotune, not timed
    steps: int  # timed steps per measurement
    skip: int  # first batches of a timed fit not counted (iterator start-up)
    rounds: int  # synthetic/TFRecord alternations per model
    classes: int
    per_class: int
    xla: bool
    precision: str


FULL = Setup(
    models=("efficientnet_b0", "densenet121"),
    image_size=224,
    batch=128,
    warmup_steps=15,
    steps=60,
    skip=5,
    rounds=2,
    classes=6,
    per_class=200,
    xla=True,
    precision="float16",
)
# The smoke run checks the plumbing on a CPU in seconds: flower-exp's small CNN (tracing
# DenseNet121's train step alone takes minutes on 2 cores), no mixed float16 or XLA (slow to
# compile on a CPU and not what is measured there).
SMOKE = Setup(
    models=("cnn",),
    image_size=32,
    batch=4,
    warmup_steps=1,
    steps=2,
    skip=0,
    rounds=1,
    classes=3,
    per_class=10,
    xla=False,
    precision="off",
)


def peak_flops(gpu_name: str | None) -> float | None:
    """Dense fp16/bf16 peak FLOP/s of the GPU called ``gpu_name`` (None: unknown / no GPU)."""
    if not gpu_name:
        return None
    keys = [k for k in PEAK_FLOPS if k.lower() in gpu_name.lower()]
    return PEAK_FLOPS[max(keys, key=len)] if keys else None


def gpu_name() -> str | None:
    """nvidia-smi's name of the first GPU TensorFlow sees, or None."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def forward_flops(name: str, image_size: int, num_classes: int) -> float:
    """Forward FLOPs of one image through ``name``, counted by TensorFlow's profiler on the
    frozen float32 graph (a multiply-add counts 2)."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2_as_graph

    from flower_exp.models import create_model

    model = create_model(name, num_classes=num_classes, image_size=image_size, weights="none")
    fn = tf.function(functools.partial(model, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    frozen, _ = convert_variables_to_constants_v2_as_graph(concrete)
    options = (
        tf.compat.v1.profiler.ProfileOptionBuilder(tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
        .with_empty_output()
        .build()
    )
    flops = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    ).total_float_ops
    del model
    keras.backend.clear_session()
    return float(flops)


class BatchClock:
    """Times of batch ends in a fit (keras callback made lazily)."""

    def __new__(cls):
        import keras

        class _Clock(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.times = [time.perf_counter()]

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter())

        return _Clock()


def images_per_s(times: list[float], batch: int, skip: int) -> float:
    """Throughput between the end of batch ``skip`` and the last batch."""
    timed = times[skip:]
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def pipeline_images_per_s(ds, batches: int, batch: int) -> float:
    """The TFRecord pipeline alone (no model): images/s over ``batches`` after a warm-up batch."""
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def measure(setup: Setup, data_root: str, num_classes: int) -> list[dict]:
    """Per model: forward FLOPs, then alternating synthetic / TFRecord training throughput."""
    import keras
    import tensorflow as tf

    from flower_exp.config import AugmentConfig
    from flower_exp.data import pipeline
    from flower_exp.models import create_model, normalization_for
    from flower_exp.strategy import precision_policy

    from flower_exp.device_preprocessing import training_model

    rows = []
    for name in setup.models:
        common.log(f"{name}: counting FLOPs")
        flops = forward_flops(name, setup.image_size, num_classes)
        normalization = normalization_for(name)
        records = {
            "tfrecord": pipeline.make_dataset(
                data_root,
                "train",
                image_size=setup.image_size,
                batch_size=setup.batch,
                normalization=normalization,
                augment_cfg=AugmentConfig(),
                seed=0,
                drop_remainder=True,
                num_classes=num_classes,
            ),
            "tfrecord_device": pipeline.make_dataset(
                data_root,
                "train",
                image_size=setup.image_size,
                batch_size=setup.batch,
                normalization="none",
                seed=0,
                drop_remainder=True,
                num_classes=num_classes,
            ),
        }
        shape = (setup.batch, setup.image_size, setup.image_size, 3)
        labels = tf.cast(tf.range(setup.batch) % num_classes, tf.int32)
        inputs = {
            "synthetic": tf.data.Dataset.from_tensors((tf.random.uniform(shape), labels)).repeat(),
            "synthetic_uint8": tf.data.Dataset.from_tensors(
                (tf.cast(tf.random.uniform(shape, maxval=256, dtype=tf.int32), tf.uint8), labels)
            ).repeat(),
            **records,
        }
        pipeline_rate = {k: pipeline_images_per_s(ds, max(setup.steps // 2, 2), setup.batch) for k, ds in records.items()}
        with precision_policy(setup.precision):
            network = create_model(name, num_classes=num_classes, image_size=setup.image_size, weights="none")
            models = {
                "host": network,
                "device": training_model(network, setup.image_size, AugmentConfig(), normalization, seed=0),
            }
            for model in models.values():
                model.compile(
                    optimizer=keras.optimizers.Adam(1e-4),
                    loss=keras.losses.SparseCategoricalCrossentropy(),
                    jit_compile=setup.xla,
                )
            for where, model in models.items():
                common.log(f"{name}: compiling and warming up ({where} preprocessing)")
                warm = inputs["synthetic" if where == "host" else "synthetic_uint8"]
                model.fit(warm, steps_per_epoch=setup.warmup_steps, epochs=1, verbose=0, shuffle=False)
            rates: dict[str, list[float]] = {k: [] for k in INPUTS}
            for _ in range(setup.rounds):
                # Alternate the inputs so a slow spell of the machine hits all alike.
                for kind, where in INPUTS.items():
                    clock = BatchClock()
                    models[where].fit(
                        inputs[kind], steps_per_epoch=setup.steps, epochs=1, verbose=0, callbacks=[clock], shuffle=False
                    )
                    rates[kind].append(images_per_s(clock.times, setup.batch, setup.skip))
        rate = {k: common.median(v) for k, v in rates.items()}
        rows.append(
            {
                "model": name,
                "forward_flops": flops,
                "pipeline_images_per_s": pipeline_rate["tfrecord"],
                "pipeline_device_images_per_s": pipeline_rate["tfrecord_device"],
                **{f"{k}_images_per_s": rate[k] for k in INPUTS},
            }
        )
        common.log(f"{name}: " + ", ".join(f"{k} {rate[k]:.0f}" for k in INPUTS) + " img/s")
        del models, network, records, inputs
        keras.backend.clear_session()
    return rows


def report(setup: Setup, rows: list[dict], device: str | None, smoke: bool, out: Path) -> Path:
    """Write gpu.json and print the summary."""
    peak = peak_flops(device)
    table_rows, parts = [], []
    for r in rows:
        ratio = r["tfrecord_images_per_s"] / r["synthetic_images_per_s"]
        device_ratio = r["tfrecord_device_images_per_s"] / r["synthetic_uint8_images_per_s"]
        augment_cost = r["synthetic_uint8_images_per_s"] / r["synthetic_images_per_s"]
        achieved = 3 * r["forward_flops"] * r["synthetic_images_per_s"]
        mfu = achieved / peak if peak else None
        table_rows.append(
            [
                r["model"],
                f"{r['synthetic_images_per_s']:.1f}",
                f"{r['tfrecord_images_per_s']:.1f}",
                f"{ratio:.2f}",
                f"{r['pipeline_images_per_s']:.1f}",
                f"{r['synthetic_uint8_images_per_s']:.1f}",
                f"{augment_cost:.2f}",
                f"{r['tfrecord_device_images_per_s']:.1f}",
                f"{device_ratio:.2f}",
                f"{r['pipeline_device_images_per_s']:.1f}",
                f"{r['forward_flops'] / 1e9:.3f}",
                f"{achieved / 1e12:.2f}",
                "n/a" if mfu is None else f"{100 * mfu:.1f}%",
            ]
        )
        parts.append(
            f"{r['model']} {r['synthetic_images_per_s']:.0f} img/s (input ratio {ratio:.2f} with host "
            f"augmentation, {device_ratio:.2f} with augmentation on the GPU at {augment_cost:.2f}x speed, MFU "
            + ("n/a" if mfu is None else f"{100 * mfu:.1f}%")
            + ")"
        )
    table = common.md_table(
        [
            "model",
            "synthetic img/s",
            "TFRecord img/s (host aug.)",
            "input ratio (TFRecord/synthetic)",
            "pipeline alone img/s",
            "synthetic uint8 img/s (device aug.)",
            "device aug. speed (vs synthetic)",
            "TFRecord img/s (device aug.)",
            "input ratio, device aug.",
            "uint8 pipeline alone img/s",
            "forward GFLOPs/img",
            "achieved TFLOP/s (synthetic)",
            "MFU",
        ],
        table_rows,
    )
    where = device or "CPU (no GPU)"
    measured = f"{where}, {setup.image_size} px, batch {setup.batch}: " + "; ".join(parts)
    notes = [
        f"Settings: {setup.image_size} px, batch {setup.batch}, weights none, precision "
        f"{'mixed_' + setup.precision if setup.precision != 'off' else 'float32'}, XLA {'on' if setup.xla else 'off'}; "
        f"{setup.warmup_steps} warm-up steps, then {setup.rounds} alternation(s) of {setup.steps} timed steps per "
        f"input (first {setup.skip} batches of each not counted), medians reported.",
        "Synthetic input: one random batch held in memory and repeated. TFRecord input: flower_exp's training "
        f"pipeline (decode, augment, shuffle) over demo records generated locally at {setup.image_size} px. "
        "'Pipeline alone' iterates the TFRecord pipeline without a model. The *device aug.* columns train the "
        "same network behind `flower_exp.device_preprocessing` (augmentation and normalisation in the XLA-compiled "
        "train step, `augment.runs_on: device`, the default on a GPU) fed uint8 batches: synthetic, and the "
        "pipeline shipping decoded uint8 without host augmentation. 'Device aug. speed' = its synthetic "
        "images/s / the plain synthetic images/s (1.0: augmentation on the GPU is free).",
        "MFU = 3 x forward FLOPs per image (TensorFlow profiler, float32 graph, multiply-add = 2) x synthetic "
        "images/s / the GPU's dense fp16/bf16 peak (PEAK_FLOPS in benchmarks/gpu.py, from nvidia-smi's name"
        + (f": {peak / 1e12:.0f} TFLOP/s)." if peak else "; none for this device, so no MFU)."),
    ]
    path = common.write_result(
        out,
        name=NAME,
        title=TITLE,
        goal=GOAL,
        goal_met=None,
        measured=measured,
        smoke=smoke,
        table_md=table,
        notes_md="\n\n".join(notes),
    )
    print(measured)
    print(table)
    return path


def data_cache(setup: Setup) -> str:
    """Demo records live outside the repo, generated once per machine."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(base / "flower-exp-bench" / f"demo-c{setup.classes}-p{setup.per_class}-s{setup.image_size}")


def main(argv=None) -> int:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    setup = SMOKE if args.smoke else FULL
    from flower_exp._imports import tensorflow
    from flower_exp.data.demo import ensure_demo

    tf = tensorflow()
    device = gpu_name() if tf.config.list_physical_devices("GPU") else None
    if device is None and not args.smoke:
        print("gpu.py: TensorFlow sees no GPU; run on a GPU machine, or pass --smoke for the CPU check", file=sys.stderr)
        return 2
    root = data_cache(setup)
    common.log(f"demo TFRecords at {setup.image_size} px in {root}")
    info, _ = ensure_demo(root, classes=setup.classes, per_class=setup.per_class, sizes=[setup.image_size], seed=0, shards=8)
    rows = measure(setup, root, len(info.classes))
    report(setup, rows, device, args.smoke, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
