//! Lowering a checked stage to one engine graph per training step: the forward passes of the
//! models the loss reads (frozen ones without gradients), every loss term, their weighted sum,
//! and the backward pass.

use super::autodiff;
use super::clip::{self, ModelParams, TextInputs};
use super::graph::{Binary, Graph, Id, InputKind, Op, Reduce, Unary, F32};
use crate::ir::{self, Recipe, Schedule, Tap};
use crate::model::{Part, TextKind};
use std::collections::HashMap;

/// What a compiled graph computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A training step: every loss term, their weighted sum, and the gradient of that sum for
    /// every trainable parameter it reaches.
    Train,
    /// Only the forward pass of these taps (`student.image`, `teacher.text`), with every
    /// parameter frozen: no loss and no backward (evaluation, feature extraction).
    Forward(Vec<(ir::ModelId, Tap)>),
    /// The values of these nodes of the stage's IR graph, forward only (the expectations of
    /// `test` blocks: literal tensors and functions of them), each as `Output::Tensor("%i")`.
    Values(Vec<ir::NodeId>),
}

/// A value a compiled graph produces, addressed by name rather than by position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// The total weighted loss.
    Loss,
    /// One loss term, unweighted, by its label (`crd`, `fd#2`).
    Term(String),
    /// The gradient of the total loss for a parameter, by its name
    /// (`student/vision_model.…`, `loss/clip_kd.icl_scale`).
    Grad(String),
    /// A tap of a model, by `model.tap` (`student.image`, `teacher.text_layer(3)`).
    Tensor(String),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Loss => write!(f, "loss"),
            Output::Term(t) => write!(f, "term {t}"),
            Output::Grad(p) => write!(f, "gradient of {p}"),
            Output::Tensor(t) => write!(f, "{t}"),
        }
    }
}

/// A lowered graph, before the passes.
pub struct Lowered {
    pub graph: Graph,
    /// Every value the caller reads, by name.
    pub outputs: Vec<(Output, Id)>,
    /// Each loss term's label and weight schedule, in order (empty for a forward graph).
    pub terms: Vec<(String, Schedule)>,
    /// Per model: its parameters' names and indices into `graph.params`.
    pub model_params: Vec<(ir::ModelId, HashMap<String, usize>)>,
    /// The loss's own parameters: (index in the stage's `params`, index in `graph.params`).
    pub loss_params: Vec<(usize, usize)>,
    pub batch: usize,
    /// Nodes before this index are the forward pass; the backward pass follows.
    pub forward_len: usize,
}

/// The name of a model's tap, as in a recipe (`image`, `image_layer(3)`).
pub fn tap_name(tap: Tap) -> String {
    match tap {
        Tap::Image => "image".into(),
        Tap::Text => "text".into(),
        Tap::Scale => "scale".into(),
        Tap::Patches => "patches".into(),
        Tap::ImageLayer(k) => format!("image_layer({k})"),
        Tap::TextLayer(k) => format!("text_layer({k})"),
        Tap::ImageAttention(k) => format!("image_attention({k})"),
        Tap::TextAttention(k) => format!("text_attention({k})"),
        Tap::TextMask => "text_mask".into(),
        Tap::Projection {
            image,
            which,
            block,
        } => format!(
            "{}_{}({block})",
            if image { "image" } else { "text" },
            which.name()
        ),
    }
}

struct Lowering<'r> {
    recipe: &'r Recipe,
    stage: &'r ir::Stage,
    g: Graph,
    batch: usize,
    params: HashMap<ir::ModelId, ModelParams>,
    /// Vision passes by model and mask (ratio bits, shared name).
    vision_cache: HashMap<(ir::ModelId, Option<(u64, Option<String>)>), clip::VisionOut>,
    text_cache: HashMap<ir::ModelId, clip::TextOut>,
    /// Whether model parameters may be trainable (a training graph).
    training: bool,
    /// Taps replaced by trainable parameters named `tap:<model>.<tap>` (for testing the loss
    /// library on given features), with the parameters made so far.
    tap_params: Vec<String>,
    tap_nodes: HashMap<String, Id>,
    /// Where the forward pass ends (set when the backward pass is appended).
    forward_len: usize,
}

