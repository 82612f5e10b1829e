"""Benchmark 1: the training input pipeline against its decode-only ceiling.

Both variants read the same demo TFRecords on the same cores in one process; runs alternate
(ceiling, pipeline, ceiling, ...) so a neighbour's load hits both alike, and the ratio is the
median over repeats of pipeline images/s divided by the ceiling's images/s of the same round.

* ceiling: ``TFRecordDataset(parallel reads) → parse + decode_jpeg (parallel map) → batch``,
  the least work any pipeline over these files must do;
* pipeline: ``flower_exp.data.pipeline.make_dataset(split="train")`` as a trial builds it
  (shard shuffle, parallel reads, record shuffle, decode, default augmentation, normalise,
  batch, prefetch), cache off as for training.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import demo_data, log, md_table, median, parse_args, plot_path, write_result  # noqa: E402

GOAL_RATIO = 0.9
BATCH = 32


def ceiling_dataset(root: str, size: int):
    """Read + parse + decode only: what any training pipeline over these shards must pay."""
    import tensorflow as tf

    from flower_exp.data import pipeline, records

    files = pipeline.split_files(root, "train", size).files
    spec = records.feature_spec(labeled=True)
    options = tf.data.Options()
    options.deterministic = False

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        return tf.io.decode_jpeg(example["image"], channels=3), example["class"]

    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).with_options(options).repeat()
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH)
    return ds.prefetch(tf.data.AUTOTUNE)


def pipeline_dataset(root: str, size: int, augment: bool = True):
    """The training dataset exactly as a trial builds it (default augmentation, cache off)."""
    from flower_exp.config import AugmentConfig
    from flower_exp.data import pipeline

    return pipeline.make_dataset(root, "train", image_size=size, batch_size=BATCH, normalization="unit",
                                 augment_cfg=AugmentConfig(enabled=augment), shuffle_buffer=512, seed=0,
                                 num_classes=6)


VARIANTS = {
    "ceiling": ceiling_dataset,
    "pipeline": pipeline_dataset,
    # Same pipeline with augmentation off: separates the pipeline's own structure (shuffle,
    # label check, normalisation) from the cost of the augmentation arithmetic.
    "no_augment": lambda root, size: pipeline_dataset(root, size, augment=False),
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def throughput(dataset, batches: int, warmup: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) over ``batches``
    batches of a fresh iterator, after ``warmup`` batches.

    A fresh iterator per measurement, dropped right after: an idle iterator keeps decoding
    into its prefetch buffers in the background, which would steal CPU from the variant being
    measured and hand its own next measurement a head start.
    """
    iterator = iter(dataset)
    for _ in range(warmup):  # autotuning ramp-up, shuffle buffer fill
        next(iterator)
    start, cpu = time.perf_counter(), _cpu_s()
    images = 0
    for _ in range(batches):
        images += int(next(iterator)[0].shape[0])
    elapsed, cpu = time.perf_counter() - start, _cpu_s() - cpu
    del iterator
    return images / elapsed, images / max(cpu, 1e-9)


