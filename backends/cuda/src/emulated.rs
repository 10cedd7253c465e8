//! [`EmulatedBackend`]: kdc's [`Backend`] on the CUDA kernels, run by the CPU emulator
//! ([`crate::emu`]). Every operation goes through [`dispatch::plan`] — the mapping the CUDA
//! backend uses — and every buffer operation (copy, add, scale, lerp, clamp, AdamW, the gradient
//! norm) through this crate's kernels, so a training step on this backend exercises the device
//! code path end to end, without a GPU.
//!
//! Buffers are emulator [`DeviceBuf`]s of f32 with guard zones. A step's buffer positions are
//! bound to (the view's buffer, the view's offset + the step's offset), as a GPU backend binds
//! device pointers; with [`EmulatedBackend::isolated`] each view is copied into a guarded
//! buffer of its own instead, and the output starts as NaN, so a kernel that writes outside its
//! view, or leaves part of its output unwritten, shows. An error the emulator reports (an absent
//! shuffle lane, a divergent barrier, a write out of bounds) is a bug in a kernel or in the
//! dispatcher: the backend panics with the emulator's message, as it does on an operation the
//! dispatcher cannot run ([`dispatch::Unsupported`]). A device's own failure is not a bug of
//! kdc's; [`EmulatedBackend::failing_after`] simulates one, so that the engine's handling of it
//! (through [`Backend::take_error`]) is tested as a GPU would exercise it.

use kdc_backend::{AdamW, Backend, BackendError, BufferId, Launch, Op, View};

use crate::dispatch::{self, Step};
use crate::emu::{self, DeviceBuf, Schedule};
use crate::launch::{self, Arg, KernelCall};

/// The emulated CUDA backend.
pub struct EmulatedBackend {
    buffers: Vec<Option<DeviceBuf>>,
    schedule: Schedule,
    isolate: bool,
    /// Kernel launches so far, and the one at which a simulated device fault happens.
    launches: usize,
    fault_at: Option<usize>,
    /// The first device failure not yet taken: work issued after it is skipped.
    error: Option<BackendError>,
    /// Uploads issued with [`Backend::upload_async`] and not yet fenced: as on a GPU's copy
    /// stream, their values land only at [`Backend::fence_uploads`], and an operation that
    /// touches one before that is a bug of the engine's (it panics).
    pending: Vec<(View, Vec<f32>)>,
}

impl Default for EmulatedBackend {
    fn default() -> EmulatedBackend {
        EmulatedBackend::new()
    }
}

/// What a step's buffer position is bound to while it runs.
enum Bound {
    /// `buffers[id]` at `offset` floats.
    Shared { id: usize, offset: usize },
    /// `temps[i]` (isolated views and scratch buffers of the backend's own).
    Temp(usize),
}

impl EmulatedBackend {
    /// A backend with no buffers, views bound in place, every block's threads run at once.
    pub fn new() -> EmulatedBackend {
        EmulatedBackend {
            buffers: Vec::new(),
            schedule: Schedule::Parallel,
            isolate: false,
            launches: 0,
            fault_at: None,
            error: None,
            pending: Vec::new(),
        }
    }

    /// A backend whose device fails at its `launches + 1`-th kernel launch (test support): as
    /// a GPU reports a fault, it records the failure, skips all work after it (downloads read
    /// NaN) and returns it from [`Backend::take_error`].
    pub fn failing_after(launches: usize) -> EmulatedBackend {
        EmulatedBackend {
            fault_at: Some(launches),
            ..EmulatedBackend::new()
        }
    }

    /// A backend that copies each view into a guarded buffer of its own for every kernel (and
    /// starts an operation's output as NaN): slower, but a write outside a view or an
    /// unwritten output element is caught.
    pub fn isolated() -> EmulatedBackend {
        EmulatedBackend {
            isolate: true,
            ..EmulatedBackend::new()
        }
    }

