//! The engine's graph: a training step as operations on concrete shapes. Forward operations
//! come from the model towers and the recipe's loss; `autodiff` appends the backward
//! operations to the same graph, each backward step an operation of the same set (the
//! gradient of a matmul is two matmuls), so that every later pass and every backend sees one
//! kind of node.

use std::fmt;

pub use kdc_backend::op::{
    broadcast_shapes, numel, Binary, Dtype, LossKind, Op, Reduce, Unary, F32, NORMALIZE_EPS,
};

pub type Id = usize;

/// What a per-step input of the graph holds. The runner fills each before a run.
#[derive(Clone, Debug, PartialEq)]
pub enum InputKind {
    /// A model's images [b, 3, s, s], preprocessed.
    Pixels { model: String },
    /// A model's token ids [b, l] (exact integers).
    Ids { model: String },
    /// The end-of-text position of each caption [b, 1], where a CLIP text tower pools.
    Eot { model: String },
    /// 1 for each real token, 0 for padding [b, l] (BERT-family towers).
    Mask { model: String },
    /// The indices of the patches a masked view keeps [b, k] of `patches`, sorted, fresh every
    /// step; `source` is the model, or `shared NAME` for a mask several views share.
    Keep {
        source: String,
        patches: usize,
        ratio: f64,
    },
    /// A loss term's weight at the current step, [].
    Weight { term: String },
    /// A scheduled scalar of the loss at the current step, [] (by its node in the IR).
    Schedule { node: usize },
}

impl fmt::Display for InputKind {
    /// The input's name in explanations; also the seed of its synthetic stream.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputKind::Pixels { model } => write!(f, "pixels:{model}"),
            InputKind::Ids { model } => write!(f, "ids:{model}"),
            InputKind::Eot { model } => write!(f, "eot:{model}"),
            InputKind::Mask { model } => write!(f, "mask:{model}"),
            InputKind::Keep { source, ratio, .. } => write!(f, "keep:{source}:{ratio}"),
            InputKind::Weight { term } => write!(f, "weight:{term}"),
            InputKind::Schedule { node } => write!(f, "schedule:{node}"),
        }
    }
}

/// A per-step input: what it holds and its shape.
#[derive(Clone, Debug)]
pub struct Input {
    pub kind: InputKind,
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<Id>,
    pub shape: Vec<usize>,
    /// Whether a gradient flows into this node from a trainable parameter.
    pub grad: bool,
    /// For explanations: where the node came from (`student.vision.layer0.attn`).
    pub label: String,
    /// The value's type: f32 as built; the autocast pass types nodes bf16 under
    /// `precision(bf16)` (see [`Dtype`]).
    pub dtype: Dtype,
}

/// A parameter of the step: a model weight or a learnable part of the loss.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub params: Vec<Param>,
    /// The per-step inputs; `Op::Input(i)` reads `inputs[i]`.
    pub inputs: Vec<Input>,
    /// The scope prefixed to node labels.
    scope: Vec<String>,
}

impl Graph {
    pub fn push_scope(&mut self, scope: impl Into<String>) {
        self.scope.push(scope.into());
    }

    pub fn pop_scope(&mut self) {
        self.scope.pop();
    }

    /// Adds a node; its shape is given (the builders below compute it).
    pub fn add(&mut self, op: Op, inputs: Vec<Id>, shape: Vec<usize>) -> Id {
        let grad = match &op {
            Op::Param(p) => self.params[*p].trainable,
            Op::Detach
            | Op::Input(_)
            | Op::Fill(_)
            | Op::Constant(_)
            | Op::Eye
            | Op::CausalMask
            | Op::Arg { .. } => false,
            Op::Binary(f) if f.is_comparison() => false,
            _ => inputs.iter().any(|&i| self.nodes[i].grad),
        };
        self.nodes.push(Node {
            op,
            inputs,
            shape,
            grad,
            label: self.scope.join("."),
            dtype: Dtype::F32,
        });
        self.nodes.len() - 1
    }

    /// The shapes of a node's inputs, in order.
    pub fn input_shapes(&self, id: Id) -> Vec<Vec<usize>> {
        self.nodes[id]
            .inputs
            .iter()
            .map(|&n| self.nodes[n].shape.clone())
            .collect()
    }

    pub fn shape(&self, id: Id) -> &[usize] {
        &self.nodes[id].shape
    }

    pub fn param(&mut self, name: impl Into<String>, shape: Vec<usize>, trainable: bool) -> Id {
        self.params.push(Param {
            name: name.into(),
            shape: shape.clone(),
            trainable,
        });
        let index = self.params.len() - 1;
        self.add(Op::Param(index), vec![], shape)
    }

