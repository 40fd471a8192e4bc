"""Scale: caches larger than memory, and cost as work grows (issue 14, items 5 and 6).

(1) Streaming. A synthetic cache of --rows rows x 1,280 features (MobileNetV2's
    pooled width) is written with `write_cache` in --dtype (float32: 4.8 GiB
    at 1,000,000 rows; float16: half): non-negative random features, 80
    random multilabel labels (4% positive), 90% train / 10% val rows. One
    tune-top epoch of the default top (1 x 1024, d5, SGD, batch 64) runs on it
    streamed from HDF5 (max_memory 64M) and in memory (max_memory above the
    features' size), under each --allocators setting, each in a fresh process
    so that each peak RSS (VmHWM of that process) is its own:
      default  glibc malloc and TensorFlow's default CPU allocator
      bfc      TF_CPU_ALLOCATOR_USE_BFC=true (TensorFlow's pooling allocator)
      pad      keep_freed_memory(): glibc keeps 64 MiB at the top of each heap
               (what `mlkit tune-top` sets)
    Targets: streamed rows/s at least 0.7x in-memory under the same setting;
    peak RSS under 2 GB while streaming.
(2) Cost as work grows. `cache_features` (mobilenetv2, 96 px, weights none,
    pooling avg, batch 64) on --images generated JPEGs of about 300 x 400 px,
    and one tune-top epoch in memory on caches of --top-rows rows (a size
    equal to --rows reuses (1)'s in-memory epoch). Target: seconds per item
    flat within 20% (largest over smallest per-item cost across sizes).

What is timed, each measurement in its own process:
  tune-top epoch  one `fit` over the training split's batches, exactly the
                  dataset tune-top trains on (`TopData.train_dataset`), after a
                  warm-up `fit` on one batch. Not timed: loading the features
                  (in memory), the input statistics pass, building and tracing
                  the model, and the validation pass tune-top adds per epoch.
                  Items are training rows. CPU and system seconds and minor
                  page faults are the process's own during the timed `fit`.
  cache_features  from its first written batch to its last (the rate
                  `benchmarks/cache_throughput.py` calls steady), so the backbone's
                  set-up and graph trace are not counted. The whole call is
                  printed too.

Usage:
    python benchmarks/scale.py                                  # full size
    python benchmarks/scale.py --rows 50000 --top-rows 10000,50000 --images 256,1024
    python benchmarks/scale.py --skip top --skip images --dtype float16    # streaming alone
"""

import argparse
import concurrent.futures
import csv
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_throughput import make_images

FEATURES = 1280
LABELS = 80
STREAMED_MEMORY = "64M"
GIB = 1 << 30
ALLOCATORS = ("default", "bfc", "pad")


def sizes(text):
    return [int(part) for part in text.split(",") if part.strip()]