    /// The same with another thread schedule (see [`Schedule`]).
    pub fn with_schedule(mut self, schedule: Schedule) -> EmulatedBackend {
        self.schedule = schedule;
        self
    }

    fn buffer(&self, id: BufferId) -> &DeviceBuf {
        self.buffers
            .get(id.0)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("kdc-cuda emulated: unknown or freed buffer {}", id.0))
    }

    fn check(&self, v: View) {
        let floats = self.buffer(v.buffer).len_bytes() / 4;
        assert!(
            v.offset + v.len <= floats,
            "kdc-cuda emulated: view {v:?} outside its buffer of {floats} floats"
        );
    }

    /// Panics when `views` touch memory an unfenced upload is still copying into.
    fn unfenced(&self, what: &str, views: &[View]) {
        for v in views {
            if let Some((p, _)) = self.pending.iter().find(|(p, _)| p.overlaps(v)) {
                panic!(
                    "kdc-cuda emulated: {what} touches {v:?}, which an upload not yet fenced \
                     ({p:?}) is still copying into"
                );
            }
        }
    }

    fn read(&self, v: View) -> Vec<f32> {
        self.check(v);
        self.buffer(v.buffer).read_f32_at(v.offset, v.len)
    }

    fn write(&mut self, v: View, values: &[f32]) {
        self.check(v);
        assert_eq!(
            values.len(),
            v.len,
            "kdc-cuda emulated: length differs from the view's"
        );
        self.buffers[v.buffer.0]
            .as_mut()
            .expect("checked above")
            .write_f32_at(v.offset, values);
    }

    /// Runs `steps` with buffer position `i` bound to `views[i]`. `fresh[i]`: the step
    /// overwrites view `i` entirely (isolated runs start it as NaN instead of its contents);
    /// `written[i]`: the steps may write view `i`.
    fn run(
        &mut self,
        what: &str,
        steps: &[Step],
        views: &[View],
        fresh: &[bool],
        written: &[bool],
    ) {
        for &v in views {
            self.check(v);
        }
        let mut temps: Vec<DeviceBuf> = Vec::new();
        let bound: Vec<Bound> = views
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if self.isolate {
                    temps.push(if fresh[i] {
                        DeviceBuf::uninit(v.len * 4)
                    } else {
                        DeviceBuf::from_slice(&self.read(v))
                    });
                    Bound::Temp(temps.len() - 1)
                } else {
                    Bound::Shared {
                        id: v.buffer.0,
                        offset: v.offset,
                    }
                }
            })
            .collect();
        for step in steps {
            match step {
                Step::Kernel(call) => self.launch_bound(what, call, &bound, &mut temps),
                Step::Gemm(g) => {
                    for call in g.kernels() {
                        self.launch_bound(what, &call, &bound, &mut temps)
                    }
                }
                Step::Upload(values) => {
                    let out = views.len() - 2;
                    match bound[out] {
                        Bound::Shared { .. } => self.write(views[out], values),
                        Bound::Temp(t) => temps[t].write_f32_at(0, values),
                    }
                }
            }
        }
        if self.isolate {
            for (i, b) in bound.iter().enumerate() {
                if let (true, Bound::Temp(t)) = (written[i], b) {
                    let values = temps[*t].read_f32_at(0, views[i].len);
                    self.write(views[i], &values);
                }
            }
        }
    }

    /// One kernel with its buffer positions bound.
    fn launch_bound(
        &mut self,
        what: &str,
        call: &KernelCall,
        bound: &[Bound],
        temps: &mut [DeviceBuf],
    ) {
        // The distinct device buffers the call touches, and the call renumbered onto them.
        enum Target {
            Shared(usize),
            Temp(usize),
        }
        let mut targets: Vec<Target> = Vec::new();
        let mut call = call.clone();
        for arg in &mut call.args {
            let Arg::Buf { index, offset } = arg else {
                continue;
            };
            let (target, base) = match bound[*index] {
                Bound::Shared { id, offset } => (Target::Shared(id), offset),
                Bound::Temp(t) => (Target::Temp(t), 0),
            };
            let slot = targets
                .iter()
                .position(|t| match (t, &target) {
                    (Target::Shared(a), Target::Shared(b)) | (Target::Temp(a), Target::Temp(b)) => {
                        a == b
                    }
                    _ => false,
                })
                .unwrap_or_else(|| {
                    targets.push(target);
                    targets.len() - 1
                });
            *index = slot;
            *offset += base;
        }
        let mut slots: Vec<Option<&mut DeviceBuf>> = (0..targets.len()).map(|_| None).collect();
        for (id, b) in self.buffers.iter_mut().enumerate() {
            if let Some(s) = targets
                .iter()
                .position(|t| matches!(t, Target::Shared(x) if *x == id))
            {
                slots[s] = b.as_mut();
            }
        }
        for (t, b) in temps.iter_mut().enumerate() {
            if let Some(s) = targets
                .iter()
                .position(|x| matches!(x, Target::Temp(y) if *y == t))
            {
                slots[s] = Some(b);
            }
        }
        if self.error.is_some() {
            return;
        }
        if self.fault_at == Some(self.launches) {
            self.error = Some(BackendError::Device {
                device: "cuda-emulated",
                message: format!(
                    "simulated fault at kernel launch {} ({what}: {})",
                    self.launches + 1,
                    call.kernel
                ),
            });
            return;
        }
        self.launches += 1;
        let mut bufs: Vec<&mut DeviceBuf> = slots
            .into_iter()
            .map(|b| b.expect("every bound buffer is live"))
            .collect();
        if let Err(e) = emu::run(&call, &mut bufs, self.schedule) {
            panic!("kdc-cuda emulated: {what}: {} failed: {e}", call.kernel);
        }
    }

    /// One buffer operation: a kernel over `views`, which it reads and writes in place.
    fn in_place(&mut self, what: &str, call: KernelCall, views: &[View], written: &[bool]) {
        self.unfenced(what, views);
        let fresh = vec![false; views.len()];
        self.run(what, &[Step::Kernel(call)], views, &fresh, written);
    }
}

