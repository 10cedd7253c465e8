//! One whole training step of the small CLIP-KD recipe (recipes/demo/clip_kd_small.kd), checked
//! against candle-core's autograd: the same weights and batch as kdc's engine, an independent
//! forward pass written here with candle tensors (Hugging Face `CLIPModel` towers, the losses
//! of std/prelude.kd and std/clip_kd.kd), then `backward()`. The total loss, every term and the
//! gradient of every trainable parameter must agree; the frozen teacher gets none.

use candle_core::{DType, Device, Tensor, Var, D};
use kdc::engine::train::{Evaluation, Options, Trainer};
use kdc::model::{Activation, ModelSpec};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

type Result<T> = candle_core::Result<T>;

/// CLIP's layer-norm epsilon.
const LN_EPS: f64 = 1e-5;

/// The recipe's weights: loss = clip_loss + 1·crd + 1·icl + 2000·fd.
const WEIGHTS: [(&str, f64); 4] = [("clip", 1.0), ("crd", 1.0), ("icl", 1.0), ("fd", 2000.0)];

/// The loss's own parameters (std/clip_kd.kd): κ, and the maps W_v, W_s with bias from the
/// student's embedding width (16) to the teacher's (24).
const LOSS_PARAMS: [&str; 5] = [
    "loss/clip_kd.icl_scale",
    "loss/clip_kd.w_image.weight",
    "loss/clip_kd.w_image.bias",
    "loss/clip_kd.w_text.weight",
    "loss/clip_kd.w_text.bias",
];

// ---------------------------------------------------------------------------------------------
// Building blocks, from candle primitives only.

/// Row softmax over the last axis (the detached maximum only makes it stable).
fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x
        .broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// log softmax over the last axis: (x − m) − log Σ exp(x − m).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Cross-entropy of each row against the diagonal, mean over rows: −mean_i log p_i(i).
fn cross_entropy_diagonal(logits: &Tensor) -> Result<Tensor> {
    let (rows, _) = logits.dims2()?;
    let eye = Tensor::eye(rows, DType::F32, logits.device())?;
    (log_softmax(logits)? * eye)?
        .sum_all()?
        .affine(-1.0 / rows as f64, 0.0)
}

/// KL(p ‖ q) from log-probabilities over the last axis, summed over classes, mean over rows.
fn kl(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    let (rows, _) = log_p.dims2()?;
    (log_p.exp()? * (log_p - log_q)?)?
        .sum_all()?
        .affine(1.0 / rows as f64, 0.0)
}

/// Element-wise mean squared error.
fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

/// x / ‖x‖₂ over the last axis.
fn normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

/// (x − mean) / √(var + ε) · gain + bias over the last axis, biased variance.
fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&var.affine(1.0, LN_EPS)?.sqrt()?)?
        .broadcast_mul(gain)?
        .broadcast_add(bias)
}

/// x·σ(1.702·x), σ(z) = 1 / (1 + e^(−z)).
fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    let sigmoid = x.affine(-1.702, 0.0)?.exp()?.affine(1.0, 1.0)?.recip()?;
    x * sigmoid
}

/// x·Wᵀ (+ b), W in PyTorch's [out, in] layout.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face CLIPModel towers.

/// One model's parameters, by Hugging Face name.
struct Model<'a> {
    spec: &'a ModelSpec,
    params: &'a HashMap<String, Tensor>,
}

