//! Running a compiled graph on a backend. Every operation becomes a node of a luminal 0.2.0
//! `Graph` (kept boxed: its tensors hold a pointer to it) whose operator is kdc's own and
//! launches the operation on the backend; luminal's own CPU compiler is not used.
//!
//! Memory follows the compile-time plan: one arena, allocated on the backend when the
//! executable is built, holds every intermediate value at a fixed offset, so a step allocates
//! nothing. Every parameter and every per-step input has a backend buffer of its own, which
//! the runner fills through [`Executable::set_param`] and [`Executable::set_input`]; outputs
//! are read by name. luminal runs the operations in the planned order (schedule edges between
//! consecutive operations pin it down) and passes between them only empty handles.

use super::compile::Compiled;
use super::graph::{numel, Dtype, Graph, Id, InputKind, Op};
use super::lower::Output;
use super::plan::Place;
use kdc_backend::{Backend, BackendError, BufferId, Launch, View};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::{Data, Graph as LGraph, NodeIndex, ShapeTracker, Tensor};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A backend shared by the executables and the trainer that use it.
pub type SharedBackend = Arc<Mutex<Box<dyn Backend>>>;

/// Locks a shared backend (a panic in another holder does not poison it for good: the engine
/// never leaves a backend half-updated across a panic it recovers from).
pub fn lock(backend: &SharedBackend) -> MutexGuard<'_, Box<dyn Backend>> {
    backend.lock().unwrap_or_else(|e| e.into_inner())
}

/// How kernels are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profiling {
    Off,
    /// Seconds and calls per kind of operation (`MatMul`, `Softmax`).
    ByKind,
    /// Per operation and shapes.
    ByShape,
}

/// What the kernels of one executable share.
struct Shared {
    backend: SharedBackend,
    /// Position (in the planned order) of the next kernel to run: a run-time check that luminal
    /// follows the plan's order, on which the plan's reuse of memory depends.
    next: AtomicUsize,
    profiling: AtomicU8,
    profile: Mutex<BTreeMap<String, (f64, u64)>>,
    /// Which set of batch input buffers the step reads (0 or 1; always 0 with one set).
    bank: AtomicUsize,
}

/// What flows along luminal's edges between kernels: nothing (the data is on the backend).
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

/// kdc's operator inside luminal: one operation with its static shapes and planned memory.
/// `node` makes every operator distinct, so luminal's common-subexpression pass (which compares
/// operators for equality) can never merge two of them.
struct Kernel {
    node: Id,
    position: usize,
    op: Op,
    dtype: Dtype,
    input_shapes: Vec<Vec<usize>>,
    shape: Vec<usize>,
    inputs: Vec<View>,
    /// The inputs when the step reads the second set of batch input buffers, if the operation
    /// reads a batch input and there are two sets.
    banked: Option<Vec<View>>,
    /// The output's view; None when it is the input's memory (a reshape): nothing to run.
    output: Option<View>,
    scratch: View,
    shared: Arc<Shared>,
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
    fn process(&mut self, _: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let expected = self.shared.next.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            expected, self.position,
            "kdc runtime: luminal ran %{} out of the planned order",
            self.node
        );
        let Some(output) = self.output else {
            return vec![Tensor::new(Handle)];
        };
        let profiling = self.shared.profiling.load(Ordering::Relaxed);
        let started = (profiling != 0).then(std::time::Instant::now);
        {
            let mut backend = lock(&self.shared.backend);
            let inputs = match (&self.banked, self.shared.bank.load(Ordering::Relaxed)) {
                (Some(banked), 1) => banked,
                _ => &self.inputs,
            };
            backend.launch(&Launch {
                op: &self.op,
                inputs,
                input_shapes: &self.input_shapes,
                output,
                shape: &self.shape,
                scratch: self.scratch,
                dtype: self.dtype,
            });
            if started.is_some() {
                backend.synchronize();
            }
        }
        if let Some(started) = started {
            let name = if profiling == 2 {
                format!(
                    "{} {:?} {:?} -> {:?}",
                    self.op.kind(),
                    self.op,
                    self.input_shapes,
                    self.shape
                )
            } else {
                self.op.kind().to_string()
            };
            let mut times = self
                .shared
                .profile
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let entry = times.entry(name).or_insert((0.0, 0));
            entry.0 += started.elapsed().as_secs_f64();
            entry.1 += 1;
        }
        vec![Tensor::new(Handle)]
    }
}

/// A compiled graph on a backend, ready to run repeatedly.
pub struct Executable {
    compiled: Compiled,
    shared: Arc<Shared>,
    graph: Box<LGraph>,
    arena: BufferId,
    /// Per parameter: its buffer (every parameter has one, used by this graph or not).
    params: Vec<View>,
    /// Per set of batch input buffers (two when the backend uploads while a step runs, so
    /// that the next batch fills one set while the step reads the other), per input: its
    /// buffer.
    banks: Vec<Vec<View>>,
    /// Per node: where its value is (None: not computed).
    views: Vec<Option<View>>,
}