def measure(root: str, size: int, repeats: int, batches: int, warmup: int) -> dict:
    """Alternate the variants ``repeats`` times; medians of per-round figures and ratios."""
    datasets = {name: build(root, size) for name, build in VARIANTS.items()}
    for dataset in datasets.values():
        throughput(dataset, 1, warmup)  # first iterator: tracing, page cache
    rounds = []
    names = list(VARIANTS)
    for r in range(repeats):
        # Rotate the order every round so no variant always runs right after the same one.
        got = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            got[name], got[name + "_cpu"] = throughput(datasets[name], batches, warmup)
        got["ratio"] = got["pipeline"] / got["ceiling"]
        got["ratio_no_augment"] = got["no_augment"] / got["ceiling"]
        got["cpu_ratio"] = got["pipeline_cpu"] / got["ceiling_cpu"]
        got["cpu_ratio_no_augment"] = got["no_augment_cpu"] / got["ceiling_cpu"]
        for name in names:  # CPU-seconds per wall second: how many cores the variant kept busy
            got[name + "_cores"] = got[name] / got[name + "_cpu"]
        rounds.append(got)
        log(f"{size} px round {r + 1}: " + ", ".join(f"{n} {got[n]:.0f}" for n in names)
            + f" img/s, ratio {got['ratio']:.3f} (no augment {got['ratio_no_augment']:.3f}), "
            f"per CPU-s {got['cpu_ratio']:.3f} ({got['cpu_ratio_no_augment']:.3f})")
    return {"size": size, **{key: median(x[key] for x in rounds) for key in rounds[0]},
            "ratio_min": min(x["ratio"] for x in rounds), "ratio_max": max(x["ratio"] for x in rounds)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['size']} px" for r in results]
    xs = range(len(results))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar([x - 0.27 for x in xs], [r["ceiling"] for r in results], 0.27, label="decode-only ceiling")
    ax.bar(list(xs), [r["no_augment"] for r in results], 0.27, label="pipeline, augmentation off")
    ax.bar([x + 0.27 for x in xs], [r["pipeline"] for r in results], 0.27, label="training pipeline")
    for x, r in zip(xs, results):
        ax.text(x, r["no_augment"], f"{r['ratio_no_augment']:.2f}", ha="center", va="bottom", fontsize=8)
        ax.text(x + 0.27, r["pipeline"], f"{r['ratio']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), labels)
    ax.set_yscale("log")
    ax.set_ylabel("images/s (median, log scale)")
    ax.set_title("Input pipeline vs decode-only ceiling (label: ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flower_exp._imports import tensorflow

    tensorflow()
    sizes = (32,) if args.smoke else (64, 192, 331)
    repeats, per_class = (2, 20) if args.smoke else (9, 100)
    root = demo_data(sizes, per_class)
    results = []
    for size in sizes:
        # Fewer batches at big sizes keep each round at a few seconds on 2 cores.
        batches = 3 if args.smoke else {64: 150, 192: 50, 331: 20}.get(size, 50)
        results.append(measure(root, size, repeats, batches, warmup=2 if args.smoke else 20))

    table = md_table(
        ["size", "decode-only ceiling (img/s)", "training pipeline (img/s)", "ratio (median)", "ratio range",
         "augmentation off (img/s)", "ratio, augmentation off", "ratio per CPU-second", "per CPU-s, aug. off", "cores busy: ceiling / pipeline"],
        [[f"{r['size']} px", f"{r['ceiling']:.0f}", f"{r['pipeline']:.0f}", f"{r['ratio']:.2f}",
          f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}", f"{r['no_augment']:.0f}", f"{r['ratio_no_augment']:.2f}",
          f"{r['cpu_ratio']:.2f}", f"{r['cpu_ratio_no_augment']:.2f}",
          f"{r['ceiling_cores']:.2f} / {r['pipeline_cores']:.2f}"]
         for r in results],
    )
    worst = min(results, key=lambda r: r["ratio"])
    measured = ", ".join(f"{r['ratio']:.2f} at {r['size']} px" for r in results)
    measured = f"pipeline/ceiling {measured} (median of {repeats} interleaved rounds, batch {BATCH})"
    plots = []
    if not args.smoke:
        path, rel = plot_path(args.out, "pipeline.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(results, path)
        plots.append(rel)
    notes = (
        f"Method: demo data (6 classes, {per_class} images per class, 4 shards per split) generated at "
        f"{', '.join(map(str, sizes))} px outside the repo. Each dataset is built once; every measurement opens "
        "a fresh iterator, pulls warm-up batches (tf.data autotuning, shuffle buffer), times the next "
        f"batches of {BATCH} and drops the iterator (an idle iterator keeps prefetching in the background). "
        "Rounds rotate the order of the variants. The ceiling reads, parses and decodes only (parallel "
        "reads, parallel map, batch); the pipeline adds the record shuffle, the label check, default "
        "augmentation (flip + crop-and-zoom in one `crop_and_resize`, brightness + contrast in one "
        "multiply-add, clip) and normalisation, as a trial runs it; *augmentation off* is the same "
        "pipeline without the augmentation step. All variants use every core, so a ratio is the share "
        "of CPU time the extra steps cost. Ratios are medians of per-round ratios. The machine is shared, "
        "so the table also gives the ratio of images per CPU-second of this process (user + system time "
        "of all its threads), which other jobs' load disturbs much less, and how many cores each variant "
        "kept busy (CPU-seconds per wall second): a pipeline that keeps fewer cores busy than the "
        "ceiling lacks parallelism."
    )
    if worst["ratio"] < GOAL_RATIO and not args.smoke:
        notes += (
            f"\n\n**Why the goal is missed** (worst: {worst['ratio']:.2f} at {worst['size']} px). Not per-record "
            "Python (there is none: every map is a traced TensorFlow function) and not unfused maps "
            "(augmentation and normalisation already run once per batch in one map). Parallelism: the "
            "pipeline kept " + ", ".join(f"{r['pipeline_cores']:.2f}" for r in results) + " cores busy "
            "against the ceiling's " + ", ".join(f"{r['ceiling_cores']:.2f}" for r in results) + " (the "
            "machine is shared, so neither reaches 2). The bulk is arithmetic: per CPU-second the training "
            "pipeline delivers "
            + ", ".join(f"{r['cpu_ratio']:.2f}" for r in results)
            + " of the ceiling's images, and with augmentation off "
            + ", ".join(f"{r['cpu_ratio_no_augment']:.2f}" for r in results)
            + ". So the augmentation step — a bilinear resample of every image (`crop_and_resize` with "
            "float32 output, for flip + crop-and-zoom) and the brightness/contrast/clip passes over float32 "
            "pixels — costs several times the JPEG decode itself, and even without it the label check and "
            "the conversion to normalised float32 (4x the bytes of the decoded uint8) add "
            + ", ".join(f"{100 * (1 / r['cpu_ratio_no_augment'] - 1):.0f}%" for r in results)
            + " to the decode's CPU time. The synthetic demo "
            "images are smooth and decode faster than photos of the same size would, which makes this "
            "ratio pessimistic for real data. Cheaper kernels do not close the gap: "
            "`ImageProjectiveTransformV3` (what Keras' RandomZoom uses) was slower than `crop_and_resize` "
            "in a micro-benchmark, `crop_and_resize` has no XLA kernel, and XLA-fusing only the "
            "element-wise passes saved roughly a quarter of the augmentation time — not enough for 0.9, "
            "and a new failure mode on TPU hosts, so `flower_exp/data/pipeline.py` was left as it is.\n\n"
            "**What would close it:** run augmentation and normalisation on the accelerator (Keras "
            "preprocessing layers at the model's input, active in training only) so the input pipeline "
            "ships decoded `uint8` batches at the ceiling's rate. On a GPU/TPU that work is nearly free; on "
            "a CPU-only machine it just moves the same cost into the train step."
        )
    path = write_result(
        args.out,
        name="pipeline",
        title="Input pipeline vs decode-only ceiling",
        goal=f"training pipeline images/s >= {GOAL_RATIO} of the decode-only ceiling at 64/192/331 px",
        goal_met=None if args.smoke else bool(worst["ratio"] >= GOAL_RATIO),
        measured=measured,
        smoke=args.smoke,
        table_md=table,
        plots=plots,
        notes_md=notes,
    )
    print(f"{measured}\nwrote {path}")


if __name__ == "__main__":
    main()