impl Model<'_> {
    fn w(&self, name: &str) -> &Tensor {
        let full = format!("{}/{name}", self.spec.name);
        self.params
            .get(&full)
            .unwrap_or_else(|| panic!("no parameter {full}"))
    }

    /// Multi-head self-attention of x [b, t, w]; `mask` is added to the scores.
    fn attention(
        &self,
        x: &Tensor,
        prefix: &str,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, width) = x.dims3()?;
        let d = width / heads;
        let proj = |name: &str, x: &Tensor| {
            linear(
                x,
                self.w(&format!("{prefix}.self_attn.{name}.weight")),
                Some(self.w(&format!("{prefix}.self_attn.{name}.bias"))),
            )
        };
        // [b, t, w] → [b, heads, t, d]
        let split = |y: Tensor| y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
        let q = split(proj("q_proj", x)?.affine((d as f64).powf(-0.5), 0.0)?)?;
        let k = split(proj("k_proj", x)?)?;
        let v = split(proj("v_proj", x)?)?;
        let mut scores = q.matmul(&k.t()?.contiguous()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let o = softmax(&scores)?.matmul(&v)?;
        let o = o.transpose(1, 2)?.reshape((b, t, width))?;
        proj("out_proj", &o)
    }

    /// A pre-LN encoder layer: x + attn(ln1(x)), then x + fc2(quick_gelu(fc1(ln2(x)))).
    fn layer(
        &self,
        x: &Tensor,
        prefix: &str,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = |s: &str| self.w(&format!("{prefix}.{s}"));
        let h = layer_norm(x, n("layer_norm1.weight"), n("layer_norm1.bias"))?;
        let x = (x + self.attention(&h, prefix, heads, mask)?)?;
        let h = layer_norm(&x, n("layer_norm2.weight"), n("layer_norm2.bias"))?;
        let h = linear(&h, n("mlp.fc1.weight"), Some(n("mlp.fc1.bias")))?;
        let h = linear(
            &quick_gelu(&h)?,
            n("mlp.fc2.weight"),
            Some(n("mlp.fc2.bias")),
        )?;
        x + h
    }

    /// The projected, unnormalised image embedding of pixels [b, 3, s, s].
    fn image(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.spec.vision;
        let (patch, width) = (v.patch as usize, v.width as usize);
        let b = pixels.dim(0)?;
        // Patch embedding: a convolution with stride = kernel = patch, no bias.
        let x = pixels.conv2d(
            self.w("vision_model.embeddings.patch_embedding.weight"),
            0,
            patch,
            1,
            1,
        )?; // [b, w, side, side]
        let x = x.flatten_from(2)?.transpose(1, 2)?; // [b, patches, w]
        let class = self
            .w("vision_model.embeddings.class_embedding")
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&class, &x], 1)?
            .broadcast_add(self.w("vision_model.embeddings.position_embedding.weight"))?;
        let mut x = layer_norm(
            &x,
            self.w("vision_model.pre_layrnorm.weight"),
            self.w("vision_model.pre_layrnorm.bias"),
        )?;
        for i in 0..v.layers as usize {
            x = self.layer(
                &x,
                &format!("vision_model.encoder.layers.{i}"),
                v.heads as usize,
                None,
            )?;
        }
        let pooled = layer_norm(
            &x.narrow(1, 0, 1)?.squeeze(1)?,
            self.w("vision_model.post_layernorm.weight"),
            self.w("vision_model.post_layernorm.bias"),
        )?;
        linear(&pooled, self.w("visual_projection.weight"), None)
    }

    /// The projected, unnormalised text embedding of token ids [b, l] pooled at `eot`.
    fn text(&self, ids: &[u32], eot: &[u32], b: usize, l: usize) -> Result<Tensor> {
        let t = &self.spec.text;
        let width = t.width as usize;
        let dev = &Device::Cpu;
        let ids = Tensor::from_slice(ids, b * l, dev)?;
        let x = self
            .w("text_model.embeddings.token_embedding.weight")
            .index_select(&ids, 0)?
            .reshape((b, l, width))?;
        let positions = self
            .w("text_model.embeddings.position_embedding.weight")
            .narrow(0, 0, l)?;
        let mut x = x.broadcast_add(&positions)?;
        // Causal mask: a large negative above the diagonal, as in Hugging Face.
        let mask: Vec<f32> = (0..l * l)
            .map(|k| if k % l > k / l { f32::MIN } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (l, l), dev)?;
        for i in 0..t.layers as usize {
            x = self.layer(
                &x,
                &format!("text_model.encoder.layers.{i}"),
                t.heads as usize,
                Some(&mask),
            )?;
        }
        let x = layer_norm(
            &x,
            self.w("text_model.final_layer_norm.weight"),
            self.w("text_model.final_layer_norm.bias"),
        )?;
        let rows: Vec<u32> = (0..b).map(|i| (i * l) as u32 + eot[i]).collect();
        let pooled = x
            .reshape((b * l, width))?
            .index_select(&Tensor::from_vec(rows, b, dev)?, 0)?;
        linear(&pooled, self.w("text_projection.weight"), None)
    }
}

/// A model's outputs for the batch: unnormalised embeddings and σ = exp(logit_scale).
struct Clip {
    image: Tensor,
    text: Tensor,
    scale: Tensor,
}

fn input<'e>(ev: &'e Evaluation, name: &str) -> (&'e [usize], &'e [f32]) {
    let (_, shape, values) = ev
        .inputs
        .iter()
        .find(|i| i.0 == name)
        .unwrap_or_else(|| panic!("no input {name}"));
    (shape, values)
}

fn forward(model: &Model, ev: &Evaluation) -> Result<Clip> {
    let name = &model.spec.name;
    let (shape, pixels) = input(ev, &format!("pixels:{name}"));
    let pixels = Tensor::from_slice(pixels, shape, &Device::Cpu)?;
    let (shape, ids) = input(ev, &format!("ids:{name}"));
    let (b, l) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let eot: Vec<u32> = input(ev, &format!("eot:{name}"))
        .1
        .iter()
        .map(|&v| v as u32)
        .collect();
    Ok(Clip {
        image: model.image(&pixels)?,
        text: model.text(&ids, &eot, b, l)?,
        scale: model.w("logit_scale").exp()?,
    })
}

