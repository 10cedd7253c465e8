"""Makes the small Fashion-MNIST subset the quickstart trains on (no download needed).

From the full data set (Debian's dataset-fashion-mnist, files in
/usr/share/datasets/fashion-mnist, or any folder with the four idx .gz files) it takes a
class-balanced, seeded sample: 400 training images per class and 100 test images per class,
written in the same idx format, gzipped, to fashion-mnist-mini/ beside this script.
Fashion-MNIST is © Zalando SE, MIT licence (see fashion-mnist-mini/LICENSE).

  python3 recipes/demo/data/make_fashion_mnist_mini.py [/usr/share/datasets/fashion-mnist]
"""

import gzip
import random
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read(path):
    data = gzip.open(path).read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return dims, data[4 + 4 * rank:]


def write(path, dims, payload):
    header = bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + payload)


def subset(src, out, prefix, per_class, seed):
    (n, h, w), images = read(src / f"{prefix}-images-idx3-ubyte.gz")
    _, labels = read(src / f"{prefix}-labels-idx1-ubyte.gz")
    rng = random.Random(seed)
    by_class = {c: [i for i in range(n) if labels[i] == c] for c in range(10)}
    chosen = sorted(i for c in range(10) for i in rng.sample(by_class[c], per_class))
    rng.shuffle(chosen)
    write(out / f"{prefix}-images-idx3-ubyte.gz", (len(chosen), h, w),
          b"".join(images[i * h * w:(i + 1) * h * w] for i in chosen))
    write(out / f"{prefix}-labels-idx1-ubyte.gz", (len(chosen),), bytes(labels[i] for i in chosen))


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    out = HERE / "fashion-mnist-mini"
    out.mkdir(exist_ok=True)
    subset(src, out, "train", 400, 1)
    subset(src, out, "t10k", 100, 2)


if __name__ == "__main__":
    main()
