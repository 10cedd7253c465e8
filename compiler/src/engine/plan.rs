//! The compile-time memory plan: every intermediate value of a training step gets a fixed
//! offset in one arena, allocated once, so that a step in steady state allocates nothing.
//!
//! The execution order is fixed first (the graph's own order, which is topological: forward,
//! loss, backward), which gives every value a lifetime `[defined, last read]` in steps of that
//! order. Values whose lifetimes overlap must not share memory; the rest may. Placement is the
//! classic greedy for this offline problem: largest buffers first, each at the lowest offset
//! where it overlaps no already-placed buffer that is alive at the same time. A reshape (or a
//! detach) is the same memory as its input, so it extends its input's lifetime instead of
//! taking a buffer. Kernel scratch (layer norm statistics) is a buffer alive for one step.
//! Values the caller reads after the run (loss, terms, gradients) live to the end.

use std::ops::Range;

use super::graph::{numel, Graph, Id, Op};

/// Buffers start at multiples of this many floats (64 bytes: a cache line, an AVX-512 vector;
/// kdc-cuda places bf16 factors and biases in scratch relying on it).
const ALIGN: usize = 16;

/// Where a node's value lives during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Not computed by this graph (not needed for the outputs).
    Dead,
    /// A parameter, batch input or scheduled scalar: set from outside, owned by the executor.
    Source,
    /// `numel(shape)` floats at this offset in the arena.
    Arena(usize),
}

/// The plan for one graph and its outputs.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// The computed nodes in execution order.
    pub order: Vec<Id>,
    /// Per node: where its value lives.
    pub place: Vec<Place>,
    /// Per node: its kernel's scratch buffer (empty when it asks for none).
    pub scratch: Vec<Range<usize>>,
    /// Floats in the arena.
    pub arena_len: usize,
    /// Floats that one buffer per value (no reuse) would take: what the plan saves against.
    pub unshared_len: usize,
    /// Number of buffers placed (values that own memory, plus scratch buffers).
    pub buffers: usize,
    /// Reshapes and detaches that share their input's memory.
    pub aliases: usize,
}

/// A buffer to place: size in floats and lifetime in positions of the execution order.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    size: usize,
    first: usize,
    last: usize,
}

/// Plans memory for the nodes `outputs` need. `scratch_len(node)` is the scratch (floats) a
/// node's kernel asks for.
pub fn plan(g: &Graph, outputs: &[Id], scratch_len: impl Fn(Id) -> usize) -> MemoryPlan {
    let live = g.live(outputs);
    let n = g.nodes.len();
    let order: Vec<Id> = (0..n)
        .filter(|&i| live[i] && !g.nodes[i].op.is_source())
        .collect();
    let mut pos = vec![usize::MAX; n];
    for (p, &i) in order.iter().enumerate() {
        pos[i] = p;
    }
    // The node whose buffer holds each value (itself, or what a reshape reads).
    let mut root: Vec<Id> = (0..n).collect();
    let mut aliases = 0;
    for &i in &order {
        let node = &g.nodes[i];
        if matches!(node.op, Op::Reshape | Op::Detach) {
            let input = node.inputs[0];
            if !g.nodes[input].op.is_source() {
                root[i] = root[input];
                aliases += 1;
            }
        }
    }
    // One buffer per root, alive from its definition to the last read of it or any alias.
    let mut buffer_of = vec![usize::MAX; n];
    let mut buffers: Vec<Buffer> = Vec::new();
    for &i in &order {
        if root[i] == i {
            buffer_of[i] = buffers.len();
            buffers.push(Buffer {
                size: numel(&g.nodes[i].shape),
                first: pos[i],
                last: pos[i],
            });
        }
    }
    for &i in &order {
        for &input in &g.nodes[i].inputs {
            if pos[input] != usize::MAX {
                let b = &mut buffers[buffer_of[root[input]]];
                b.last = b.last.max(pos[i]);
            }
        }
    }
    for &o in outputs {
        if pos[o] != usize::MAX {
            buffers[buffer_of[root[o]]].last = usize::MAX;
        }
    }
    let values = buffers.len();
    let mut scratch_buffer = vec![usize::MAX; n];
    let scratch_sizes: Vec<usize> = (0..n)
        .map(|i| {
            if pos[i] == usize::MAX {
                0
            } else {
                scratch_len(i)
            }
        })
        .collect();
    for &i in &order {
        let s = scratch_sizes[i];
        if s > 0 {
            scratch_buffer[i] = buffers.len();
            buffers.push(Buffer {
                size: s,
                first: pos[i],
                last: pos[i],
            });
        }
    }
    let unshared_len = buffers.iter().map(|b| b.size).sum();
    let (offsets, arena_len) = place(&buffers);

    let mut place = vec![Place::Dead; n];
    let mut scratch = vec![0..0; n];
    for i in 0..n {
        if !live[i] {
            continue;
        }
        if g.nodes[i].op.is_source() {
            place[i] = Place::Source;
            continue;
        }
        place[i] = Place::Arena(offsets[buffer_of[root[i]]]);
        if scratch_buffer[i] != usize::MAX {
            let at = offsets[scratch_buffer[i]];
            scratch[i] = at..at + scratch_sizes[i];
        }
    }
    debug_assert!(values <= buffers.len());
    MemoryPlan {
        order,
        place,
        scratch,
        arena_len,
        unshared_len,
        buffers: buffers.len(),
        aliases,
    }
}

