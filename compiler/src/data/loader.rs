//! Batches from a data set, prepared by worker threads ahead of the step.
//!
//! Samples are read in a seeded permutation per epoch (`shuffle`) or in order. Workers take
//! positions of that stream, read and decode the sample, preprocess its image for every
//! distinct preprocessing the models need (with the training augmentation when asked, its
//! randomness drawn from the seed, the epoch and the sample) and tokenize its caption for every
//! distinct tokenizer; the loader puts the results back in stream order, so batches do not
//! depend on thread timing. A sample that cannot be read is skipped and counted. A batch never
//! spans two epochs: the last partial batch of an epoch is left out, as open_clip's training
//! loaders drop it.
//!
//! The loader's [`Position`] (epoch, place in the epoch's permutation) is part of a checkpoint:
//! a loader started at a saved position yields exactly the batches that would have followed.

use super::image::{eval_transform, train_transform};
use super::{DataError, Dataset};
use crate::engine::rng::Rng;
use crate::model::PreprocessSpec;
use crate::tokenize::{Encoded, Tokenizer};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Where a loader is in its data: the epoch, and how many entries of that epoch's permutation
/// were consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub cursor: usize,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub batch: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Training augmentation (`RandomResizedCrop` with this scale), or the evaluation
    /// transform when `None`.
    pub augment: Option<(f64, f64)>,
    pub workers: usize,
    /// How many batches may be prepared ahead.
    pub prefetch: usize,
    /// The run stops when more than this fraction of the samples read (and more than
    /// `min_bad`) could not be read.
    pub max_bad_fraction: f64,
    pub min_bad: usize,
    /// Whether [`Loader::next_in_epoch`] ends an epoch with its partial batch (evaluation reads
    /// every sample) rather than leaving it out.
    pub keep_last: bool,
}

impl Options {
    pub fn new(batch: usize, seed: u64, shuffle: bool, augment: Option<(f64, f64)>) -> Options {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            batch,
            seed,
            shuffle,
            augment,
            workers: (cores / 2).clamp(1, 4),
            prefetch: 2,
            max_bad_fraction: 0.01,
            min_bad: 20,
            keep_last: false,
        }
    }
}

/// One sample, ready for the models.
struct Prepared {
    pixels: Vec<Vec<f32>>,
    tokens: Vec<Encoded>,
    label: Option<usize>,
    caption: String,
    image_id: Option<String>,
}

/// A batch: per distinct preprocessing, the images [batch, 3, crop, crop]; per distinct
/// tokenizer, the captions; the labels and captions as read.
pub struct Batch {
    pub pixels: Vec<Vec<f32>>,
    pub tokens: Vec<Vec<Encoded>>,
    pub labels: Vec<Option<usize>>,
    pub captions: Vec<String>,
    pub image_ids: Vec<Option<String>>,
    /// The dataset index of each sample.
    pub indices: Vec<usize>,
    /// The epoch the batch belongs to.
    pub epoch: u64,
}

/// What a loader counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub read: usize,
    pub skipped: usize,
    /// The first few reasons, for the report.
    pub examples: Vec<String>,
}

struct Shared {
    dataset: Arc<dyn Dataset>,
    views: Vec<PreprocessSpec>,
    tokenizers: Vec<Arc<Tokenizer>>,
    options: Options,
    start: Position,
    /// Stream positions handed out to workers.
    next: AtomicU64,
    /// Stream positions the consumer has taken (workers stay within a window ahead of it).
    consumed: Mutex<u64>,
    moved: Condvar,
    stop: AtomicBool,
    permutations: Mutex<HashMap<u64, Arc<Vec<usize>>>>,
}

impl Shared {
    /// The epoch and permutation entry of stream position `s`.
    fn locate(&self, s: u64) -> (u64, usize) {
        let n = self.dataset.len() as u64;
        let at = self.start.cursor as u64 + s;
        (self.start.epoch + at / n, (at % n) as usize)
    }