impl Executable {
    /// Allocates the graph's memory on `backend` (the arena, a buffer per parameter and per
    /// input, all zeroed) and builds the luminal graph of its operations.
    pub fn new(compiled: Compiled, backend: SharedBackend) -> Result<Executable, BackendError> {
        Executable::build(compiled, backend, false)
    }

    /// The same with two sets of batch input buffers when the backend's uploads overlap the
    /// work it runs ([`Backend::overlaps_uploads`]): [`Executable::stage_input`] then fills one
    /// set while a step reads the other (training: the next batch travels during the step).
    pub fn staged(compiled: Compiled, backend: SharedBackend) -> Result<Executable, BackendError> {
        Executable::build(compiled, backend, true)
    }

    fn build(
        compiled: Compiled,
        backend: SharedBackend,
        staged: bool,
    ) -> Result<Executable, BackendError> {
        let g = &compiled.graph;
        let plan = &compiled.plan;
        let (arena, params, banks) = {
            let mut b = lock(&backend);
            // Every operation the step runs, checked on this backend before anything is
            // allocated or launched.
            for &i in &plan.order {
                let node = &g.nodes[i];
                if plan.shares_input(g, i) {
                    continue;
                }
                b.check(&node.op, &g.input_shapes(i), &node.shape, node.dtype)
                    .map_err(|reason| BackendError::Unsupported {
                        device: b.name(),
                        reason: format!("%{i} ({}): {reason}", node.label),
                    })?;
            }
            let arena = b.alloc(plan.arena_len)?;
            let mut params = Vec::with_capacity(g.params.len());
            for p in &g.params {
                let len = numel(&p.shape);
                params.push(View::whole(b.alloc(len)?, len));
            }
            let sets = if staged && b.overlaps_uploads() { 2 } else { 1 };
            let mut banks = Vec::with_capacity(sets);
            for _ in 0..sets {
                let mut inputs = Vec::with_capacity(g.inputs.len());
                for input in &g.inputs {
                    let len = numel(&input.shape);
                    inputs.push(View::whole(b.alloc(len)?, len));
                }
                banks.push(inputs);
            }
            (arena, params, banks)
        };
        let views: Vec<Option<View>> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| match (&node.op, plan.place[i]) {
                (_, Place::Dead) => None,
                (Op::Param(p), _) => Some(params[*p]),
                (Op::Input(k), _) => Some(banks[0][*k]),
                (_, Place::Arena(offset)) => Some(View {
                    buffer: arena,
                    offset,
                    len: numel(&node.shape),
                }),
                (_, Place::Source) => unreachable!("only parameters and inputs are sources"),
            })
            .collect();
        let shared = Arc::new(Shared {
            backend,
            next: AtomicUsize::new(0),
            profiling: AtomicU8::new(0),
            profile: Mutex::new(BTreeMap::new()),
            bank: AtomicUsize::new(0),
        });
        let mut graph = Box::new(LGraph::new());
        let mut nodes: Vec<Option<NodeIndex>> = vec![None; g.nodes.len()];
        let mut previous: Option<NodeIndex> = None;
        for (position, &i) in plan.order.iter().enumerate() {
            let node = &g.nodes[i];
            let alias = plan.shares_input(g, i);
            let scratch = plan.scratch[i].clone();
            let reads_input = node
                .inputs
                .iter()
                .any(|&n| matches!(g.nodes[n].op, Op::Input(_)));
            let kernel = Kernel {
                node: i,
                position,
                op: node.op.clone(),
                dtype: node.dtype,
                input_shapes: g.input_shapes(i),
                shape: node.shape.clone(),
                inputs: node
                    .inputs
                    .iter()
                    .map(|&n| views[n].expect("inputs of a computed node are computed"))
                    .collect(),
                banked: (reads_input && banks.len() > 1).then(|| {
                    node.inputs
                        .iter()
                        .map(|&n| match g.nodes[n].op {
                            Op::Input(k) => banks[1][k],
                            _ => views[n].expect("inputs of a computed node are computed"),
                        })
                        .collect()
                }),
                output: if alias { None } else { views[i] },
                scratch: View {
                    buffer: arena,
                    offset: scratch.start,
                    len: scratch.len(),
                },
                shared: shared.clone(),
            };
            let mut new = graph.add_op(kernel);
            for &source in &node.inputs {
                if let Some(index) = nodes[source] {
                    new = new.input(index, 0, ShapeTracker::new(&[]));
                }
            }
            let index = new.finish();
            if let Some(p) = previous {
                graph.add_schedule_dependency(p, index);
            }
            previous = Some(index);
            nodes[i] = Some(index);
        }
        Ok(Executable {
            compiled,
            shared,
            graph,
            arena,
            params,
            banks,
            views,
        })
    }

    /// A graph built by hand (tests, tools) compiled for the CPU, its outputs named
    /// `Output::Tensor("%<node>")` in the order given.
    pub fn from_graph(g: Graph, outputs: &[Id]) -> Executable {
        let backend = super::device::cpu();
        let named = outputs
            .iter()
            .map(|&id| (Output::Tensor(format!("%{id}")), id))
            .collect();
        let compiled = {
            let b = lock(&backend);
            super::compile::compile_graph(g, named, usize::MAX, Dtype::F32, &**b)
        };
        Executable::new(compiled, backend).expect("the CPU can hold a test graph")
    }

    /// Runs once and returns every output's values, in the order of the compiled outputs.
    pub fn run(&mut self) -> Vec<Vec<f32>> {
        self.execute();
        let names: Vec<Output> = self.compiled.outputs.iter().map(|o| o.0.clone()).collect();
        names.iter().map(|name| self.output(name)).collect()
    }

    /// The compiled graph this runs.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &SharedBackend {
        &self.shared.backend
    }

    /// Whether parameter `p` is read by this graph.
    pub fn uses_param(&self, p: usize) -> bool {
        let g = &self.compiled.graph;
        g.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| n.op == Op::Param(p) && self.views[i].is_some())
    }

    /// Parameter `p`'s buffer.
    pub fn param_view(&self, p: usize) -> View {
        self.params[p]
    }

    /// Copies values into parameter `p`.
    pub fn set_param(&mut self, p: usize, values: &[f32]) {
        lock(&self.shared.backend).upload(self.params[p], values);
    }

    /// Parameter `p`'s values.
    pub fn param(&self, p: usize) -> Vec<f32> {
        let view = self.params[p];
        let mut out = vec![0.0; view.len];
        lock(&self.shared.backend).download(view, &mut out);
        out
    }

    /// The index of the input holding `kind`, if the graph reads it.
    pub fn input_index(&self, kind: &InputKind) -> Option<usize> {
        self.compiled
            .graph
            .inputs
            .iter()
            .position(|i| &i.kind == kind)
    }

    /// Copies values into input `i` of the set the next [`Executable::execute`] reads.
    pub fn set_input(&mut self, i: usize, values: &[f32]) {
        let bank = self.shared.bank.load(Ordering::Relaxed);
        lock(&self.shared.backend).upload(self.banks[bank][i], values);
    }

    /// Copies values into input `i` for the run after [`Executable::swap_inputs`]: with two
    /// sets of input buffers into the one the step issued last does not read, overlapping it;
    /// with one set after that step (in the backend's order).
    pub fn stage_input(&mut self, i: usize, values: &[f32]) {
        let mut b = lock(&self.shared.backend);
        match self.banks.len() {
            1 => b.upload(self.banks[0][i], values),
            _ => b.upload_async(self.banks[self.next_bank()][i], values),
        }
    }

    /// Makes the staged inputs the ones the next run reads (the step waits for their copies).
    pub fn swap_inputs(&mut self) {
        let next = self.next_bank();
        lock(&self.shared.backend).fence_uploads();
        self.shared.bank.store(next, Ordering::Relaxed);
    }

    fn next_bank(&self) -> usize {
        (self.shared.bank.load(Ordering::Relaxed) + 1) % self.banks.len()
    }

    /// The view of a named output, if the graph has it.
    pub fn output_view(&self, name: &Output) -> Option<View> {
        let id = self.compiled.output(name)?;
        match self.compiled.graph.nodes[id].op {
            Op::Input(k) => Some(self.banks[self.shared.bank.load(Ordering::Relaxed)][k]),
            _ => self.views[id],
        }
    }

    /// A named output's values after the last run. Panics if the graph has no such output.
    pub fn output(&self, name: &Output) -> Vec<f32> {
        let view = self
            .output_view(name)
            .unwrap_or_else(|| panic!("the compiled graph has no output `{name}`"));
        let mut out = vec![0.0; view.len];
        lock(&self.shared.backend).download(view, &mut out);
        out
    }

    /// A scalar output (the loss, a term).
    pub fn scalar(&self, name: &Output) -> f64 {
        self.output(name)[0] as f64
    }

    /// Runs every operation once, in the planned order.
    pub fn execute(&mut self) {
        self.shared.next.store(0, Ordering::Relaxed);
        self.graph.execute();
        assert_eq!(
            self.shared.next.load(Ordering::Relaxed),
            self.compiled.plan.order.len(),
            "kdc runtime: luminal skipped operations of the plan"
        );
    }

    /// Turns the timing of every operation on or off (it synchronises after each one).
    pub fn set_profiling(&mut self, mode: Profiling) {
        let code = match mode {
            Profiling::Off => 0,
            Profiling::ByKind => 1,
            Profiling::ByShape => 2,
        };
        self.shared.profiling.store(code, Ordering::Relaxed);
        self.shared
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Seconds and calls per operation since profiling was turned on, slowest first.
    pub fn profile(&self) -> Vec<(String, f64, u64)> {
        let mut v: Vec<(String, f64, u64)> = self
            .shared
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, (t, n))| (k.clone(), *t, *n))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut b = lock(&self.shared.backend);
        b.free(self.arena);
        for v in self.params.iter().chain(self.banks.iter().flatten()) {
            b.free(v.buffer);
        }
    }
}