    /// The node of an input, added the first time it is asked for.
    pub fn input(&mut self, kind: InputKind, shape: Vec<usize>) -> Id {
        if let Some(i) = self.inputs.iter().position(|x| x.kind == kind) {
            let found = self.nodes.iter().position(|n| n.op == Op::Input(i));
            return found.expect("every input has its node");
        }
        self.inputs.push(Input {
            kind,
            shape: shape.clone(),
        });
        self.add(Op::Input(self.inputs.len() - 1), vec![], shape)
    }

    pub fn fill(&mut self, value: f32, shape: Vec<usize>) -> Id {
        self.add(Op::Fill(F32(value)), vec![], shape)
    }

    pub fn scalar(&mut self, value: f32) -> Id {
        self.fill(value, vec![])
    }

    pub fn unary(&mut self, f: Unary, x: Id) -> Id {
        let shape = self.shape(x).to_vec();
        self.add(Op::Unary(f), vec![x], shape)
    }

    pub fn binary(&mut self, f: Binary, a: Id, b: Id) -> Id {
        let shape = broadcast_shapes(self.shape(a), self.shape(b))
            .unwrap_or_else(|| panic!("{f:?} of {:?} and {:?}", self.shape(a), self.shape(b)));
        self.add(Op::Binary(f), vec![a, b], shape)
    }

    pub fn add2(&mut self, a: Id, b: Id) -> Id {
        self.binary(Binary::Add, a, b)
    }

    pub fn mul(&mut self, a: Id, b: Id) -> Id {
        self.binary(Binary::Mul, a, b)
    }

    pub fn scale(&mut self, x: Id, c: f32) -> Id {
        let c = self.scalar(c);
        self.mul(x, c)
    }

    /// a·b over the last two axes, with optional transposes.
    pub fn matmul_t(&mut self, a: Id, b: Id, ta: bool, tb: bool) -> Id {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        assert!(
            sa.len() >= 2 && sb.len() >= 2,
            "matmul of {sa:?} and {sb:?}"
        );
        let (m, k1) = if ta {
            (sa[sa.len() - 1], sa[sa.len() - 2])
        } else {
            (sa[sa.len() - 2], sa[sa.len() - 1])
        };
        let (k2, n) = if tb {
            (sb[sb.len() - 1], sb[sb.len() - 2])
        } else {
            (sb[sb.len() - 2], sb[sb.len() - 1])
        };
        assert_eq!(
            k1,
            k2,
            "matmul inner dimensions of {sa:?}{} and {sb:?}{}",
            if ta { "ᵀ" } else { "" },
            if tb { "ᵀ" } else { "" }
        );
        let lead_a = &sa[..sa.len() - 2];
        let lead_b = &sb[..sb.len() - 2];
        let lead = if lead_a.is_empty() {
            lead_b.to_vec()
        } else if lead_b.is_empty() || lead_a == lead_b {
            lead_a.to_vec()
        } else {
            panic!("matmul batch dimensions {lead_a:?} and {lead_b:?}")
        };
        let mut shape = lead;
        shape.push(m);
        shape.push(n);
        self.add(Op::MatMul { ta, tb }, vec![a, b], shape)
    }

    pub fn matmul(&mut self, a: Id, b: Id) -> Id {
        self.matmul_t(a, b, false, false)
    }

    pub fn permute(&mut self, x: Id, perm: Vec<usize>) -> Id {
        let s = self.shape(x);
        let shape = perm.iter().map(|&p| s[p]).collect();
        self.add(Op::Permute(perm), vec![x], shape)
    }

    /// Swaps the last two axes.
    pub fn transpose(&mut self, x: Id) -> Id {
        let r = self.shape(x).len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        self.permute(x, perm)
    }

    pub fn reshape(&mut self, x: Id, shape: Vec<usize>) -> Id {
        assert_eq!(
            numel(self.shape(x)),
            numel(&shape),
            "reshape {:?} to {shape:?}",
            self.shape(x)
        );
        self.add(Op::Reshape, vec![x], shape)
    }

    pub fn broadcast(&mut self, x: Id, shape: Vec<usize>) -> Id {
        if self.shape(x) == shape.as_slice() {
            return x;
        }
        self.add(Op::Broadcast, vec![x], shape)
    }

    pub fn sum_to(&mut self, x: Id, shape: Vec<usize>) -> Id {
        if self.shape(x) == shape.as_slice() {
            return x;
        }
        self.add(Op::SumTo, vec![x], shape)
    }

    pub fn reduce(&mut self, kind: Reduce, x: Id, axis: Option<usize>) -> Id {
        let shape = match axis {
            Some(a) => {
                let mut s = self.shape(x).to_vec();
                s.remove(a);
                s
            }
            None => vec![],
        };
        self.add(Op::Reduce { kind, axis }, vec![x], shape)
    }