fn aligned(size: usize) -> usize {
    size.div_ceil(ALIGN) * ALIGN
}

fn overlap(a: &Buffer, b: &Buffer) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Greedy placement, largest first: the offset of every buffer and the arena's length.
fn place(buffers: &[Buffer]) -> (Vec<usize>, usize) {
    let mut by_size: Vec<usize> = (0..buffers.len()).collect();
    by_size.sort_by_key(|&b| (std::cmp::Reverse(buffers[b].size), buffers[b].first));
    let mut offsets = vec![0; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut len = 0;
    let mut busy: Vec<(usize, usize)> = Vec::new();
    for &b in &by_size {
        let size = aligned(buffers[b].size);
        if size == 0 {
            continue;
        }
        busy.clear();
        busy.extend(
            placed
                .iter()
                .filter(|&&p| overlap(&buffers[p], &buffers[b]))
                .map(|&p| (offsets[p], offsets[p] + aligned(buffers[p].size))),
        );
        busy.sort_unstable();
        let mut at = 0;
        for &(start, end) in &busy {
            if start >= at + size {
                break;
            }
            at = at.max(end);
        }
        offsets[b] = at;
        len = len.max(at + size);
        placed.push(b);
    }
    (offsets, len)
}

impl MemoryPlan {
    /// Whether node `id` is a view (reshape, detach) that shares its input's memory: it
    /// launches nothing and costs nothing.
    pub fn shares_input(&self, g: &Graph, id: Id) -> bool {
        let node = &g.nodes[id];
        node.op.is_view() && self.place[id] == self.place[node.inputs[0]]
    }

    /// Checks the plan's one invariant: values alive at the same time never share memory
    /// (except a reshape and what it reads, which are one value), and a kernel's scratch
    /// overlaps no value alive while it runs. Returns the first conflict.
    pub fn check(&self, g: &Graph, outputs: &[Id]) -> Result<(), String> {
        let n = g.nodes.len();
        let mut pos = vec![usize::MAX; n];
        for (p, &i) in self.order.iter().enumerate() {
            pos[i] = p;
        }
        // Lifetime per node, in order positions; outputs live forever.
        let mut last: Vec<usize> = pos.clone();
        for &i in &self.order {
            for &input in &g.nodes[i].inputs {
                if pos[input] != usize::MAX {
                    last[input] = last[input].max(pos[i]);
                }
            }
        }
        for &o in outputs {
            if pos[o] != usize::MAX {
                last[o] = usize::MAX;
            }
        }
        // A reshape's lifetime is its input's too.
        for &i in self.order.iter().rev() {
            if !matches!(g.nodes[i].op, Op::Reshape | Op::Detach) {
                continue;
            }
            if let (Place::Arena(a), Place::Arena(b)) =
                (self.place[i], self.place[g.nodes[i].inputs[0]])
            {
                if a == b {
                    let input = g.nodes[i].inputs[0];
                    last[input] = last[input].max(last[i]);
                }
            }
        }
        let span = |i: Id| match self.place[i] {
            Place::Arena(o) => Some((o, o + numel(&g.nodes[i].shape))),
            _ => None,
        };
        for (x, &i) in self.order.iter().enumerate() {
            for &j in &self.order[x + 1..] {
                let (Some((a0, a1)), Some((b0, b1))) = (span(i), span(j)) else {
                    continue;
                };
                let same_value = a0 == b0 && aliases(g, i, j);
                if same_value || a0 >= b1 || b0 >= a1 || a1 == a0 || b1 == b0 {
                    continue;
                }
                // j is defined after i; they conflict if i is still needed when j is written.
                if last[i] >= pos[j] {
                    return Err(format!(
                        "%{i} (alive until {}) and %{j} (written at {}) share memory",
                        last[i], pos[j]
                    ));
                }
            }
        }
        for &k in &self.order {
            let (s0, s1) = (self.scratch[k].start, self.scratch[k].end);
            if s0 == s1 {
                continue;
            }
            for &i in &self.order {
                let Some((a0, a1)) = span(i) else { continue };
                let alive = pos[i] <= pos[k] && last[i] >= pos[k];
                if alive && a0 < s1 && s0 < a1 && a0 != a1 {
                    return Err(format!(
                        "the scratch of %{k} overlaps %{i}, alive at that step"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `i` and `j` are one value seen through reshapes/detaches: one is the other's view,
/// or both are views of the same value (`unsqueeze(x, 0)` and `unsqueeze(x, 1)`).
fn aliases(g: &Graph, i: Id, j: Id) -> bool {
    let root = |mut k: Id| loop {
        match g.nodes[k].op {
            Op::Reshape | Op::Detach => k = g.nodes[k].inputs[0],
            _ => return k,
        }
    };
    root(i) == root(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_views_of_one_value_share_its_memory_without_conflict() {
        // x [4, 3] seen as [4, 1, 3] and [1, 4, 3], their difference, and a sum: the two views
        // alias x's buffer, which the plan's check must accept.
        let mut g = Graph::default();
        let x = g.param("x", vec![4, 3], true);
        let a = g.reshape(x, vec![4, 1, 3]);
        let b = g.reshape(x, vec![1, 4, 3]);
        let d = g.binary(crate::engine::graph::Binary::Sub, a, b);
        let loss = g.reduce(Reduce::Sum, d, None);
        let grads = backward(&mut g, loss);
        let mut outputs = vec![loss];
        outputs.extend(grads.iter().map(|g| g.1));
        let plan = plan(&g, &outputs, |_| 0);
        plan.check(&g, &outputs).unwrap();
    }
    use crate::engine::autodiff::backward;
    use crate::engine::graph::{InputKind, Reduce, Unary};

    /// A small MLP-like chain with a reshape, its backward, and the gradients as outputs.
    fn graph() -> (Graph, Vec<Id>) {
        let mut g = Graph::default();
        let x = g.input(InputKind::Pixels { model: "x".into() }, vec![8, 16]);
        let w1 = g.param("w1", vec![16, 32], true);
        let w2 = g.param("w2", vec![32, 4], true);
        let h = g.matmul(x, w1);
        let a = g.unary(Unary::Gelu, h);
        let a = g.unary(Unary::Exp, a);
        let r = g.reshape(a, vec![8, 32]);
        let y = g.matmul(r, w2);
        let loss = g.reduce(Reduce::Sum, y, None);
        let grads = backward(&mut g, loss);
        let mut outputs = vec![loss];
        outputs.extend(grads.iter().map(|p| p.1));
        (g, outputs)
    }

    #[test]
    fn the_plan_reuses_memory_without_conflicts() {
        let (g, outputs) = graph();
        let p = plan(&g, &outputs, |_| 0);
        p.check(&g, &outputs).unwrap();
        assert!(p.aliases >= 1, "the reshape shares its input's memory");
        assert!(
            p.arena_len < p.unshared_len,
            "reuse: {} < {}",
            p.arena_len,
            p.unshared_len
        );
        // Every computed node has a place in the arena; sources are not in it.
        for &i in &p.order {
            assert!(matches!(p.place[i], Place::Arena(_)));
        }
    }

    #[test]
    fn the_checker_finds_a_conflict() {
        let (g, outputs) = graph();
        let mut p = plan(&g, &outputs, |_| 0);
        // Put every value at offset 0: values alive together now collide.
        for place in p.place.iter_mut() {
            if let Place::Arena(_) = place {
                *place = Place::Arena(0);
            }
        }
        assert!(p.check(&g, &outputs).is_err());
    }

    #[test]
    fn scratch_is_checked_too() {
        let (g, outputs) = graph();
        // Every node asks for scratch: the plan places it, and the check accepts the plan.
        let p = plan(&g, &outputs, |_| 64);
        p.check(&g, &outputs).unwrap();
        // Scratch moved onto a live value is caught.
        let mut bad = p.clone();
        let k = p.order[p.order.len() / 2];
        let input = g.nodes[k]
            .inputs
            .iter()
            .copied()
            .find(|&i| matches!(p.place[i], Place::Arena(_)));
        if let Some(Place::Arena(at)) = input.map(|i| p.place[i]) {
            bad.scratch[k] = at..at + 64;
            assert!(bad.check(&g, &outputs).is_err());
        } else {
            panic!("the middle node should read a computed value");
        }
    }

    #[test]
    fn outputs_are_never_overwritten() {
        let (g, outputs) = graph();
        let p = plan(&g, &outputs, |_| 0);
        let last = *p.order.last().unwrap();
        for &o in &outputs {
            let Place::Arena(at) = p.place[o] else {
                continue;
            };
            let span = at..at + numel(&g.nodes[o].shape);
            // No node defined after the output writes into its span.
            let from = p.order.iter().position(|&i| i == o).unwrap();
            for &i in &p.order[from + 1..] {
                if let Place::Arena(b) = p.place[i] {
                    let end = b + numel(&g.nodes[i].shape);
                    let disjoint = end <= span.start || b >= span.end || b == at;
                    assert!(
                        disjoint || i == last && b == at,
                        "%{i} overwrites output %{o}"
                    );
                }
            }
        }
    }
}