def in_child(function, *args, env=None):
    """`function(*args)` run in a fresh spawned process, so its peak RSS is its own; `env` is added to its environment."""
    context = multiprocessing.get_context("spawn")
    saved = dict(os.environ)
    os.environ.update(env or {})  # a spawned child copies the environment when it starts
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(function, *args).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def peak_rss():
    """This process's peak resident set size in bytes: VmHWM, in KiB in /proc/self/status.

    Not getrusage's ru_maxrss: Linux carries it across fork and exec, so a spawned
    child would report the parent's peak (the 5 GiB of features it wrote).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak RSS needs Linux")


def feature_cache(folder, rows, seed=0, dtype="float32"):
    """A synthetic mobilenetv2-shaped multilabel cache of `rows` rows; returns (path, seconds to write)."""
    from mlkit.bottlenecks.cache import write_cache

    rng = np.random.default_rng(seed)
    features = np.empty((rows, FEATURES), dtype)  # filled a block at a time: no float32 copy of a float16 table
    for start in range(0, rows, 1 << 16):
        block = rng.standard_normal((min(1 << 16, rows - start), FEATURES), dtype=np.float32)
        features[start:start + len(block)] = np.maximum(block, 0)
    labels = (rng.random((rows, LABELS), dtype=np.float32) < 0.04).astype("uint8")
    split = np.where(np.arange(rows) % 10 < 9, "train", "val")
    attrs = {"task": "multilabel", "dataset": "bench", "subset": f"scale{rows}", "backbone": "mobilenetv2", "preprocess": "inet",
                 "pooling": "avg", "label_names": [f"label{i}" for i in range(LABELS)]}
    started = time.perf_counter()
    path = write_cache(Path(folder) / f"bench_scale{rows}_mobilenetv2_inet_avg.h5", features=features,
                       labels=labels, split=split, attrs=attrs, dtype=dtype)
    return path, time.perf_counter() - started


def top_epoch(cache_path, max_memory, batch, pad=True):
    """One steady tune-top training epoch (run in a child): rows, seconds, mode, faults and peak RSS."""
    import keras

    from mlkit.bottlenecks.cache import open_cache
    from mlkit.tuning.config import TopConfig
    from mlkit.tuning.memory import keep_freed_memory, parse_memory
    from mlkit.tuning.top import build_top_model, compile_top, set_input_statistics
    from mlkit.tuning.top_data import TopData

    if pad:
        keep_freed_memory()
    config = TopConfig(batch=batch)
    keras.utils.set_random_seed(config.seed)
    data = TopData(open_cache(cache_path), max_memory=parse_memory(max_memory), seed=config.seed)
    model = compile_top(build_top_model(config, data.feature_shape, data.num_outputs, data.task), config,
                        data.pos_weight)
    set_input_statistics(model, *data.input_statistics())
    dataset = data.train_dataset(config.batch)
    model.fit(dataset.take(1), epochs=1, verbose=0, shuffle=False)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {"rows": len(data.sample_rows), "seconds": seconds, "in_memory": data.in_memory,
            "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "system": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt,
            "feature_bytes": data.memory_bytes(), "peak_rss": peak_rss()}


def subset_manifest(manifest, count):
    """A manifest of the first `count` rows of `manifest`, beside it."""
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    path = Path(manifest).with_name(f"first{count}.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def cache_images(manifest, workdir):
    """cache_features on a manifest (run in a child): images, steady and whole seconds, peak RSS."""
    from mlkit.bottlenecks.extract import cache_features

    stamps = []
    result = cache_features(manifest, workdir=workdir, backbone="mobilenetv2", weights="none", image_size=96,
                            pooling="avg", batch_size=64, progress=False,
                            on_batch=lambda done, total: stamps.append((time.perf_counter(), done)))
    if result.computed != len(Path(manifest).read_text().splitlines()) - 1:
        raise SystemExit(f"{manifest}: not every image was computed ({result})")
    steady_items = stamps[-1][1] - stamps[0][1]
    return {"items": result.computed, "steady_items": steady_items, "steady": stamps[-1][0] - stamps[0][0],
            "whole": result.seconds, "peak_rss": peak_rss()}


def allocator_env(allocator):
    """(environment for the child, whether it calls keep_freed_memory) for one --allocators setting."""
    return ({"TF_CPU_ALLOCATOR_USE_BFC": "true"} if allocator == "bfc" else {}), allocator == "pad"


def streaming(folder, rows, batch, allocators, dtype):
    """Part (1): streamed and in-memory epochs on one `rows`-row cache under each allocator setting.

    Returns (the in-memory result under mlkit's own setting, or the last one measured; the cache).
    """
    cache, write_seconds = feature_cache(folder, rows, dtype=dtype)
    size = cache.stat().st_size
    print(f"(1) cache of {rows:,} rows x {FEATURES} {dtype}, {LABELS} labels: {size / GIB:.2f} GiB, "
          f"written by write_cache in {write_seconds:.1f} s", flush=True)
    print(f"{'mode':<10} {'allocator':<9} {'train rows':>10} {'epoch s':>8} {'rows/s':>8} {'CPU s':>7} "
          f"{'rows/CPU s':>10} {'system s':>8} {'minor faults':>12} {'peak RSS GiB':>12}", flush=True)
    results = {}
    for allocator in allocators:
        env, pad = allocator_env(allocator)
        for mode, memory in (("streamed", STREAMED_MEMORY), ("in memory", f"{2 * size // (1 << 20) + 64}M")):
            result = results[allocator, mode] = in_child(top_epoch, cache, memory, batch, pad, env=env)
            if result["in_memory"] != (mode == "in memory"):
                raise SystemExit("the forced max_memory did not choose the expected mode")
            print(f"{mode:<10} {allocator:<9} {result['rows']:>10,} {result['seconds']:>8.1f} "
                  f"{result['rows'] / result['seconds']:>8.0f} {result['cpu']:>7.1f} "
                  f"{result['rows'] / result['cpu']:>10.0f} {result['system']:>8.1f} {result['faults']:>12,} "
                  f"{result['peak_rss'] / GIB:>12.2f}", flush=True)
    for allocator in allocators:
        streamed, in_memory = results[allocator, "streamed"], results[allocator, "in memory"]
        ratio = (streamed["rows"] / streamed["seconds"]) / (in_memory["rows"] / in_memory["seconds"])
        print(f"{allocator}: streamed / in memory rows/s {ratio:.2f} (target >= 0.70: "
              f"{'met' if ratio >= 0.7 else 'MISSED'}); per CPU second, less sensitive to the machine's other "
              f"load: {in_memory['cpu'] / streamed['cpu']:.2f}; streamed peak RSS {streamed['peak_rss'] / GIB:.2f} GiB "
              f"(target < 2 GB: {'met' if streamed['peak_rss'] < 2e9 else 'MISSED'})", flush=True)
    return results.get(("pad", "in memory"), in_memory), cache


def growth_table(title, results):
    """Prints seconds per item at each size and the spread; results: [(size, items, seconds, note)]."""
    per_item = [seconds / items for _, items, seconds, _ in results]
    print(title)
    print(f"{'size':>10} {'items timed':>11} {'seconds':>8} {'ms/item':>8}  note")
    for (size, items, seconds, note), cost in zip(results, per_item):
        print(f"{size:>10,} {items:>11,} {seconds:>8.1f} {cost * 1e3:>8.3f}  {note}")
    spread = max(per_item) / min(per_item)
    print(f"largest / smallest size: {per_item[-1] / per_item[0]:.2f}; max / min across sizes: {spread:.2f} "
          f"(target <= 1.20: {'met' if spread <= 1.2 else 'MISSED'})", flush=True)


def top_growth(folder, top_rows, batch, known):
    """Part (2), tune-top: one in-memory epoch per cache size (`known`: rows -> a result already measured)."""
    results = []
    for rows in top_rows:
        result = known.get(rows)
        if result is None:
            cache, _ = feature_cache(folder, rows)
            result = in_child(top_epoch, cache, "1T", batch)  # as `mlkit tune-top` runs: keep_freed_memory()
            cache.unlink()
        results.append((rows, result["rows"], result["seconds"], f"peak RSS {result['peak_rss'] / GIB:.2f} GiB"))
    growth_table("(2) one tune-top epoch in memory, per training row:", results)


def cache_growth(folder, counts):
    """Part (2), cache-features: the first N of max(counts) generated JPEGs, each N cached from scratch."""
    started = time.perf_counter()
    manifest = make_images(Path(folder) / "images", max(counts), seed=0)
    print(f"{max(counts):,} JPEGs of about 300 x 400 px made in {time.perf_counter() - started:.0f} s", flush=True)
    results = []
    for count in counts:
        result = in_child(cache_images, subset_manifest(manifest, count), Path(folder) / f"work{count}")
        results.append((count, result["steady_items"], result["steady"],
                        f"whole call {result['whole']:.1f} s ({result['items'] / result['whole']:.0f} img/s), "
                        f"peak RSS {result['peak_rss'] / GIB:.2f} GiB"))
    growth_table("(2) cache_features, mobilenetv2 96 px weights none, per image (first to last written batch):",
                 results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the streaming cache (default 1,000,000)")
    parser.add_argument("--top-rows", type=sizes, default=[10_000, 100_000, 1_000_000],
                        help="cache sizes for the tune-top growth (default 10000,100000,1000000)")
    parser.add_argument("--images", type=sizes, default=[1000, 4000, 16000],
                        help="image counts for the cache-features growth (default 1000,4000,16000)")
    parser.add_argument("--batch", type=int, default=64, help="tune-top batch size (default 64, tune-top's)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="how the streaming cache stores its features (default float32)")
    parser.add_argument("--allocators", type=lambda text: text.split(","), default=list(ALLOCATORS),
                        help=f"allocator settings for part (1), comma-separated (default {','.join(ALLOCATORS)})")
    parser.add_argument("--skip", choices=("streaming", "top", "images"), action="append", default=[],
                        help="leave out one part (repeatable)")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the caches and images")
    args = parser.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    folder = tempfile.mkdtemp(prefix="mlkit_scale_", dir=args.scratch)
    try:
        known = {}
        if "streaming" not in args.skip:
            in_memory, cache = streaming(folder, args.rows, args.batch, args.allocators, args.dtype)
            known[args.rows] = in_memory
            cache.unlink()
        if "top" not in args.skip:
            top_growth(folder, args.top_rows, args.batch, known)
        if "images" not in args.skip:
            cache_growth(folder, args.images)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
