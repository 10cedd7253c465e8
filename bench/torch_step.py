#!/usr/bin/env python3
"""PyTorch eager reference for kdc's CLIP-KD training step, for side-by-side timing.

This script reproduces, in plain PyTorch + Hugging Face `transformers`, the exact training step
kdc compiles for a recipe of the form of `recipes/demo/clip_kd_small.kd` and
`recipes/clip_kd/best.kd`:

    teacher = frozen CLIP, student = trainable CLIP (both Hugging Face `CLIPModel` towers:
              pre-LN blocks, `pre_layrnorm`, class-token pooling, end-of-text pooling,
              projections without bias, see compiler/src/engine/clip.rs)
    loss    = clip_loss(student) + 1 * crd + 1 * icl + 2000 * fd      (compiler/std/clip_kd.kd)
    train   = AdamW, betas (0.9, 0.98), eps 1e-6, weight decay 0.1 except gains, biases and
              scales; lr cosine with linear warm-up; the student's logit scale clamped to
              [ln 1, ln 100] after every step                        (compiler/src/engine/train.rs)

One step = fresh synthetic batch (like kdc's `synthetic` data source, generated inside the step
as kdc does), teacher forward under torch.no_grad(), student forward, the four loss terms,
backward, global gradient norm (kdc logs it every step), AdamW step, clamp, zero_grad.

It is a measuring stick only: nothing in kdc imports it and it is never run in CI (it needs
torch and transformers, which kdc's build and tests do not). Weights are random; only the
timing and memory numbers mean anything.

Usage:
    python bench/torch_step.py --config small|vit-t [--batch B] [--steps N] [--warmup W]
                               [--threads T] [--image S] [--attn eager|sdpa]
                               [--adamw default|foreach|fused] [--seed S]

Prints the loss of the first and of the last step, then one JSON line:
    {"impl": "pytorch-eager", "config": ..., "batch": ..., "image": ..., "median_step_s": ...,
     "mean_step_s": ..., "peak_rss_mib": ..., "torch": ..., "attn": ..., ...}
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import CLIPConfig, CLIPModel

LN_1_OVER_007 = math.log(1 / 0.07)  # ≈ 2.659, CLIP's logit-scale init and ICL's κ init

# ---------------------------------------------------------------------------------------------
# Configurations (sizes as kdc's `clip(image: vit(...), text: transformer(...), embed, act)`).
# ---------------------------------------------------------------------------------------------


def tower(width, layers, heads, mlp):
    return dict(width=width, layers=layers, heads=heads, mlp=mlp)


CONFIGS = {
    # recipes/demo/clip_kd_small.kd: the tiny HF CLIP of the test fixtures → half-width student.
    "small": dict(
        batch=16,
        image=32,
        patch=8,
        context=16,
        vocab=1000,
        teacher=dict(
            vision=tower(32, 2, 4, 64), text=tower(32, 2, 4, 64), embed=24, act="quick_gelu"
        ),
        student=dict(
            vision=tower(16, 1, 2, 64), text=tower(16, 1, 2, 64), embed=16, act="quick_gelu"
        ),
    ),
    # CLIP-KD's ViT-T/16 student; a "twice wider" teacher: ViT-S-like vision, ViT-B text.
    "vit-t": dict(
        batch=64,
        image=224,
        patch=16,
        context=77,
        vocab=49408,
        teacher=dict(
            vision=tower(384, 12, 6, 1536), text=tower(512, 12, 8, 2048), embed=512, act="gelu"
        ),
        student=dict(
            vision=tower(192, 12, 3, 768), text=tower(384, 12, 6, 1536), embed=512, act="gelu"
        ),
    ),
}


def build_clip(spec, image, patch, context, vocab, attn):
    """A randomly initialised Hugging Face CLIPModel of the given sizes."""
    v, t = spec["vision"], spec["text"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=t["width"],
            intermediate_size=t["mlp"],
            num_hidden_layers=t["layers"],
            num_attention_heads=t["heads"],
            max_position_embeddings=context,
            hidden_act=spec["act"],
            layer_norm_eps=1e-5,
            # Pool at the first end-of-text token (the largest id), as kdc and open_clip do.
            eos_token_id=vocab - 1,
            bos_token_id=vocab - 2,
            pad_token_id=0,
            projection_dim=spec["embed"],
        ),
        vision_config=dict(
            image_size=image,
            patch_size=patch,
            num_channels=3,
            hidden_size=v["width"],
            intermediate_size=v["mlp"],
            num_hidden_layers=v["layers"],
            num_attention_heads=v["heads"],
            hidden_act=spec["act"],
            layer_norm_eps=1e-5,
            projection_dim=spec["embed"],
        ),
        projection_dim=spec["embed"],
        logit_scale_init_value=LN_1_OVER_007,
    )
    model = CLIPModel._from_config(config, attn_implementation=attn, torch_dtype=torch.float32)
    assert model.text_model.eos_token_id == vocab - 1
    return model


def embed(model, pixels, ids):
    """Unnormalised image and text embeddings [B, embed] and σ = exp(logit_scale).

    No attention mask: the text tower is causal only (as open_clip); padding after the
    end-of-text token cannot reach it.
    """
    image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    return image, text, model.logit_scale.exp()


# ---------------------------------------------------------------------------------------------
# Losses, as in compiler/std/prelude.kd and compiler/std/clip_kd.kd.
# ---------------------------------------------------------------------------------------------


def norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def ce_diag(logits):
    """Row cross-entropy against the diagonal."""
    return F.cross_entropy(logits, torch.arange(logits.shape[0]))


def infonce(a, b, scale):
    """½ [CE(σ·n(a)·n(b)ᵀ, I) + CE(σ·n(b)·n(a)ᵀ, I)]."""
    logits = scale * norm(a) @ norm(b).T
    return (ce_diag(logits) + ce_diag(logits.T)) / 2


def clip_logits(image, text, scale):
    return scale * norm(image) @ norm(text).T


def kl_logits(teacher, student):
    """KL(softmax(teacher) ‖ softmax(student)), summed over classes, mean over rows; the
    teacher side detached."""
    return F.kl_div(
        F.log_softmax(student, dim=-1),
        F.log_softmax(teacher.detach(), dim=-1),
        reduction="batchmean",
        log_target=True,
    )


class KDHead(torch.nn.Module):
    """The loss's own parameters: W per tower (only when the widths differ; `proj` is the
    identity otherwise) and ICL's κ."""

    def __init__(self, student_dim, teacher_dim):
        super().__init__()
        if student_dim != teacher_dim:
            # kdc's `linear`: weight and bias, uniform(±1/√in) init (torch's default).
            self.w_image = torch.nn.Linear(student_dim, teacher_dim)
            self.w_text = torch.nn.Linear(student_dim, teacher_dim)
        else:
            self.w_image = self.w_text = None
        # κ, used as is: not exponentiated, never clamped.
        self.icl_scale = torch.nn.Parameter(torch.tensor(LN_1_OVER_007))

    def image_to(self, v):
        """norm(W_v · norm(v_S) + b)."""
        x = norm(v)
        return norm(self.w_image(x) if self.w_image is not None else x)

    def text_to(self, s):
        x = norm(s)
        return norm(self.w_text(x) if self.w_text is not None else x)


