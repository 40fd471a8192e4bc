"""Peak memory of reading and resizing one very large photo, as cache-features does (issue 24, item 18).

Writes a 50-megapixel JPEG (8660 x 5774, a smooth gradient with noise, so it is a realistic 10-20 MB
file), then, each in a fresh process, decodes it with `mlkit.images.load_image` and resizes it to
224 px with `mlkit.images.resize_array`, and reports the peak resident memory (VmHWM, reset through
/proc/self/clear_refs before each step, Linux only) of each step above what the process held before it. "whole float32" repeats the
resize the way it was done before item 18 (the whole image converted to float32 first), for
comparison; both give the same pixels.

    python benchmarks/resize_memory.py --out /tmp/resize-memory
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 8660, 5774

MEASURE = """
import json, resource, sys, time
import numpy as np
from mlkit.images import _resize_weights, load_image, resize_array

def whole_float32(pixels, size):
    height, width, channels = pixels.shape
    rows, cols = _resize_weights(height, size), _resize_weights(width, size)
    image = np.ascontiguousarray(pixels, dtype=np.float32).reshape(height, width * channels)
    tall = (rows @ image).reshape(size, width, channels)
    tall = np.ascontiguousarray(tall.transpose(1, 0, 2)).reshape(width, size * channels)
    return (cols @ tall).reshape(size, size, channels).transpose(1, 0, 2)

resize = {"blocks": resize_array, "whole float32": whole_float32}[sys.argv[2]]

def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:  # "5" resets the peak resident size (Linux)
        handle.write("5")

reset_peak()
start = peak_mb()
pixels = load_image(sys.argv[1])
decode_mb = peak_mb() - start
reset_peak()
start = peak_mb()
started = time.perf_counter()
out = resize(pixels, 224)
seconds = time.perf_counter() - started
resize_mb = peak_mb() - start
np.save(sys.argv[3], out)
print(json.dumps({"decode_mb": decode_mb, "resize_mb": resize_mb, "seconds": seconds}))
"""


def make_photo(path):
    from PIL import Image

    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :, None]
    rows = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, None, None]
    pixels = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    for start in range(0, HEIGHT, 512):  # in strips: the benchmark itself must not take gigabytes
        part = (gradient + rows[start:start + 512]) / 2 + rng.normal(0, 12, (min(512, HEIGHT - start), WIDTH, 3))
        pixels[start:start + 512] = np.clip(part, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/resize-memory", help="folder for the photo and results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photo = out / "photo-50mp.jpg"
    if not photo.exists():
        make_photo(photo)
    print(f"{photo}: {WIDTH} x {HEIGHT} ({WIDTH * HEIGHT / 1e6:.1f} MP), {photo.stat().st_size / 2**20:.1f} MB")
    results = {}
    for way in ("blocks", "whole float32"):
        done = subprocess.run([sys.executable, "-c", MEASURE, str(photo), way, str(out / f"{way}.npy")],
                              capture_output=True, text=True, check=True)
        results[way] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{way:>14}: decoding peaks {results[way]['decode_mb']:.0f} MB above the process before it; resizing "
              f"the decoded image peaks {results[way]['resize_mb']:.0f} MB above it, {results[way]['seconds']:.1f} s")
    same = np.array_equal(np.load(out / "blocks.npy"), np.load(out / "whole float32.npy"))
    print(f"identical 224 x 224 output: {same}")
    (out / "results.json").write_text(json.dumps({"results": results, "identical": same,
                                                  "time": time.ctime(), "maxrss_self_mb":
                                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, indent=2))


if __name__ == "__main__":
    main()
