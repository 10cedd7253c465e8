//! Running an engine graph: every node becomes a node of a luminal 0.2.0 `Graph` (kept boxed:
//! its tensors hold a pointer to it) whose operator is kdc's own, calling the CPU backend's
//! kernel for that operation. luminal's own CPU compiler is not used.
//!
//! Memory follows the compile-time plan (`plan.rs`): one arena, allocated when the executable
//! is built, holds every intermediate value at a fixed offset, so a step allocates nothing.
//! luminal runs the nodes (in the planned order, which schedule edges between consecutive
//! kernels pin down) and passes between them only empty handles; a kernel reads its inputs and
//! writes its output at the planned offsets. Parameters and batch inputs stay luminal tensors
//! that the runner moves in and out.

use super::graph::{numel, Graph, Id, Op};
use super::kernels;
use super::passes::{self, PassReport};
use super::plan::{self, MemoryPlan, Place};
use luminal::op::InputTensor;
use luminal::op::Operator;
use luminal::prelude::{Data, Graph as LGraph, NodeIndex, ShapeTracker, Tensor};
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The memory every intermediate value of a step lives in.
struct Arena {
    data: UnsafeCell<Vec<f32>>,
    /// Position (in the planned order) of the next kernel to run: a run-time check that luminal
    /// follows the plan's order, on which the plan's reuse of memory depends.
    next: AtomicUsize,
}

// SAFETY: kernels run one at a time (luminal executes nodes sequentially; a kernel's own
// threads only write its output range), and the plan guarantees that the range a kernel writes
// (output, scratch) overlaps no range that is read while it runs (its inputs, alive values).
unsafe impl Sync for Arena {}
unsafe impl Send for Arena {}

impl Arena {
    /// # Safety
    /// No `&mut` to an overlapping range may be alive.
    unsafe fn slice(&self, r: Range<usize>) -> &[f32] {
        let v = &*self.data.get();
        std::slice::from_raw_parts(v.as_ptr().add(r.start), r.len())
    }

    /// # Safety
    /// No other reference to an overlapping range may be alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, r: Range<usize>) -> &mut [f32] {
        let v = &mut *self.data.get();
        std::slice::from_raw_parts_mut(v.as_mut_ptr().add(r.start), r.len())
    }
}

/// What flows along luminal's edges between kernels: nothing (the data is in the arena).
#[derive(Clone, Debug)]
struct Handle;

impl Data for Handle {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// kdc's operator inside luminal: the engine operation with its static shapes and planned
/// memory. `node` makes every operator distinct, so luminal's common-subexpression pass (which
/// compares operators for equality) can never merge two of them.
struct Kernel {
    node: Id,
    position: usize,
    op: Op,
    input_shapes: Vec<Vec<usize>>,
    shape: Vec<usize>,
    /// Per input: its arena range, or None for a source (read from luminal's tensor).
    inputs: Vec<Option<Range<usize>>>,
    /// The output's range; None when it is the input's memory (a reshape).
    output: Option<Range<usize>>,
    scratch: Range<usize>,
    arena: Arc<Arena>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "%{} {:?}", self.node, self.op)
    }
}

impl PartialEq for Kernel {
    fn eq(&self, other: &Kernel) -> bool {
        self.node == other.node
    }
}

