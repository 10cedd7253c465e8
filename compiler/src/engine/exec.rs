//! Running an engine graph: every node becomes a node of a luminal 0.2.0 `Graph` (kept boxed:
//! its tensors hold a pointer to it) whose operator is kdc's own, calling the CPU backend's
//! kernel for that operation. luminal orders the nodes, hands each its inputs (moving a tensor
//! into its last consumer) and frees intermediates as soon as nothing needs them. luminal's
//! own CPU compiler is not used.

use super::graph::{Graph, Id, Op};
use super::kernels;
use luminal::op::InputTensor;
use luminal::op::Operator;
use luminal::prelude::{Graph as LGraph, NodeIndex, ShapeTracker, Tensor};
use std::collections::HashMap;

/// kdc's operator inside luminal: the engine operation with its static shapes. `node` makes
/// every operator distinct, so luminal's common-subexpression pass (which compares operators
/// for equality) can never merge two of them; kdc deduplicates its own graph before this.
#[derive(Debug)]
struct Kernel {
    node: Id,
    op: Op,
    input_shapes: Vec<Vec<usize>>,
    shape: Vec<usize>,
}

impl PartialEq for Kernel {
    fn eq(&self, other: &Kernel) -> bool {
        self.node == other.node
    }
}

impl Operator for Kernel {
    fn process(&mut self, inputs: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let started = profiling().then(std::time::Instant::now);
        // A reshape or detach of a tensor nothing else needs is the tensor itself.
        let out = match (&self.op, inputs.len()) {
            (Op::Reshape | Op::Detach, 1) => {
                let (t, _) = inputs.into_iter().next().unwrap();
                match t {
                    InputTensor::Owned(t) => into_vec(t),
                    InputTensor::Borrowed(t) => data(t).to_vec(),
                }
            }
            _ => {
                let slices: Vec<&[f32]> = inputs.iter().map(|(t, _)| data(t.borrowed())).collect();
                kernels::run(&self.op, &slices, &self.input_shapes, &self.shape)
            }
        };
        if let Some(started) = started {
            let name = format!("{:?}", self.op);
            let name = name
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string();
            let mut times = PROFILE.lock().unwrap();
            let entry = times.entry(name).or_insert((0.0, 0));
            entry.0 += started.elapsed().as_secs_f64();
            entry.1 += 1;
        }
        vec![Tensor::new(out)]
    }
}

static PROFILE: std::sync::Mutex<std::collections::BTreeMap<String, (f64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Whether kernels are timed (`KDC_PROFILE=1`).
pub fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KDC_PROFILE").is_some())
}