def kd_loss(head, s_image, s_text, s_scale, t_image, t_text, t_scale):
    """clip_loss(student) + 1·CRD + 1·ICL + 2000·FD; returns (total, terms)."""
    task = infonce(s_image, s_text, s_scale)

    # CRD: each model's own σ·n(v)·n(s)ᵀ; KL(teacher ‖ student), both directions.
    s_logits = clip_logits(s_image, s_text, s_scale)
    t_logits = clip_logits(t_image, t_text, t_scale)
    crd = (kl_logits(t_logits, s_logits) + kl_logits(t_logits.T, s_logits.T)) / 2

    # The student's mapped embeddings, shared by ICL and FD (one W per tower).
    v_to = head.image_to(s_image)
    s_to = head.text_to(s_text)
    vt, st = norm(t_image), norm(t_text)

    # ICL: student anchors against the teacher's contrast set, scaled by κ.
    kappa = head.icl_scale
    icl = (ce_diag(kappa * v_to @ st.T) + ce_diag(kappa * s_to @ vt.T)) / 2

    # FD: element-wise mean squared error over B × D, per tower.
    fd = F.mse_loss(v_to, vt) + F.mse_loss(s_to, st)

    total = task + 1 * crd + 1 * icl + 2000 * fd
    return total, dict(clip_loss=task, crd=crd, icl=icl, fd=fd)


# ---------------------------------------------------------------------------------------------
# Optimiser, as in compiler/src/engine/train.rs.
# ---------------------------------------------------------------------------------------------


def param_groups(named, weight_decay):
    """Weight decay on weights and embeddings; none on gains (layer-norm weights), biases and
    scales (logit_scale, κ: every parameter of rank ≤ 1)."""
    decay, no_decay = [], []
    for _, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        dict(params=decay, weight_decay=weight_decay),
        dict(params=no_decay, weight_decay=0.0),
    ]