    pub fn softmax(&mut self, x: Id, axis: usize) -> Id {
        let shape = self.shape(x).to_vec();
        self.add(Op::Softmax { axis }, vec![x], shape)
    }

    pub fn log_softmax(&mut self, x: Id, axis: usize) -> Id {
        let shape = self.shape(x).to_vec();
        self.add(Op::LogSoftmax { axis }, vec![x], shape)
    }

    pub fn normalize(&mut self, x: Id, axis: usize) -> Id {
        self.normalize_eps(x, axis, NORMALIZE_EPS)
    }

    /// x / max(‖x‖₂, eps) along `axis`.
    pub fn normalize_eps(&mut self, x: Id, axis: usize, eps: f32) -> Id {
        let shape = self.shape(x).to_vec();
        self.add(
            Op::Normalize {
                axis,
                eps: F32(eps),
            },
            vec![x],
            shape,
        )
    }

    /// c ? a : b elementwise, with NumPy broadcasting of the three.
    pub fn select(&mut self, c: Id, a: Id, b: Id) -> Id {
        let shape = [c, a, b].iter().fold(vec![], |s, &x| {
            broadcast_shapes(&s, self.shape(x))
                .unwrap_or_else(|| panic!("where of {s:?} and {:?}", self.shape(x)))
        });
        let [c, a, b] = [c, a, b].map(|x| {
            if self.shape(x) == shape.as_slice() {
                x
            } else {
                self.broadcast(x, shape.clone())
            }
        });
        self.add(Op::Where, vec![c, a, b], shape)
    }

    /// The position of the largest (smallest) value along `axis`, or over everything.
    pub fn arg(&mut self, x: Id, largest: bool, axis: Option<usize>) -> Id {
        let shape = match axis {
            Some(a) => {
                let mut s = self.shape(x).to_vec();
                s.remove(a);
                s
            }
            None => vec![],
        };
        self.add(Op::Arg { largest, axis }, vec![x], shape)
    }

    pub fn layer_norm(&mut self, x: Id, gain: Id, bias: Id, eps: f32) -> Id {
        let shape = self.shape(x).to_vec();
        self.add(Op::LayerNorm { eps: F32(eps) }, vec![x, gain, bias], shape)
    }

    pub fn embedding(&mut self, table: Id, ids: Id) -> Id {
        let mut shape = self.shape(ids).to_vec();
        shape.push(self.shape(table)[1]);
        self.add(Op::Embedding, vec![table, ids], shape)
    }

    pub fn gather_rows(&mut self, x: Id, index: Id) -> Id {
        let (sx, si) = (self.shape(x), self.shape(index));
        let shape = vec![sx[0], si[1], sx[2]];
        self.add(Op::GatherRows, vec![x, index], shape)
    }

    pub fn concat(&mut self, a: Id, b: Id, axis: usize) -> Id {
        let mut shape = self.shape(a).to_vec();
        shape[axis] += self.shape(b)[axis];
        self.add(Op::Concat { axis }, vec![a, b], shape)
    }

    /// Fused scaled dot-product attention: `softmax(scale·q·kᵀ + bias)·v` over the last two
    /// axes (q `[.., m, d]`, k `[.., n, d]`, v `[.., n, e]` → `[.., m, e]`), never holding the
    /// scores (`Op::Attention`).
    pub fn attention(&mut self, q: Id, k: Id, v: Id, bias: Option<Id>, scale: f32) -> Id {
        let mut shape = self.shape(q).to_vec();
        let r = shape.len();
        shape[r - 1] = self.shape(v)[r - 1];
        let mut inputs = vec![q, k, v];
        inputs.extend(bias);
        self.add(Op::Attention { scale: F32(scale) }, inputs, shape)
    }

    pub fn slice(&mut self, x: Id, axis: usize, start: usize, len: usize) -> Id {
        let mut shape = self.shape(x).to_vec();
        assert!(start + len <= shape[axis]);
        shape[axis] = len;
        self.add(Op::Slice { axis, start }, vec![x], shape)
    }

    pub fn loss(&mut self, kind: LossKind, inputs: Vec<Id>) -> Id {
        debug_assert_eq!(inputs.len(), kind.arity());
        self.add(Op::Loss(kind), inputs, vec![])
    }

    /// Nodes the given outputs depend on, in order.
    pub fn live(&self, outputs: &[Id]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let mut stack = outputs.to_vec();
        while let Some(n) = stack.pop() {
            if !live[n] {
                live[n] = true;
                stack.extend(self.nodes[n].inputs.iter().copied());
            }
        }
        live
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            writeln!(
                f,
                "%{i} = {:?}{:?} : {:?}{}",
                n.op,
                n.inputs,
                n.shape,
                if n.grad { " (grad)" } else { "" }
            )?;
        }
        Ok(())
    }
}
