//! The engine's graph: a training step as operations on concrete shapes. Forward operations
//! come from the model towers and the recipe's loss; `autodiff` appends the backward
//! operations to the same graph, each backward step an operation of the same set (the
//! gradient of a matmul is two matmuls), so that every later pass and every backend sees one
//! kind of node.

use std::fmt;

pub type Id = usize;

/// A unary elementwise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    /// The exact GELU, x·Φ(x).
    Gelu,
    /// x·σ(1.702x).
    QuickGelu,
}

/// A binary elementwise function with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// A reduction along one axis, or over everything (`axis: None`, a scalar result).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Mean,
    /// Biased variance.
    Var,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A per-step input: pixels, token ids, pooling indices, mask indices. Integers are held as
    /// exact f32 values.
    Input(String),
    /// A trainable or frozen parameter, by index into `Graph::params`.
    Param(usize),
    /// A constant tensor filled with one value.
    Fill(f32),
    /// The identity matrix.
    Eye,
    /// The additive causal mask: 0 on and below the diagonal, −∞ (a large negative) above.
    CausalMask,
    /// A scalar that the runner sets every step (a scheduled loss weight or learning rate).
    Scalar(String),
    Unary(Unary),
    /// The backward of a unary function: inputs (x, y, dy) → dx.
    UnaryBackward(Unary),
    Binary(Binary),
    /// Batched matrix product of the last two axes; `ta`/`tb` read an operand transposed.
    /// An operand of rank 2 is shared by every batch item of the other.
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// `MatMul { ta, tb }` of the first two inputs plus the third broadcast to the product's
    /// shape (a bias, a residual): made by the fusion pass, one pass over the output instead of
    /// two.
    MatMulAdd {
        ta: bool,
        tb: bool,
    },
    /// Reorders axes (a copy).
    Permute(Vec<usize>),
    /// The same data seen with another shape.
    Reshape,
    /// Repeats the input along axes of size 1 (or missing leading axes) to the output shape.
    Broadcast,
    /// Sums the input down to the output shape (the gradient of `Broadcast` and of
    /// broadcasting binary operations).
    SumTo,
    Reduce {
        kind: Reduce,
        axis: Option<usize>,
    },
    /// The gradient of a reduction: inputs (x, dy) → dx.
    ReduceBackward {
        kind: Reduce,
        axis: Option<usize>,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// Inputs (y, dy) → dx, y the softmax output.
    SoftmaxBackward {
        axis: usize,
    },
    /// Inputs (y, dy) → dx, y the log-softmax output.
    LogSoftmaxBackward {
        axis: usize,
    },
    /// x / max(‖x‖₂, ε) along an axis.
    Normalize {
        axis: usize,
    },
    /// Inputs (x, dy) → dx.
    NormalizeBackward {
        axis: usize,
    },
    /// Layer norm over the last axis: inputs (x, gain, bias).
    LayerNorm {
        eps: f32,
    },
    /// Inputs (x, gain, dy) → dx.
    LayerNormBackward {
        eps: f32,
    },
    /// Inputs (x, dy) → [2, n]: row 0 the gain's gradient, row 1 the bias's.
    LayerNormParamGrads {
        eps: f32,
    },
    /// Rows of a table: inputs (table [v, w], ids [..]) → [.., w].
    Embedding,
    /// Inputs (ids, dy) → the table's gradient (scatter-add), shape of the table.
    EmbeddingBackward,
    /// Per batch item, rows of x picked by index: (x [b, t, w], index [b, k]) → [b, k, w].
    GatherRows,
    /// Inputs (index [b, k], dy [b, k, w]) → dx [b, t, w] (scatter-add).
    ScatterRows,
    Concat {
        axis: usize,
    },
    /// A contiguous range along an axis.
    Slice {
        axis: usize,
        start: usize,
    },
    /// Inputs (dy) → dx zero outside the slice: the gradient of `Slice`.
    SliceBackward {
        axis: usize,
        start: usize,
    },
    Mse,
    L1,
    SmoothL1 {
        beta: f32,
    },
    /// KL(p ‖ q) from log-probabilities over the last axis, mean over rows.
    Kl,
    CrossEntropyDiagonal,
    CrossEntropySoft,
    /// The gradient of a loss with respect to input `which`: inputs (loss inputs…, dloss).
    LossBackward {
        loss: Box<Op>,
        which: usize,
    },
    /// Blocks gradients.
    Detach,
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
    /// The scope prefixed to node labels.
    scope: Vec<String>,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The broadcast of two shapes (NumPy rules), or `None`.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let x = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let y = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
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
            Op::Detach | Op::Input(_) | Op::Fill(_) | Op::Eye | Op::CausalMask | Op::Scalar(_) => {
                false
            }
            _ => inputs.iter().any(|&i| self.nodes[i].grad),
        };
        self.nodes.push(Node {
            op,
            inputs,
            shape,
            grad,
            label: self.scope.join("."),
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

    pub fn input(&mut self, name: &str, shape: Vec<usize>) -> Id {
        self.add(Op::Input(name.into()), vec![], shape)
    }

    pub fn fill(&mut self, value: f32, shape: Vec<usize>) -> Id {
        self.add(Op::Fill(value), vec![], shape)
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
        let shape = self.shape(x).to_vec();
        self.add(Op::Normalize { axis }, vec![x], shape)
    }

    pub fn layer_norm(&mut self, x: Id, gain: Id, bias: Id, eps: f32) -> Id {
        let shape = self.shape(x).to_vec();
        self.add(Op::LayerNorm { eps }, vec![x, gain, bias], shape)
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

    pub fn slice(&mut self, x: Id, axis: usize, start: usize, len: usize) -> Id {
        let mut shape = self.shape(x).to_vec();
        assert!(start + len <= shape[axis]);
        shape[axis] = len;
        self.add(Op::Slice { axis, start }, vec![x], shape)
    }

    pub fn loss(&mut self, op: Op, inputs: Vec<Id>) -> Id {
        self.add(op, inputs, vec![])
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

impl Op {
    /// Whether the runner sets this value (a parameter, batch input or scheduled scalar)
    /// rather than a kernel computing it.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Param(_) | Op::Input(_) | Op::Scalar(_))
    }

    /// The operation's name without its parameters (`MatMul`, `Softmax`), for summaries and
    /// profiles.
    pub fn kind(&self) -> String {
        let full = format!("{self:?}");
        full.split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string()
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