fn assert_disjoint(what: &str, views: &[View]) {
    for (i, a) in views.iter().enumerate() {
        assert_eq!(
            a.len, views[0].len,
            "kdc-cuda emulated: {what}: views of different lengths"
        );
        for b in &views[i + 1..] {
            assert!(!a.overlaps(b), "kdc-cuda emulated: {what}: views overlap");
        }
    }
}

impl Backend for EmulatedBackend {
    fn name(&self) -> &'static str {
        "cuda-emulated"
    }

    fn check(
        &self,
        op: &kdc_backend::Op,
        input_shapes: &[Vec<usize>],
        shape: &[usize],
        dtype: kdc_backend::Dtype,
    ) -> Result<(), String> {
        dispatch::plan(op, input_shapes, shape, dtype)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn scratch_len(
        &self,
        op: &Op,
        input_shapes: &[Vec<usize>],
        shape: &[usize],
        dtype: kdc_backend::Dtype,
    ) -> usize {
        dispatch::scratch_len(op, input_shapes, shape, dtype)
    }

    fn alloc(&mut self, len: usize) -> Result<BufferId, BackendError> {
        let b = DeviceBuf::try_zeros_f32(len).ok_or(BackendError::OutOfMemory {
            device: "cuda-emulated",
            bytes: len.saturating_mul(4),
        })?;
        self.buffers.push(Some(b));
        Ok(BufferId(self.buffers.len() - 1))
    }

    fn free(&mut self, buffer: BufferId) {
        self.buffer(buffer);
        // A GPU waits for the copies into a buffer before it frees it.
        self.pending.retain(|(p, _)| p.buffer != buffer);
        self.buffers[buffer.0] = None;
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        self.unfenced("upload", &[dst]);
        self.write(dst, src);
    }

    fn upload_async(&mut self, dst: View, src: &[f32]) {
        self.check(dst);
        assert_eq!(src.len(), dst.len, "kdc-cuda emulated: upload length");
        self.unfenced("upload_async", &[dst]);
        self.pending.push((dst, src.to_vec()));
    }

    fn fence_uploads(&mut self) {
        for (dst, values) in std::mem::take(&mut self.pending) {
            self.write(dst, &values);
        }
    }

    fn overlaps_uploads(&self) -> bool {
        true
    }

    fn download(&mut self, src: View, dst: &mut [f32]) {
        assert_eq!(
            dst.len(),
            src.len,
            "kdc-cuda emulated: download of another length"
        );
        if self.error.is_some() {
            dst.fill(f32::NAN);
            return;
        }
        self.unfenced("download", &[src]);
        dst.copy_from_slice(&self.read(src));
    }

    fn launch(&mut self, l: &Launch<'_>) {
        let steps = dispatch::plan(l.op, l.input_shapes, l.shape, l.dtype)
            .unwrap_or_else(|e| panic!("kdc-cuda emulated: {e}"));
        assert_eq!(
            l.output.len,
            kdc_backend::numel(l.shape),
            "kdc-cuda emulated: {}: output view of another size",
            l.op.kind()
        );
        let mut views: Vec<View> = l.inputs.to_vec();
        views.push(l.output);
        views.push(l.scratch);
        self.unfenced(l.op.kind(), &views);
        let n = l.inputs.len();
        let fresh: Vec<bool> = (0..n + 2).map(|i| i >= n).collect();
        let written: Vec<bool> = (0..n + 2).map(|i| i == n).collect();
        self.run(l.op.kind(), &steps, &views, &fresh, &written);
    }

    fn copy(&mut self, dst: View, src: View) {
        assert_disjoint("copy", &[dst, src]);
        self.in_place("copy", launch::copy(dst.len), &[src, dst], &[false, true]);
    }

    fn add_into(&mut self, dst: View, src: View) {
        assert_disjoint("add_into", &[dst, src]);
        self.in_place(
            "add_into",
            launch::add_into(dst.len),
            &[dst, src],
            &[true, false],
        );
    }

    fn scale(&mut self, x: View, factor: f32) {
        self.in_place("scale", launch::scale(x.len, factor), &[x], &[true]);
    }

    fn lerp(&mut self, dst: View, src: View, weight: f32) {
        assert_disjoint("lerp", &[dst, src]);
        self.in_place(
            "lerp",
            launch::lerp(dst.len, weight),
            &[dst, src],
            &[true, false],
        );
    }

    fn clamp(&mut self, x: View, lo: f32, hi: f32) {
        self.in_place("clamp", launch::clamp(x.len, lo, hi), &[x], &[true]);
    }

    fn l2_norm(&mut self, xs: &[View]) -> f64 {
        let mut total = 0f64;
        for &x in xs {
            let (call, blocks) = launch::sum_squares(x.len);
            // The f64 partial sums in a buffer of the backend's own (2 floats each).
            let partial = self
                .alloc(2 * blocks)
                .expect("a few floats of partial sums");
            let pv = View::whole(partial, 2 * blocks);
            self.in_place("l2_norm", call, &[x, pv], &[false, true]);
            total += self.buffer(partial).read::<f64>().iter().sum::<f64>();
            self.buffers.pop();
        }
        if self.error.is_some() {
            return f64::NAN;
        }
        total.sqrt()
    }

    fn adamw(&mut self, param: View, grad: View, m: View, v: View, hyper: &AdamW) {
        assert_disjoint("adamw", &[param, grad, m, v]);
        self.in_place(
            "adamw",
            launch::adamw(param.len, hyper),
            &[param, grad, m, v],
            &[true, false, true, true],
        );
    }

    fn synchronize(&mut self) {}

    fn take_error(&mut self) -> Option<BackendError> {
        self.error.take()
    }
}