def cosine(peak, warmup, total):
    """kdc's `cosine(peak, warmup:)` as a LambdaLR factor of step t (0-based)."""

    def factor(t):
        if t < warmup:
            return (t + 1) / warmup
        progress = min((t - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ---------------------------------------------------------------------------------------------
# Synthetic batches, as kdc's `synthetic` source (different random streams, same laws).
# ---------------------------------------------------------------------------------------------


def synthetic_batch(gen, batch, image, context, vocab):
    """Pixels ~ N(0, 1) [B, 3, S, S] (shared by teacher and student); per row a caption of
    length L ∈ [2, context] of ids in [1, vocab − 2] ending in the end-of-text id vocab − 1,
    then 0 padding."""
    pixels = torch.randn(batch, 3, image, image, generator=gen)
    lengths = torch.randint(2, context + 1, (batch,), generator=gen)
    ids = torch.randint(1, vocab - 1, (batch, context), generator=gen)
    pos = torch.arange(context).expand(batch, context)
    ids = torch.where(pos < lengths[:, None], ids, torch.zeros_like(ids))
    ids[torch.arange(batch), lengths - 1] = vocab - 1
    return pixels, ids


# ---------------------------------------------------------------------------------------------


def count(model):
    return sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(
        description="PyTorch eager timing of kdc's CLIP-KD step (task + CRD + ICL + 2000·FD, "
        "AdamW). Not run in CI.",
    )
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--batch", type=int, help="default: 16 (small), 64 (vit-t)")
    ap.add_argument("--image", type=int, help="image side for both models (default: 32 / 224)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    ap.add_argument(
        "--adamw",
        choices=["default", "foreach", "fused"],
        default="default",
        help="torch.optim.AdamW implementation (default: torch's choice for CPU)",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-warmup", type=int, default=20, help="lr warm-up steps (cosine after)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = CONFIGS[args.config]
    batch = args.batch or cfg["batch"]
    image = args.image or cfg["image"]
    if image % cfg["patch"]:
        sys.exit(f"--image {image} is not a multiple of the patch size {cfg['patch']}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    dims = dict(image=image, patch=cfg["patch"], context=cfg["context"], vocab=cfg["vocab"])
    teacher = build_clip(cfg["teacher"], attn=args.attn, **dims)
    student = build_clip(cfg["student"], attn=args.attn, **dims)
    head = KDHead(cfg["student"]["embed"], cfg["teacher"]["embed"])

    teacher.eval()
    teacher.requires_grad_(False)
    student.train()  # CLIP has no dropout at these settings; train() for form's sake.

    named = list(student.named_parameters()) + list(head.named_parameters())
    trainable = [p for _, p in named]
    opt_kwargs = dict(lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    if args.adamw == "foreach":
        opt_kwargs["foreach"] = True
    elif args.adamw == "fused":
        opt_kwargs["fused"] = True
    opt = torch.optim.AdamW(param_groups(named, 0.1), **opt_kwargs)
    total_steps = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(args.lr, args.lr_warmup, total_steps))
    clamp_lo, clamp_hi = math.log(1.0), math.log(100.0)

    print(
        f"# torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
        f"attn {student.config._attn_implementation}",
        file=sys.stderr,
    )
    print(
        f"# {args.config}: batch {batch}, image {image}; teacher {count(teacher) / 1e6:.2f}M "
        f"params (frozen), student {count(student) / 1e6:.2f}M + loss "
        f"{count(head) / 1e6:.4f}M trainable",
        file=sys.stderr,
    )

    gen = torch.Generator().manual_seed(args.seed)

    def step():
        pixels, ids = synthetic_batch(gen, batch, image, cfg["context"], cfg["vocab"])
        with torch.no_grad():
            t_image, t_text, t_scale = embed(teacher, pixels, ids)
        s_image, s_text, s_scale = embed(student, pixels, ids)
        loss, terms = kd_loss(head, s_image, s_text, s_scale, t_image, t_text, t_scale)
        loss.backward()
        grads = [p.grad for p in trainable if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        opt.step()
        sched.step()
        with torch.no_grad():
            student.logit_scale.clamp_(clamp_lo, clamp_hi)
        opt.zero_grad(set_to_none=True)
        return loss.item(), {k: v.item() for k, v in terms.items()}, grad_norm.item()

    def show(label, i, result):
        loss, terms, gn = result
        parts = " ".join(f"{k} {v:.6g}" for k, v in terms.items())
        print(f"{label} step {i}: loss {loss:.6g} ({parts}) grad_norm {gn:.4g}")

    times = []
    first = last = None
    for i in range(total_steps):
        started = time.perf_counter()
        result = step()
        elapsed = time.perf_counter() - started
        if i == 0:
            first = result
            show("first", i + 1, result)
        if i >= args.warmup:
            times.append(elapsed)
        print(
            f"# step {i + 1}/{total_steps}: {elapsed:.4f} s, loss {result[0]:.6g}",
            file=sys.stderr,
        )
        last = result
    show("last", total_steps, last)

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    # torch keeps no allocator statistics for CPU tensors (torch.cuda.max_memory_allocated is
    # CUDA only), so the process's peak resident set is the one memory number.
    torch_peak = None
    if torch.cuda.is_available():
        torch_peak = torch.cuda.max_memory_allocated() / 2**20
    print(
        json.dumps(
            {
                "impl": "pytorch-eager",
                "config": args.config,
                "batch": batch,
                "image": image,
                "steps": args.steps,
                "warmup": args.warmup,
                "median_step_s": statistics.median(times) if times else None,
                "mean_step_s": statistics.fmean(times) if times else None,
                "peak_rss_mib": round(peak_rss_mib, 1),
                "torch_peak_alloc_mib": torch_peak,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "attn": student.config._attn_implementation,
                "adamw": args.adamw,
                "first_loss": first[0],
                "last_loss": last[0],
            }
        )
    )


if __name__ == "__main__":
    main()