impl Operator for Kernel {
    fn process(&mut self, inputs: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let expected = self.arena.next.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            expected, self.position,
            "kdc runtime: luminal ran %{} out of the planned order",
            self.node
        );
        let Some(output) = self.output.clone() else {
            return vec![Tensor::new(Handle)];
        };
        let started = profiling().then(std::time::Instant::now);
        // SAFETY: the plan gives the output and scratch ranges memory that no input and no
        // other live value uses at this position of the order (checked by `MemoryPlan::check`
        // in tests), and the order is enforced above.
        unsafe {
            let slices: Vec<&[f32]> = inputs
                .iter()
                .zip(&self.inputs)
                .map(|((t, _), place)| match place {
                    Some(r) => self.arena.slice(r.clone()),
                    None => data(t.borrowed()),
                })
                .collect();
            let out = self.arena.slice_mut(output);
            let scratch = self.arena.slice_mut(self.scratch.clone());
            kernels::run(
                &self.op,
                &slices,
                &self.input_shapes,
                &self.shape,
                out,
                scratch,
            );
        }
        if let Some(started) = started {
            let name = if profiling_shapes() {
                format!(
                    "{} {:?} {:?} -> {:?}",
                    self.op.kind(),
                    self.op,
                    self.input_shapes,
                    self.shape
                )
            } else {
                self.op.kind()
            };
            let mut times = PROFILE.lock().unwrap();
            let entry = times.entry(name).or_insert((0.0, 0));
            entry.0 += started.elapsed().as_secs_f64();
            entry.1 += 1;
        }
        vec![Tensor::new(Handle)]
    }
}

static PROFILE: std::sync::Mutex<std::collections::BTreeMap<String, (f64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Whether kernels are timed (`KDC_PROFILE=1`).
pub fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KDC_PROFILE").is_some())
}

/// Forgets the times measured so far.
pub fn reset_profile() {
    PROFILE.lock().unwrap().clear();
}

/// Whether the profile tells operations apart by their shapes (`KDC_PROFILE=shapes`).
fn profiling_shapes() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KDC_PROFILE").is_ok_and(|v| v == "shapes"))
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
        .expect("kdc source tensors hold Vec<f32>")
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
    plan: MemoryPlan,
    reports: Vec<PassReport>,
    arena: Arc<Arena>,
}

/// The graph as it runs: `g` after the passes, with its memory plan.
pub fn prepare(g: &Graph, outputs: &[Id]) -> (Graph, Vec<PassReport>, MemoryPlan) {
    let mut g = g.clone();
    let reports = passes::optimize(&mut g, outputs);
    let plan = plan::plan(&g, outputs, |i| {
        kernels::scratch_len(&g.nodes[i].op, &g.input_shapes(i))
    });
    #[cfg(debug_assertions)]
    if plan.order.len() <= 4000 {
        if let Err(conflict) = plan.check(&g, outputs) {
            panic!("kdc memory plan: {conflict}");
        }
    }
    (g, reports, plan)
}

impl Executable {
    /// Optimises a copy of `g` (passes.rs), plans its memory, and builds the luminal graph of
    /// the nodes that `outputs` need.
    pub fn new(g: &Graph, outputs: &[Id]) -> Executable {
        let (g, reports, plan) = prepare(g, outputs);
        let g = &g;
        let arena = Arc::new(Arena {
            data: UnsafeCell::new(Vec::new()),
            next: AtomicUsize::new(0),
        });
        let range = |i: Id| match plan.place[i] {
            Place::Arena(o) => Some(o..o + numel(&g.nodes[i].shape)),
            _ => None,
        };
        let mut graph = Box::new(LGraph::new());
        let mut nodes = vec![None; g.nodes.len()];
        let mut params = vec![None; g.params.len()];
        let mut inputs = HashMap::new();
        let mut previous: Option<NodeIndex> = None;
        let mut position = 0;
        for (i, node) in g.nodes.iter().enumerate() {
            let index = match (&node.op, plan.place[i]) {
                (_, Place::Dead) => continue,
                (Op::Param(p), _) => {
                    let index = graph
                        .add_op(Source {
                            name: g.params[*p].name.clone(),
                        })
                        .finish();
                    params[*p] = Some(index);
                    index
                }
                (Op::Input(name) | Op::Scalar(name), _) => {
                    let index = graph.add_op(Source { name: name.clone() }).finish();
                    inputs.insert(name.clone(), index);
                    index
                }
                (op, _) => {
                    debug_assert_eq!(plan.order[position], i);
                    let alias = matches!(op, Op::Reshape | Op::Detach)
                        && plan.place[i] == plan.place[node.inputs[0]];
                    let kernel = Kernel {
                        node: i,
                        position,
                        op: op.clone(),
                        input_shapes: g.input_shapes(i),
                        shape: node.shape.clone(),
                        inputs: node.inputs.iter().map(|&n| range(n)).collect(),
                        output: if alias { None } else { range(i) },
                        scratch: plan.scratch[i].clone(),
                        arena: arena.clone(),
                    };
                    position += 1;
                    let mut new = graph.add_op(kernel);
                    for &source in &node.inputs {
                        new = new.input(
                            nodes[source].expect("inputs come first"),
                            0,
                            ShapeTracker::new(&[]),
                        );
                    }
                    let index = new.finish();
                    if let Some(p) = previous {
                        graph.add_schedule_dependency(p, index);
                    }
                    previous = Some(index);
                    index
                }
            };
            nodes[i] = Some(index);
        }
        let kept: Vec<NodeIndex> = params.iter().flatten().copied().collect();
        graph.keep_tensors(kept);
        Executable {
            graph,
            nodes,
            params,
            inputs,
            outputs: outputs.to_vec(),
            shapes: g.nodes.iter().map(|n| n.shape.clone()).collect(),
            plan,
            reports,
            arena,
        }
    }

