//! Lowering a checked stage to one engine graph per training step: the forward passes of the
//! models the loss reads (frozen ones without gradients), every loss term, their weighted sum,
//! and the backward pass.

use super::autodiff;
use super::clip::{self, ModelParams, TextInputs};
use super::graph::{Binary, Graph, Id, Op, Reduce, Unary};
use crate::ir::{self, Recipe, Schedule, Tap};
use crate::model::{Part, TextKind};
use std::collections::HashMap;

/// A lowered training step.
pub struct Step {
    pub graph: Graph,
    /// The total loss.
    pub loss: Id,
    /// Each term's unweighted value, with its label and weight schedule.
    pub terms: Vec<(String, Schedule, Id)>,
    /// The scalar inputs holding each term's weight at the current step: `weight:<label>`.
    pub weight_inputs: Vec<String>,
    /// (parameter index, gradient node) for every trainable parameter the loss reaches.
    pub grads: Vec<(usize, Id)>,
    /// Parameter index ranges per model, and the loss's own parameters.
    pub model_params: Vec<(ir::ModelId, HashMap<String, usize>)>,
    pub loss_params: Vec<(usize, usize)>,
    /// Per-step inputs the runner must provide: name → shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    pub batch: usize,
    /// Nodes before this index are the forward pass; the backward pass follows.
    pub forward_len: usize,
}

/// Names of a model's per-step inputs.
pub fn pixels_input(model: &str) -> String {
    format!("pixels:{model}")
}
pub fn ids_input(model: &str) -> String {
    format!("ids:{model}")
}
pub fn eot_input(model: &str) -> String {
    format!("eot:{model}")
}
pub fn mask_input(model: &str) -> String {
    format!("mask:{model}")
}
pub fn keep_input(model: &str, ratio: f64) -> String {
    format!("keep:{model}:{ratio}")
}

struct Lowering<'r> {
    recipe: &'r Recipe,
    stage: &'r ir::Stage,
    g: Graph,
    batch: usize,
    params: HashMap<ir::ModelId, ModelParams>,
    vision_cache: HashMap<(ir::ModelId, Option<u64>), clip::VisionOut>,
    text_cache: HashMap<ir::ModelId, clip::TextOut>,
    inputs: Vec<(String, Vec<usize>)>,
    input_ids: HashMap<String, Id>,
    /// Taps replaced by trainable parameters named `tap:<model>.<tap>` (for testing the loss
    /// library on given features), with the parameters made so far.
    tap_params: Vec<String>,
    tap_nodes: HashMap<String, Id>,
}

impl Lowering<'_> {
    fn input(&mut self, name: String, shape: Vec<usize>) -> Id {
        if let Some(&id) = self.input_ids.get(&name) {
            return id;
        }
        let id = self.g.input(&name, shape.clone());
        self.inputs.push((name.clone(), shape));
        self.input_ids.insert(name, id);
        id
    }

    fn model_params(&mut self, model: ir::ModelId) -> &ModelParams {
        if !self.params.contains_key(&model) {
            let spec = &self.recipe.models[model];
            let stage = self.stage;
            let p = ModelParams::new(&mut self.g, spec, |part: Part| {
                stage.trainable.contains(&(model, part))
            });
            self.params.insert(model, p);
        }
        &self.params[&model]
    }

    fn vision(&mut self, model: ir::ModelId, mask: Option<f64>) -> &clip::VisionOut {
        let key = (model, mask.map(f64::to_bits));
        if !self.vision_cache.contains_key(&key) {
            let spec = self.recipe.models[model].clone();
            let size = spec.vision.image_size as usize;
            let pixels = self.input(pixels_input(&spec.name), vec![self.batch, 3, size, size]);
            let keep = mask.map(|ratio| {
                let kept = crate::check::kept_patches(spec.vision.patches(), ratio) as usize;
                self.input(keep_input(&spec.name, ratio), vec![self.batch, kept])
            });
            self.model_params(model);
            let p = &self.params[&model];
            let out = clip::vision(&mut self.g, &spec, p, pixels, keep);
            self.vision_cache.insert(key, out);
        }
        &self.vision_cache[&key]
    }

    fn text(&mut self, model: ir::ModelId) -> &clip::TextOut {
        if !self.text_cache.contains_key(&model) {
            let spec = self.recipe.models[model].clone();
            let l = spec.tokenizer.context as usize;
            let ids = self.input(ids_input(&spec.name), vec![self.batch, l]);
            let inputs = match spec.text.kind {
                TextKind::Clip => TextInputs {
                    ids,
                    eot: Some(self.input(eot_input(&spec.name), vec![self.batch, 1])),
                    mask: None,
                },
                TextKind::Bert => TextInputs {
                    ids,
                    eot: None,
                    mask: Some(self.input(mask_input(&spec.name), vec![self.batch, l])),
                },
            };
            self.model_params(model);
            let p = &self.params[&model];
            let out = clip::text(&mut self.g, &spec, p, &inputs);
            self.text_cache.insert(model, out);
        }
        &self.text_cache[&model]
    }

    fn tap(&mut self, model: ir::ModelId, tap: Tap, mask: Option<f64>) -> Id {
        let name = format!("{}.{}", self.recipe.models[model].name, tap_name(tap));
        if self.tap_params.contains(&name) {
            if let Some(&id) = self.tap_nodes.get(&name) {
                return id;
            }
            let spec = &self.recipe.models[model];
            let shape = match tap {
                Tap::Image | Tap::Text => vec![self.batch, spec.embed as usize],
                Tap::Scale => vec![],
                _ => panic!("only embeddings and scales can be given directly"),
            };
            let id = self.g.param(format!("tap:{name}"), shape, true);
            self.tap_nodes.insert(name, id);
            return id;
        }
        match tap {
            Tap::Image => self.vision(model, mask).embed,
            Tap::Text => self.text(model).embed,
            Tap::Scale => {
                self.model_params(model);
                let p = &self.params[&model];
                clip::logit_scale(&mut self.g, p)
            }
            Tap::Patches => {
                let last = *self.vision(model, mask).hidden.last().unwrap();
                let tokens = self.g.shape(last)[1];
                self.g.slice(last, 1, 1, tokens - 1)
            }
            Tap::ImageLayer(k) => self.vision(model, mask).hidden[k as usize],
            Tap::TextLayer(k) => self.text(model).hidden[k as usize],
        }
    }

    fn concrete(&self, shape: &crate::shape::Shape) -> Vec<usize> {
        shape
            .0
            .iter()
            .map(|d| d.size.map(|s| s as usize).unwrap_or(self.batch))
            .collect()
    }
}