    fn permutation(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut cache = self.permutations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&epoch) {
            return p.clone();
        }
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.options.shuffle {
            let mut rng = Rng::derive(self.options.seed, &format!("epoch:{epoch}"));
            for i in (1..n).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        let p = Arc::new(order);
        cache.retain(|&e, _| e + 2 > epoch);
        cache.insert(epoch, p.clone());
        p
    }

    fn prepare(&self, index: usize, epoch: u64) -> Result<Prepared, String> {
        let sample = self.dataset.sample(index, epoch)?;
        let mut rng = Rng::derive(
            self.options.seed ^ epoch.wrapping_mul(0x9E37_79B9),
            &format!("augment:{index}"),
        );
        let pixels = self
            .views
            .iter()
            .map(|spec| {
                let mut out = vec![0.0; 3 * (spec.crop * spec.crop) as usize];
                match self.options.augment {
                    Some(scale) => train_transform(&sample.image, spec, scale, &mut rng, &mut out),
                    None => eval_transform(&sample.image, spec, &mut out),
                }
                out
            })
            .collect();
        let tokens = self
            .tokenizers
            .iter()
            .map(|t| t.encode(&sample.caption))
            .collect();
        Ok(Prepared {
            pixels,
            tokens,
            label: sample.label,
            caption: sample.caption,
            image_id: sample.image_id,
        })
    }
}

type Item = (u64, usize, Result<Prepared, String>);

pub struct Loader {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    results: Receiver<Item>,
    pending: BTreeMap<u64, Item>,
    /// The next stream position to take.
    taken: u64,
    position: Position,
    stats: Stats,
}