    /// What the graph passes did.
    pub fn reports(&self) -> &[PassReport] {
        &self.reports
    }

    /// The memory plan this executable runs with.
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
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

    /// Allocates the arena (once; building the executable does not). `Err` gives the bytes
    /// that could not be had.
    pub fn allocate(&mut self) -> Result<(), usize> {
        let len = self.plan.arena_len;
        // SAFETY: `&mut self`: no kernel runs and no output slice is borrowed.
        let data = unsafe { &mut *self.arena.data.get() };
        if data.len() < len {
            let bytes = len * std::mem::size_of::<f32>();
            let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| bytes)?;
            // Zeroed memory from the allocator (calloc: pages are mapped on first touch).
            // SAFETY: the layout has a non-zero size (len > data.len() >= 0).
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
            if ptr.is_null() {
                return Err(bytes);
            }
            // SAFETY: allocated by the global allocator with exactly this layout, and zeroed
            // floats are valid `0.0`s.
            *data = unsafe { Vec::from_raw_parts(ptr, len, len) };
        }
        Ok(())
    }

    /// Runs the graph; the outputs are then read with [`Executable::output`].
    pub fn execute(&mut self) {
        if let Err(bytes) = self.allocate() {
            panic!("kdc runtime: cannot allocate the {bytes}-byte arena");
        }
        self.arena.next.store(0, Ordering::Relaxed);
        self.graph.execute();
        assert_eq!(
            self.arena.next.load(Ordering::Relaxed),
            self.plan.order.len(),
            "kdc runtime: luminal skipped kernels of the plan"
        );
    }

    /// Output `k` (in the order given at construction) of the last run.
    pub fn output(&self, k: usize) -> &[f32] {
        let o = self.outputs[k];
        match self.plan.place[o] {
            // SAFETY: no kernel runs while `&self` is borrowed (execute takes `&mut self`).
            Place::Arena(at) => unsafe { self.arena.slice(at..at + numel(&self.shapes[o])) },
            _ => data(
                self.graph
                    .get_tensor_ref(self.nodes[o].unwrap(), 0)
                    .unwrap_or_else(|| panic!("source %{o} was not set")),
            ),
        }
    }

    /// Runs the graph and returns copies of the outputs, in the order given at construction.
    pub fn run(&mut self) -> Vec<Vec<f32>> {
        self.execute();
        (0..self.outputs.len())
            .map(|k| self.output(k).to_vec())
            .collect()
    }
}

fn into_vec(mut t: Tensor) -> Vec<f32> {
    std::mem::take(
        t.data
            .as_any_mut()
            .downcast_mut::<Vec<f32>>()
            .expect("kdc source tensors hold Vec<f32>"),
    )
}