/// Seconds and calls per kind of operation since the start, slowest first.
pub fn profile() -> Vec<(String, f64, u64)> {
    let mut v: Vec<(String, f64, u64)> = PROFILE
        .lock()
        .unwrap()
        .iter()
        .map(|(k, (t, n))| (k.clone(), *t, *n))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// A value the runner sets before each execution (a parameter, a batch input, a scalar).
#[derive(Debug, PartialEq)]
struct Source {
    name: String,
}

impl Operator for Source {
    fn process(&mut self, _: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        panic!("kdc runtime: no value was set for {}", self.name)
    }
}

fn data(t: &Tensor) -> &[f32] {
    t.data
        .as_any()
        .downcast_ref::<Vec<f32>>()
        .expect("kdc tensors hold Vec<f32>")
}

/// A compiled graph ready to execute repeatedly.
pub struct Executable {
    graph: Box<LGraph>,
    nodes: Vec<Option<NodeIndex>>,
    /// Parameter index → its source node.
    params: Vec<Option<NodeIndex>>,
    inputs: HashMap<String, NodeIndex>,
    outputs: Vec<Id>,
    shapes: Vec<Vec<usize>>,
}

impl Executable {
    /// Builds the luminal graph for the nodes that `outputs` need.
    pub fn new(g: &Graph, outputs: &[Id]) -> Executable {
        let live = g.live(outputs);
        let mut graph = Box::new(LGraph::new());
        let mut nodes = vec![None; g.nodes.len()];
        let mut params = vec![None; g.params.len()];
        let mut inputs = HashMap::new();
        for (i, node) in g.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            let index = match &node.op {
                Op::Param(p) => {
                    let index = graph
                        .add_op(Source {
                            name: g.params[*p].name.clone(),
                        })
                        .finish();
                    params[*p] = Some(index);
                    index
                }
                Op::Input(name) | Op::Scalar(name) => {
                    let index = graph.add_op(Source { name: name.clone() }).finish();
                    inputs.insert(name.clone(), index);
                    index
                }
                op => {
                    let kernel = Kernel {
                        node: i,
                        op: op.clone(),
                        input_shapes: node
                            .inputs
                            .iter()
                            .map(|&n| g.nodes[n].shape.clone())
                            .collect(),
                        shape: node.shape.clone(),
                    };
                    let mut new = graph.add_op(kernel);
                    for &source in &node.inputs {
                        new = new.input(
                            nodes[source].expect("inputs come first"),
                            0,
                            ShapeTracker::new(&[]),
                        );
                    }
                    new.finish()
                }
            };
            nodes[i] = Some(index);
        }
        let kept: Vec<NodeIndex> = params
            .iter()
            .flatten()
            .copied()
            .chain(outputs.iter().map(|&o| nodes[o].unwrap()))
            .collect();
        graph.keep_tensors(kept);
        Executable {
            graph,
            nodes,
            params,
            inputs,
            outputs: outputs.to_vec(),
            shapes: g.nodes.iter().map(|n| n.shape.clone()).collect(),
        }
    }

    /// Whether parameter `p` is used by this graph.
    pub fn uses_param(&self, p: usize) -> bool {
        self.params[p].is_some()
    }

    /// Moves a parameter's values into the graph.
    pub fn set_param(&mut self, p: usize, values: Vec<f32>) {
        if let Some(index) = self.params[p] {
            self.graph.set_tensor(index, 0, Tensor::new(values));
        }
    }

    /// Takes a parameter's values back out (to update them).
    pub fn take_param(&mut self, p: usize) -> Option<Vec<f32>> {
        let index = self.params[p]?;
        self.graph.get_tensor(index, 0).map(into_vec)
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    pub fn set_input(&mut self, name: &str, values: Vec<f32>) {
        if let Some(&index) = self.inputs.get(name) {
            self.graph.set_tensor(index, 0, Tensor::new(values));
        }
    }

    /// Runs the graph and returns the outputs, in the order given at construction.
    pub fn run(&mut self) -> Vec<Vec<f32>> {
        self.graph.execute();
        // Kept outputs must leave the graph, or the next run would skip their nodes. An output
        // that is a source (a gradient that is a parameter, say) is copied instead, and one
        // listed twice is taken once.
        let mut taken: std::collections::HashMap<Id, Vec<f32>> = std::collections::HashMap::new();
        let outputs = self.outputs.clone();
        let sources: std::collections::HashSet<NodeIndex> = self
            .params
            .iter()
            .flatten()
            .chain(self.inputs.values())
            .copied()
            .collect();
        for &o in &outputs {
            if taken.contains_key(&o) {
                continue;
            }
            let index = self.nodes[o].unwrap();
            let values = if sources.contains(&index) {
                data(
                    self.graph
                        .get_tensor_ref(index, 0)
                        .unwrap_or_else(|| panic!("source %{o} was not set")),
                )
                .to_vec()
            } else {
                into_vec(
                    self.graph
                        .get_tensor(index, 0)
                        .unwrap_or_else(|| panic!("output %{o} was not computed")),
                )
            };
            debug_assert_eq!(values.len(), super::graph::numel(&self.shapes[o]));
            taken.insert(o, values);
        }
        outputs.iter().map(|o| taken[o].clone()).collect()
    }
}

fn into_vec(mut t: Tensor) -> Vec<f32> {
    std::mem::take(
        t.data
            .as_any_mut()
            .downcast_mut::<Vec<f32>>()
            .expect("kdc tensors hold Vec<f32>"),
    )
}