impl Loader {
    /// Starts the workers. `views` and `tokenizers` are the distinct preprocessings and
    /// tokenizers the models need; a batch holds one tensor per view and per tokenizer.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        views: Vec<PreprocessSpec>,
        tokenizers: Vec<Arc<Tokenizer>>,
        options: Options,
        start: Position,
    ) -> Result<Loader, DataError> {
        if dataset.len() < options.batch {
            return Err(DataError::TooSmall(dataset.describe(), options.batch));
        }
        let window = (options.batch * (options.prefetch + 1)) as u64;
        let shared = Arc::new(Shared {
            dataset,
            views,
            tokenizers,
            options,
            start,
            next: AtomicU64::new(0),
            consumed: Mutex::new(0),
            moved: Condvar::new(),
            stop: AtomicBool::new(false),
            permutations: Mutex::new(HashMap::new()),
        });
        let (send, results) = sync_channel::<Item>(window as usize);
        let workers = (0..shared.options.workers)
            .map(|w| {
                let shared = shared.clone();
                let send = send.clone();
                std::thread::Builder::new()
                    .name(format!("kdc-data-{w}"))
                    .spawn(move || loop {
                        if shared.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let s = shared.next.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut consumed =
                                shared.consumed.lock().unwrap_or_else(|e| e.into_inner());
                            while s >= *consumed + window && !shared.stop.load(Ordering::Relaxed) {
                                consumed = shared
                                    .moved
                                    .wait(consumed)
                                    .unwrap_or_else(|e| e.into_inner());
                            }
                        }
                        if shared.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let (epoch, cursor) = shared.locate(s);
                        let index = shared.permutation(epoch)[cursor];
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            shared.prepare(index, epoch)
                        }))
                        .unwrap_or_else(|_| Err(format!("sample {index}: the decoder failed")));
                        if send.send((s, index, result)).is_err() {
                            return;
                        }
                    })
                    .expect("a worker thread")
            })
            .collect();
        Ok(Loader {
            shared,
            workers,
            results,
            pending: BTreeMap::new(),
            taken: 0,
            position: start,
            stats: Stats::default(),
        })
    }

    /// Where the next batch starts.
    pub fn position(&self) -> Position {
        self.position
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.shared.dataset
    }

    /// Full batches in one epoch (the last partial one is left out).
    pub fn batches_per_epoch(&self) -> usize {
        self.shared.dataset.len() / self.shared.options.batch
    }

    /// The next item of the stream, in order.
    fn take(&mut self) -> Item {
        let s = self.taken;
        let item = loop {
            if let Some(item) = self.pending.remove(&s) {
                break item;
            }
            let item = self.results.recv().expect("the data workers stopped");
            self.pending.insert(item.0, item);
        };
        self.taken += 1;
        *self
            .shared
            .consumed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.taken;
        self.shared.moved.notify_all();
        item
    }

    /// The next full batch.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        self.read(false)
            .map(|b| b.expect("a full batch always comes"))
    }

    /// The next batch of the current epoch, the last one possibly partial (with `keep_last`),
    /// or None once the epoch is over (the loader is then at the next epoch's start).
    pub fn next_in_epoch(&mut self) -> Result<Option<Batch>, DataError> {
        self.read(true)
    }

    fn read(&mut self, within_epoch: bool) -> Result<Option<Batch>, DataError> {
        let b = self.shared.options.batch;
        let mut samples: Vec<(usize, Prepared)> = Vec::with_capacity(b);
        let mut epoch = self.position.epoch;
        if within_epoch && self.position.cursor == 0 && self.taken > 0 {
            return Ok(None);
        }
        while samples.len() < b {
            if within_epoch && self.position.epoch != epoch {
                break;
            }
            let (s, index, result) = self.take();
            let (e, cursor) = self.shared.locate(s);
            if e != epoch {
                // A new epoch: the partial batch of the last one is left out.
                samples.clear();
                epoch = e;
            }
            self.position = Position {
                epoch: e,
                cursor: cursor + 1,
            };
            if self.position.cursor == self.shared.dataset.len() {
                self.position = Position {
                    epoch: e + 1,
                    cursor: 0,
                };
            }
            self.stats.read += 1;
            match result {
                Ok(p) => samples.push((index, p)),
                Err(why) => {
                    self.stats.skipped += 1;
                    if self.stats.examples.len() < 5 {
                        self.stats.examples.push(why);
                    }
                    let o = &self.shared.options;
                    let limit = (o.max_bad_fraction * self.stats.read as f64).max(o.min_bad as f64);
                    if self.stats.skipped as f64 > limit {
                        return Err(DataError::TooManyBad {
                            skipped: self.stats.skipped,
                            read: self.stats.read,
                            limit: format!(
                                "{} % of those read, and {}",
                                o.max_bad_fraction * 100.0,
                                o.min_bad
                            ),
                            examples: self
                                .stats
                                .examples
                                .iter()
                                .map(|e| format!("  {e}"))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        });
                    }
                }
            }
        }
        if samples.is_empty() {
            return Ok(None);
        }
        if samples.len() < b && !(within_epoch && self.shared.options.keep_last) {
            return Ok(None);
        }
        let views = self.shared.views.len();
        let tokenizers = self.shared.tokenizers.len();
        let mut batch = Batch {
            pixels: vec![Vec::new(); views],
            tokens: vec![Vec::with_capacity(b); tokenizers],
            labels: Vec::with_capacity(b),
            captions: Vec::with_capacity(b),
            image_ids: Vec::with_capacity(b),
            indices: Vec::with_capacity(b),
            epoch,
        };
        for (index, p) in samples {
            for (v, px) in p.pixels.into_iter().enumerate() {
                batch.pixels[v].extend(px);
            }
            for (t, tok) in p.tokens.into_iter().enumerate() {
                batch.tokens[t].push(tok);
            }
            batch.labels.push(p.label);
            batch.captions.push(p.caption);
            batch.image_ids.push(p.image_id);
            batch.indices.push(index);
        }
        Ok(Some(batch))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.moved.notify_all();
        // Unblock workers waiting to send.
        while self.results.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            while !w.is_finished() {
                while self.results.try_recv().is_ok() {}
                self.shared.moved.notify_all();
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}