// ---------------------------------------------------------------------------------------------
// The losses of std/prelude.kd and std/clip_kd.kd.

/// σ·norm(v)·norm(s)ᵀ: a model's image-to-text logits.
fn logits(m: &Clip) -> Result<Tensor> {
    normalize(&m.image)?
        .matmul(&normalize(&m.text)?.t()?)?
        .broadcast_mul(&m.scale)
}

/// ½ [CE(L, I) + CE(Lᵀ, I)].
fn symmetric_ce(logits: &Tensor) -> Result<Tensor> {
    (cross_entropy_diagonal(logits)? + cross_entropy_diagonal(&logits.t()?)?)? / 2.0
}

/// Every term's unweighted value, in the order of `WEIGHTS`.
fn terms(s: &Clip, t: &Clip, loss: &HashMap<String, Tensor>) -> Result<Vec<Tensor>> {
    let p = |name: &str| &loss[&format!("loss/clip_kd.{name}")];
    // Task loss: the student's own InfoNCE.
    let clip = symmetric_ce(&logits(s)?)?;
    // CRD: KL(softmax(teacher) ‖ softmax(student)) both ways, teacher detached.
    let (ls, lt) = (logits(s)?, logits(t)?.detach());
    let crd = ((kl(&log_softmax(&lt)?, &log_softmax(&ls)?)?
        + kl(&log_softmax(&lt.t()?)?, &log_softmax(&ls.t()?)?)?)?
        / 2.0)?;
    // The student's raw embeddings mapped into the teacher's space: norm(W·x + b).
    let image_to = normalize(&linear(
        &s.image,
        p("w_image.weight"),
        Some(p("w_image.bias")),
    )?)?;
    let text_to = normalize(&linear(
        &s.text,
        p("w_text.weight"),
        Some(p("w_text.bias")),
    )?)?;
    let (t_image, t_text) = (normalize(&t.image)?.detach(), normalize(&t.text)?.detach());
    // FD: element-wise MSE of the mapped student embeddings to the teacher's.
    let fd = (mse(&image_to, &t_image)? + mse(&text_to, &t_text)?)?;
    // ICL: student anchors against the teacher's contrast set, κ used as is.
    let kappa = p("icl_scale");
    let icl_image = image_to.matmul(&t_text.t()?)?.broadcast_mul(kappa)?;
    let icl_text = text_to.matmul(&t_image.t()?)?.broadcast_mul(kappa)?;
    let icl = ((cross_entropy_diagonal(&icl_image)? + cross_entropy_diagonal(&icl_text)?)? / 2.0)?;
    Ok(vec![clip, crd, icl, fd])
}

// ---------------------------------------------------------------------------------------------

fn recipe() -> (kdc::ir::Recipe, kdc::manifest::Base) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("recipes/demo");
    let path = dir.join("clip_kd_small.kd");
    let text = std::fs::read_to_string(&path).unwrap();
    let compiled = kdc::compile(path.to_str().unwrap(), &text, &kdc::FsLoader);
    let base = compiled.base();
    (compiled.recipe.expect("the small recipe checks"), base)
}