fn tap_name(tap: Tap) -> String {
    match tap {
        Tap::Image => "image".into(),
        Tap::Text => "text".into(),
        Tap::Scale => "scale".into(),
        Tap::Patches => "patches".into(),
        Tap::ImageLayer(k) => format!("image_layer({k})"),
        Tap::TextLayer(k) => format!("text_layer({k})"),
    }
}

/// Lowers stage `stage_index` of `recipe` for batches of `batch`.
pub fn lower(recipe: &Recipe, stage_index: usize, batch: usize) -> Step {
    lower_with(recipe, stage_index, batch, &[])
}

/// Like `lower`, with the taps named in `tap_params` (`student.image`, `teacher.scale`)
/// replaced by trainable parameters `tap:<name>`, so a loss can be evaluated and
/// differentiated on given features.
pub fn lower_with(
    recipe: &Recipe,
    stage_index: usize,
    batch: usize,
    tap_params: &[String],
) -> Step {
    let stage = &recipe.stages[stage_index];
    let mut l = Lowering {
        recipe,
        stage,
        g: Graph::default(),
        batch,
        params: HashMap::new(),
        vision_cache: HashMap::new(),
        text_cache: HashMap::new(),
        inputs: Vec::new(),
        input_ids: HashMap::new(),
        tap_params: tap_params.to_vec(),
        tap_nodes: HashMap::new(),
    };
    // The loss's own parameters first, so their indices are stable.
    let mut loss_params = Vec::new();
    for (i, p) in stage.params.iter().enumerate() {
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        let id = l.g.param(format!("loss/{}", p.name), shape, true);
        let Op::Param(index) = l.g.nodes[id].op else {
            unreachable!()
        };
        loss_params.push((i, index));
    }
    let param_nodes: Vec<Id> = (0..stage.params.len())
        .map(|i| {
            l.g.nodes
                .iter()
                .position(|n| n.op == Op::Param(loss_params[i].1))
                .unwrap()
        })
        .collect();

    let mut map: Vec<Id> = Vec::with_capacity(stage.graph.nodes.len());
    for node in &stage.graph.nodes {
        let input = |i: usize| map[node.inputs[i]];
        let shape = l.concrete(&node.shape);
        let id = match &node.op {
            ir::Op::Tap { model, tap, mask } => l.tap(*model, *tap, *mask),
            ir::Op::Param(p) => param_nodes[*p],
            ir::Op::Const(v) => l.g.scalar(*v as f32),
            ir::Op::Scheduled(_) => l.g.add(
                Op::Scalar(format!("schedule:{}", map.len())),
                vec![],
                vec![],
            ),
            ir::Op::Size { axis } => {
                let size = l.g.shape(input(0))[*axis];
                l.g.scalar(size as f32)
            }
            ir::Op::Eye => l.g.add(Op::Eye, vec![], shape),
            ir::Op::Add => l.g.binary(Binary::Add, input(0), input(1)),
            ir::Op::Sub => l.g.binary(Binary::Sub, input(0), input(1)),
            ir::Op::Mul => l.g.binary(Binary::Mul, input(0), input(1)),
            ir::Op::Div => l.g.binary(Binary::Div, input(0), input(1)),
            ir::Op::Neg => l.g.unary(Unary::Neg, input(0)),
            ir::Op::Exp => l.g.unary(Unary::Exp, input(0)),
            ir::Op::Log => l.g.unary(Unary::Log, input(0)),
            ir::Op::Sqrt => l.g.unary(Unary::Sqrt, input(0)),
            ir::Op::Abs => l.g.unary(Unary::Abs, input(0)),
            ir::Op::MatMul => l.g.matmul(input(0), input(1)),
            ir::Op::Transpose => l.g.transpose(input(0)),
            ir::Op::Softmax { axis } => l.g.softmax(input(0), *axis),
            ir::Op::LogSoftmax { axis } => l.g.log_softmax(input(0), *axis),
            ir::Op::Normalize { axis } => l.g.normalize(input(0), *axis),
            ir::Op::Mean { axis } => l.g.reduce(Reduce::Mean, input(0), *axis),
            ir::Op::Sum { axis } => l.g.reduce(Reduce::Sum, input(0), *axis),
            ir::Op::Var { axis } => l.g.reduce(Reduce::Var, input(0), *axis),
            ir::Op::Mse => l.g.loss(Op::Mse, vec![input(0), input(1)]),
            ir::Op::L1 => l.g.loss(Op::L1, vec![input(0), input(1)]),
            ir::Op::SmoothL1 { beta } => l.g.loss(
                Op::SmoothL1 { beta: *beta as f32 },
                vec![input(0), input(1)],
            ),
            ir::Op::Kl => l.g.loss(Op::Kl, vec![input(0), input(1)]),
            ir::Op::CrossEntropyDiagonal => l.g.loss(Op::CrossEntropyDiagonal, vec![input(0)]),
            ir::Op::CrossEntropySoft => l.g.loss(Op::CrossEntropySoft, vec![input(0), input(1)]),
            ir::Op::Concat { axis } => l.g.concat(input(0), input(1), *axis),
            ir::Op::Attention { heads } => {
                attention(&mut l.g, input(0), input(1), input(2), *heads as usize)
            }
            ir::Op::Detach => {
                let s = l.g.shape(input(0)).to_vec();
                l.g.add(Op::Detach, vec![input(0)], s)
            }
        };
        map.push(id);
    }
    // Scheduled scalars are named by their IR node, so the runner can evaluate them.
    let mut terms = Vec::new();
    let mut weight_inputs = Vec::new();
    let mut total: Option<Id> = None;
    for term in &stage.terms {
        let value = map[term.node];
        let name = format!("weight:{}", term.label);
        let w = l.g.add(Op::Scalar(name.clone()), vec![], vec![]);
        weight_inputs.push(name);
        let weighted = l.g.mul(w, value);
        total = Some(match total {
            Some(t) => l.g.add2(t, weighted),
            None => weighted,
        });
        terms.push((term.label.clone(), term.weight.clone(), value));
    }
    let loss = total.expect("a checked stage has terms");
    let forward_len = l.g.nodes.len();
    let grads = autodiff::backward(&mut l.g, loss);
    let model_params = l
        .params
        .iter()
        .map(|(m, p)| {
            let by_name = p
                .by_name
                .iter()
                .map(|(name, &id)| {
                    let Op::Param(index) = l.g.nodes[id].op else {
                        unreachable!()
                    };
                    (name.clone(), index)
                })
                .collect();
            (*m, by_name)
        })
        .collect();
    Step {
        graph: l.g,
        loss,
        terms,
        weight_inputs,
        grads,
        model_params,
        loss_params,
        inputs: l.inputs,
        batch,
        forward_len,
    }
}

/// Multi-head attention of q [m, c] over k [n, c], v [n, c'] (or with a leading batch axis).
fn attention(g: &mut Graph, q: Id, k: Id, v: Id, heads: usize) -> Id {
    let (sq, sv) = (g.shape(q).to_vec(), g.shape(v).to_vec());
    let (m, c) = (sq[sq.len() - 2], sq[sq.len() - 1]);
    let n = g.shape(k)[g.shape(k).len() - 2];
    let cv = sv[sv.len() - 1];
    let (d, dv) = (c / heads, cv / heads);
    let split = |g: &mut Graph, x: Id, rows: usize, width: usize| {
        let r = g.reshape(x, vec![rows, heads, width]);
        g.permute(r, vec![1, 0, 2])
    };
    let qh = split(g, q, m, d);
    let kh = split(g, k, n, d);
    let vh = split(g, v, n, dv);
    let scores = g.matmul_t(qh, kh, false, true);
    let scores = g.scale(scores, (d as f32).powf(-0.5));
    let p = g.softmax(scores, 2);
    let o = g.matmul(p, vh);
    let o = g.permute(o, vec![1, 0, 2]);
    g.reshape(o, vec![m, cv])
}
