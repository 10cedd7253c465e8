#!/usr/bin/env python3
"""Checks that a model kdc exported loads in Hugging Face transformers and computes what kdc
computed.

    pip install torch transformers safetensors
    python scripts/check_export.py runs/quickstart/models/student [more folders...]

Each exported folder holds `kdc_reference.safetensors`: seeded images and tokenized captions
with the L2-normalised embeddings kdc's own engine gave them. This script loads the folder with
`transformers.CLIPModel.from_pretrained`, embeds the same inputs and compares. It also checks
that the folder's `preprocessor_config.json` loads as a `CLIPImageProcessor`. Exit status 1 if
any embedding differs by more than the tolerance (default 1e-4). Run by hand; not part of CI.
"""
import argparse
import sys

import torch
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPModel


def features(out):
    # transformers 4 returns a tensor; 5 may return a model output with pooler_output.
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def check(folder, tol):
    model = CLIPModel.from_pretrained(folder).eval()
    CLIPImageProcessor.from_pretrained(folder)
    ref = load_file(f"{folder}/kdc_reference.safetensors")
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=ref["pixel_values"]))
        text = features(model.get_text_features(input_ids=ref["input_ids"].long()))
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    worst = 0.0
    for name, got in [("image_embeds", image), ("text_embeds", text)]:
        want = ref[name]
        diff = (got - want).abs().max().item()
        worst = max(worst, diff)
        print(f"{folder}: {name} {tuple(want.shape)} max |transformers - kdc| = {diff:.2e}")
    return worst <= tol


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    ok = all([check(f, args.tol) for f in args.folders])
    print("ok" if ok else f"FAILED: a difference above {args.tol}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