#[test]
fn a_clip_kd_step_matches_candle_autograd() -> Result<()> {
    let started = Instant::now();
    let (recipe, base) = recipe();
    let mut trainer = Trainer::new(
        &recipe,
        0,
        &Options {
            steps: None,
            base,
            log: None,
            random_missing_weights: false,
            ..Default::default()
        },
    )
    .unwrap();
    let ev = trainer.evaluate(0).unwrap();
    let engine_seconds = started.elapsed().as_secs_f64();

    let spec = |name: &str| recipe.models.iter().find(|m| m.name == name).unwrap();
    let (student, teacher) = (spec("student"), spec("teacher"));
    for m in [student, teacher] {
        assert_eq!(m.vision.act, Activation::QuickGelu);
        assert_eq!(m.text.act, Activation::QuickGelu);
    }

    // Every parameter from the engine: a Var for the student's and the loss's, a plain tensor
    // for the frozen teacher's.
    let dev = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut vars: Vec<(String, Var)> = Vec::new();
    for (name, shape, values) in &ev.params {
        if name.starts_with("teacher/") {
            tensors.insert(
                name.clone(),
                Tensor::from_slice(values, shape.as_slice(), &dev)?,
            );
        } else {
            assert!(
                name.starts_with("student/") || LOSS_PARAMS.contains(&name.as_str()),
                "unexpected parameter {name}"
            );
            let var = Var::from_slice(values, shape.as_slice(), &dev)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name.clone(), var));
        }
    }
    for name in LOSS_PARAMS {
        assert!(tensors.contains_key(name), "the engine has no {name}");
    }
    assert!(tensors.contains_key("student/logit_scale"));

    let s = forward(
        &Model {
            spec: student,
            params: &tensors,
        },
        &ev,
    )?;
    let t = forward(
        &Model {
            spec: teacher,
            params: &tensors,
        },
        &ev,
    )?;
    let terms = terms(&s, &t, &tensors)?;
    let mut total = terms[0].affine(WEIGHTS[0].1, 0.0)?;
    for (term, (_, w)) in terms.iter().zip(WEIGHTS).skip(1) {
        total = (total + term.affine(w, 0.0)?)?;
    }
    let grads = total.backward()?;

    // Loss and terms.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    let candle_loss = total.to_scalar::<f32>()? as f64;
    println!("loss: kdc {:.7}, candle {candle_loss:.7}", ev.loss);
    assert!(
        close(ev.loss, candle_loss),
        "loss: kdc {} candle {candle_loss}",
        ev.loss
    );
    assert_eq!(ev.terms.len(), WEIGHTS.len(), "terms {:?}", ev.terms);
    for ((label, value), (term, (short, _))) in ev.terms.iter().zip(terms.iter().zip(WEIGHTS)) {
        assert!(
            label.contains(short),
            "term `{label}` where `{short}` was expected"
        );
        let c = term.to_scalar::<f32>()? as f64;
        println!("term {label}: kdc {value:.7}, candle {c:.7}");
        assert!(close(*value, c), "term {label}: kdc {value} candle {c}");
    }

    // Which parameters get gradients: exactly the student's and the loss's.
    let engine_names: BTreeSet<&str> = ev.grads.iter().map(|g| g.0.as_str()).collect();
    let built: BTreeSet<&str> = vars.iter().map(|v| v.0.as_str()).collect();
    assert_eq!(
        engine_names, built,
        "gradients of kdc vs trainable parameters built here"
    );
    assert!(engine_names.iter().all(|n| !n.starts_with("teacher/")));
    let student_count = ev
        .params
        .iter()
        .filter(|p| p.0.starts_with("student/"))
        .count();
    assert_eq!(built.len(), student_count + LOSS_PARAMS.len());

    // Every gradient.
    let by_name: HashMap<&str, &Var> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut worst_abs = (0.0f32, String::new());
    let mut worst_rel = (0.0f32, String::new());
    let mut failures = Vec::new();
    for (name, got) in &ev.grads {
        let var = by_name[name.as_str()];
        let expected = grads
            .get(var)
            .unwrap_or_else(|| panic!("candle has no gradient for {name}"));
        assert_eq!(expected.dims(), var.dims(), "{name}");
        let expected: Vec<f32> = expected.flatten_all()?.to_vec1()?;
        assert_eq!(got.len(), expected.len(), "{name}");
        let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let diff = got
            .iter()
            .zip(&expected)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let rel = diff / scale.max(f32::MIN_POSITIVE);
        if diff > worst_abs.0 {
            worst_abs = (diff, name.clone());
        }
        if rel > worst_rel.0 && !name.ends_with("k_proj.bias") {
            worst_rel = (rel, name.clone());
        }
        if name.ends_with("k_proj.bias") {
            // A key bias adds the same q·b to a whole row of attention scores, which softmax
            // ignores: its exact gradient is zero, and both sides must be zero up to rounding
            // next to the same layer's key weights.
            let weights = name.replace("k_proj.bias", "k_proj.weight");
            let (_, w) = ev.grads.iter().find(|g| g.0 == weights).unwrap();
            let w_scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let got_scale = got.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            if !(got_scale <= 1e-6 * w_scale && scale <= 1e-6 * w_scale) {
                failures.push(format!(
                    "{name}: should be zero; kdc {got_scale:.3e}, candle {scale:.3e}, key weights {w_scale:.3e}"
                ));
            }
            continue;
        }
        // Relative to the tensor's own largest entry, with no absolute floor.
        if !(diff <= 1e-5 * scale) {
            failures.push(format!(
                "{name}: max |diff| {diff:.3e}, max |g| {scale:.3e}, relative {rel:.3e}"
            ));
        }
    }
    println!(
        "{} gradients; worst |diff| {:.3e} ({}), worst relative {:.3e} ({}); {:.2}s (engine {:.2}s)",
        ev.grads.len(),
        worst_abs.0,
        worst_abs.1,
        worst_rel.0,
        worst_rel.1,
        started.elapsed().as_secs_f64(),
        engine_seconds,
    );
    assert!(
        failures.is_empty(),
        "gradients differ:\n{}",
        failures.join("\n")
    );
    Ok(())
}