impl Lowering<'_> {
    fn model_params(&mut self, model: ir::ModelId) -> &ModelParams {
        if !self.params.contains_key(&model) {
            let spec = &self.recipe.models[model];
            let stage = self.stage;
            let training = self.training;
            let p = ModelParams::new(&mut self.g, spec, |part: Part, name: &str| {
                training
                    && stage.trainable.contains(&(model, part))
                    && !stage.frozen_names.iter().any(|f| f == name)
            });
            self.params.insert(model, p);
        }
        &self.params[&model]
    }

    fn vision(&mut self, model: ir::ModelId, mask: Option<ir::Mask>) -> &clip::VisionOut {
        let key = (
            model,
            mask.as_ref().map(|m| (m.ratio.to_bits(), m.shared.clone())),
        );
        if !self.vision_cache.contains_key(&key) {
            let spec = self.recipe.models[model].clone();
            let size = spec.vision.image_size as usize;
            let model_name = spec.name.clone();
            let pixels = self.g.input(
                InputKind::Pixels {
                    model: model_name.clone(),
                },
                vec![self.batch, 3, size, size],
            );
            let keep = mask.map(|m| {
                let patches = spec.vision.patches();
                let kept = crate::check::kept_patches(patches, m.ratio) as usize;
                // A shared mask is one input, whichever model reads it.
                let source = match m.shared {
                    Some(name) => format!("shared {name}"),
                    None => model_name.clone(),
                };
                self.g.input(
                    InputKind::Keep {
                        source,
                        patches: patches as usize,
                        ratio: m.ratio,
                    },
                    vec![self.batch, kept],
                )
            });
            self.model_params(model);
            let p = &self.params[&model];
            let out = clip::vision(&mut self.g, &spec, p, pixels, keep);
            self.vision_cache.insert(key.clone(), out);
        }
        &self.vision_cache[&key]
    }

    fn text(&mut self, model: ir::ModelId) -> &clip::TextOut {
        if !self.text_cache.contains_key(&model) {
            let spec = self.recipe.models[model].clone();
            let l = spec.tokenizer.context as usize;
            let name = spec.name.clone();
            let ids = self.g.input(
                InputKind::Ids {
                    model: name.clone(),
                },
                vec![self.batch, l],
            );
            let inputs = match spec.text.kind {
                TextKind::Clip => TextInputs {
                    ids,
                    eot: Some(
                        self.g
                            .input(InputKind::Eot { model: name }, vec![self.batch, 1]),
                    ),
                    mask: None,
                },
                TextKind::Bert | TextKind::Roberta => TextInputs {
                    ids,
                    eot: None,
                    mask: Some(
                        self.g
                            .input(InputKind::Mask { model: name }, vec![self.batch, l]),
                    ),
                },
            };
            self.model_params(model);
            let p = &self.params[&model];
            let out = clip::text(&mut self.g, &spec, p, &inputs);
            self.text_cache.insert(model, out);
        }
        &self.text_cache[&model]
    }

    /// A model's tap; `shape` is the tap's concrete shape, for a tap given directly.
    fn tap(
        &mut self,
        model: ir::ModelId,
        tap: Tap,
        mask: Option<ir::Mask>,
        shape: Vec<usize>,
    ) -> Id {
        let name = format!("{}.{}", self.recipe.models[model].name, tap_name(tap));
        if self.tap_params.contains(&name) {
            if let Some(&id) = self.tap_nodes.get(&name) {
                return id;
            }
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
            Tap::ImageAttention(k) => self.vision(model, mask).attention[k as usize - 1].probs,
            Tap::TextAttention(k) => self.text(model).attention[k as usize - 1].probs,
            Tap::Projection {
                image,
                which,
                block,
            } => {
                let a = if image {
                    self.vision(model, mask).attention[block as usize - 1]
                } else {
                    self.text(model).attention[block as usize - 1]
                };
                match which {
                    ir::Qkv::Query => a.query,
                    ir::Qkv::Key => a.key,
                    ir::Qkv::Value => a.value,
                }
            }
            Tap::TextMask => {
                let spec = &self.recipe.models[model];
                let context = spec.text.context as usize;
                let name = spec.name.clone();
                self.g
                    .input(InputKind::Mask { model: name }, vec![self.batch, context])
            }
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

/// Lowers stage `stage_index` of `recipe` for batches of `batch`. The taps named in
/// `tap_params` (`student.image`, `teacher.scale`) are replaced by trainable parameters
/// `tap:<name>`, so that a loss can be evaluated and differentiated on given features.
pub fn lower(
    recipe: &Recipe,
    stage_index: usize,
    batch: usize,
    target: &Target,
    tap_params: &[String],
) -> Lowered {
    let stage = &recipe.stages[stage_index];
    let mut l = Lowering {
        recipe,
        stage,
        g: Graph::default(),
        batch,
        params: HashMap::new(),
        vision_cache: HashMap::new(),
        text_cache: HashMap::new(),
        training: *target == Target::Train,
        tap_params: tap_params.to_vec(),
        tap_nodes: HashMap::new(),
        forward_len: 0,
    };
    let (outputs, terms, loss_params) = match target {
        Target::Train => {
            let (outputs, terms, loss_params) = l.training_step();
            (outputs, terms, loss_params)
        }
        Target::Values(nodes) => {
            let map = l.lower_graph(&[]);
            let outputs = nodes
                .iter()
                .map(|&n| (Output::Tensor(format!("%{n}")), map[n]))
                .collect();
            (outputs, Vec::new(), Vec::new())
        }
        Target::Forward(taps) => {
            let outputs = taps
                .iter()
                .map(|&(model, tap)| {
                    let name = format!("{}.{}", recipe.models[model].name, tap_name(tap));
                    // A forward graph gives no tap directly, so no shape is needed.
                    (Output::Tensor(name), l.tap(model, tap, None, Vec::new()))
                })
                .collect();
            (outputs, Vec::new(), Vec::new())
        }
    };
    let forward_len = match target {
        Target::Train => l.forward_len,
        Target::Forward(_) | Target::Values(_) => l.g.nodes.len(),
    };
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
    Lowered {
        graph: l.g,
        outputs,
        terms,
        model_params,
        loss_params,
        batch,
        forward_len,
    }
}

type TrainingParts = (
    Vec<(Output, Id)>,
    Vec<(String, Schedule)>,
    Vec<(usize, usize)>,
);

impl Lowering<'_> {
    /// The loss terms, their weighted sum, and the backward pass.
    fn training_step(&mut self) -> TrainingParts {
        let stage = self.stage;
        // The loss's own parameters first, so their indices are stable.
        let mut loss_params = Vec::new();
        let mut param_nodes = Vec::new();
        for (i, p) in stage.params.iter().enumerate() {
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let name = format!("loss/{}", p.name);
            let trains = !stage.frozen_names.contains(&name);
            let id = self.g.param(name, shape, trains);
            let Op::Param(index) = self.g.nodes[id].op else {
                unreachable!()
            };
            loss_params.push((i, index));
            param_nodes.push(id);
        }

        let map = self.lower_graph(&param_nodes);
        // Each term's weight is an input set every step (a schedule may change it).
        let mut outputs = Vec::new();
        let mut terms = Vec::new();
        let mut total: Option<Id> = None;
        for term in &stage.terms {
            let value = map[term.node];
            let w = self.g.input(
                InputKind::Weight {
                    term: term.label.clone(),
                },
                vec![],
            );
            let weighted = self.g.mul(w, value);
            total = Some(match total {
                Some(t) => self.g.add2(t, weighted),
                None => weighted,
            });
            terms.push((term.label.clone(), term.weight.clone()));
            outputs.push((Output::Term(term.label.clone()), value));
        }
        let loss = total.expect("a checked stage has terms");
        outputs.insert(0, (Output::Loss, loss));
        self.forward_len = self.g.nodes.len();
        for (param, grad) in autodiff::backward(&mut self.g, loss) {
            outputs.push((Output::Grad(self.g.params[param].name.clone()), grad));
        }
        (outputs, terms, loss_params)
    }

    /// Every node of the stage's IR graph, in order: the engine node of each.
    fn lower_graph(&mut self, param_nodes: &[Id]) -> Vec<Id> {
        let stage = self.stage;
        let mut map: Vec<Id> = Vec::with_capacity(stage.graph.nodes.len());
        for node in &stage.graph.nodes {
            let id = self.lower_node(node, &map, param_nodes);
            map.push(id);
        }
        map
    }

    /// One IR node on concrete shapes; `map` holds the nodes lowered so far.
    fn lower_node(&mut self, node: &ir::Node, map: &[Id], param_nodes: &[Id]) -> Id {
        let input = |i: usize| map[node.inputs[i]];
        let shape = self.concrete(&node.shape);
        let l = self;
        match &node.op {
            ir::Op::Tap { model, tap, mask } => l.tap(*model, *tap, mask.clone(), shape),
            ir::Op::Param(p) => param_nodes[*p],
            ir::Op::Const(v) => l.g.scalar(*v as f32),
            ir::Op::Literal(values) => l.g.add(
                Op::Constant(values.iter().map(|&v| F32(v as f32)).collect()),
                vec![],
                shape,
            ),
            // Scheduled scalars are named by their IR node, so the runner can evaluate them.
            ir::Op::Scheduled(_) => l.g.input(InputKind::Schedule { node: map.len() }, vec![]),
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
            ir::Op::Normalize { axis, eps } => l.g.normalize_eps(input(0), *axis, *eps as f32),
            ir::Op::Relu => l.g.unary(Unary::Relu, input(0)),
            ir::Op::Sigmoid => l.g.unary(Unary::Sigmoid, input(0)),
            ir::Op::Tanh => l.g.unary(Unary::Tanh, input(0)),
            ir::Op::Maximum => l.g.binary(Binary::Max, input(0), input(1)),
            ir::Op::Minimum => l.g.binary(Binary::Min, input(0), input(1)),
            ir::Op::Compare(c) => {
                let f = match c {
                    ir::Cmp::Gt => Binary::Gt,
                    ir::Cmp::Ge => Binary::Ge,
                    ir::Cmp::Lt => Binary::Lt,
                    ir::Cmp::Le => Binary::Le,
                    ir::Cmp::Eq => Binary::Eq,
                    ir::Cmp::Ne => Binary::Ne,
                };
                l.g.binary(f, input(0), input(1))
            }
            ir::Op::Where => l.g.select(input(0), input(1), input(2)),
            ir::Op::Max { axis } => l.g.reduce(Reduce::Max, input(0), *axis),
            ir::Op::Min { axis } => l.g.reduce(Reduce::Min, input(0), *axis),
            ir::Op::Arg { largest, axis } => l.g.arg(input(0), *largest, *axis),
            ir::Op::Reshape => l.g.reshape(input(0), shape),
            ir::Op::TopK { k, axis } => l.g.add(
                Op::TopK {
                    k: *k as usize,
                    axis: *axis,
                },
                vec![input(0)],
                shape,
            ),
            ir::Op::Permute(perm) => l.g.permute(input(0), perm.clone()),
            ir::Op::Slice { axis, start, len } => {
                l.g.slice(input(0), *axis, *start as usize, *len as usize)
            }
            ir::Op::Mean { axis } => l.g.reduce(Reduce::Mean, input(0), *axis),
            ir::Op::Sum { axis } => l.g.reduce(Reduce::Sum, input(0), *axis),
            ir::Op::Var { axis } => l.g.reduce(Reduce::Var, input(0), *axis),
            ir::Op::Loss(kind) => {
                let inputs = (0..kind.arity()).map(input).collect();
                l.g.loss(*kind, inputs)
            }
            ir::Op::Concat { axis } => l.g.concat(input(0), input(1), *axis),
            ir::Op::Attention { heads } => {
                attention(&mut l.g, input(0), input(1), input(2), *heads as usize)
            }
            ir::Op::Detach => {
                let s = l.g.shape(input(0)).to_vec();
                l.g.add(Op::Detach, vec![input(0)], s)
            }
        }
    }
}

/// Multi-head attention of q [.., m, c] over k [.., n, c], v [.., n, c'], with any leading
/// axes (equal on the three): they are flattened into one batch axis and restored.
fn attention(g: &mut Graph, q: Id, k: Id, v: Id, heads: usize) -> Id {
    let (sq, sv) = (g.shape(q).to_vec(), g.shape(v).to_vec());
    let r = sq.len();
    let (m, c) = (sq[r - 2], sq[r - 1]);
    let n = g.shape(k)[r - 2];
    let cv = sv[r - 1];
    let (d, dv) = (c / heads, cv / heads);
    let batch: usize = sq[..r - 2].iter().product();
    let split = |g: &mut Graph, x: Id, rows: usize, width: usize| {
        let r = g.reshape(x, vec![batch, rows, heads, width]);
        g.permute(r, vec![0, 2, 1, 3])
    };
    let qh = split(g, q, m, d);
    let kh = split(g, k, n, d);
    let vh = split(g, v, n, dv);
    let scores = g.matmul_t(qh, kh, false, true);
    let scores = g.scale(scores, (d as f32).powf(-0.5));
    let p = g.softmax(scores, 3);
    let o = g.matmul(p, vh);
    let o = g.permute(o, vec![0, 2, 1, 3]);
    let mut shape = sq[..r - 2].to_vec();
    shape.extend([m, cv]);
    g.reshape(o, shape)
}
