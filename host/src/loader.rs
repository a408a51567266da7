//! The one data loader: reads samples from a dataset plugin, applies each view group's
//! transform pipeline (in worker threads), and collates one contiguous buffer per view group.
//! Training, validation, the online linear head, classifiers, `embed`, `predict` and `preview`
//! all read through it; a [`crate::sampler::Sampler`] decides which samples form each batch.
//!
//! Every random choice is a pure function of (seed, epoch, sample index, view): the augmentation
//! stream of a sample view comes from (source seed, epoch, index, view, transform position), so
//! batches do not depend on the number of worker threads.
//!
//! With `skip_unreadable_images`, a sample the dataset cannot read is replaced in its batch by
//! a stand-in, the next readable sample in dataset order, augmented with the seeds of the
//! position it fills ([`Source::replace_unreadable`]): every process, and one process with the
//! global batch, chooses the same, so batches keep their size on every rank (collectives and
//! per-batch random draws assume it) and a run on N processes still equals one on one process.

use crate::batch_pipeline::BatchPipeline;
use crate::config::{AugmentOn, RunConfig, TransformSpec};
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::seeds::seed_of;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{Findings, Image, Pixels, PluginError, Sample};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// `count` views of every sample, each through `pipeline` with its own seed. With
/// `on_device`, `pipeline` is only what workers do before collating (nothing, or a resize to
/// one size) and the views are made from one decoded copy per sample by `on_device`, batched,
/// where the model runs ([`Batch::to_device`]).
#[derive(Clone)]
pub struct ViewGroup {
    pub pipeline: Arc<Pipeline>,
    pub count: usize,
    pub on_device: Option<Arc<BatchPipeline>>,
    /// With `on_device`: the square size `pipeline` resizes to (images of that size skip it and
    /// stay 8-bit).
    pub decode_size: Option<u32>,
}

impl ViewGroup {
    /// A group augmented by the workers.
    pub fn workers(pipeline: Arc<Pipeline>, count: usize) -> ViewGroup {
        ViewGroup {
            pipeline,
            count,
            on_device: None,
            decode_size: None,
        }
    }

    /// The group of `count` views through the transforms `specs` (`what` names the list in
    /// errors), augmented where `config.augment_on` says.
    pub fn build(
        registry: &Registry,
        config: &RunConfig,
        specs: &[TransformSpec],
        count: usize,
        what: &str,
    ) -> Result<ViewGroup> {
        let fuse = config.fuse_augmentations;
        match config.augment_on {
            AugmentOn::Workers => Ok(ViewGroup::workers(
                Arc::new(Pipeline::build_with(registry, specs, what, fuse)?),
                count,
            )),
            AugmentOn::Device => {
                let size = config.device_input_size;
                let decode: Vec<TransformSpec> = if size == 0 {
                    Vec::new()
                } else {
                    let size = toml::Value::Integer(size as i64);
                    vec![TransformSpec {
                        name: "Resize".into(),
                        params: toml::Table::from_iter([(
                            "size".to_string(),
                            toml::Value::Array(vec![size.clone(), size]),
                        )]),
                    }]
                };
                Ok(ViewGroup {
                    pipeline: Arc::new(
                        Pipeline::build_with(registry, &decode, "device_input_size", fuse)
                            .context("the resize of `device_input_size`")?,
                    ),
                    count,
                    on_device: Some(Arc::new(BatchPipeline::build(registry, specs, what, fuse)?)),
                    decode_size: (size > 0).then_some(size as u32),
                })
            }
        }
    }
}

/// How the seed of a sample view is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Seeds {
    /// Training and validation: `seed_of([seed, epoch, index, view])`, a new augmentation every
    /// epoch.
    PerEpoch(u64),
    /// Evaluation outputs (`embed`, `predict`): `seed_of([seed, index])`, so a random transform
    /// gives the same output on every run.
    Fixed(u64),
}

/// What a loader reads: a dataset, its view groups, and the seed of its random stream.
pub struct Source {
    pub dataset: Arc<DatasetHandle>,
    pub groups: Vec<ViewGroup>,
    pub seeds: Seeds,
    pub name: String,
    /// Skip samples the dataset cannot read (`skip_unreadable_images`) instead of failing.
    pub skip_unreadable: bool,
    /// What skipping does with the sample's row. `true` (the default): a stand-in fills it
    /// (the next readable sample in dataset order, see the module documentation) and the
    /// batch keeps its size, as training and validation need: every process's batches must
    /// keep one shape. `false`: the row is left out (one row fewer), for passes that list every
    /// sample once with its id (`embed`, `predict`), where a repeated sample would be wrong.
    pub replace_unreadable: bool,
    /// Whether to mention `--skip_unreadable_images` in the error for an unreadable sample.
    pub suggest_skipping: bool,
    /// Expand one-channel images to this many identical channels (3 for an RGB encoder).
    pub expand_to: Option<usize>,
    /// The end of the error for samples of different sizes in one batch.
    pub size_hint: String,
    /// Collate into pinned host memory for fast asynchronous copies to this (CUDA) device.
    pub pin_for: Option<Device>,
    /// The samples skipped so far: index -> the error (see [`Source::skipped_report`]).
    skipped: Mutex<BTreeMap<usize, String>>,
    /// Where the workers' time goes (summed over threads).
    pub stats: LoaderStats,
    /// The dataset's shards when it is packed: one in object storage has each shard fetched
    /// before the first read of one of its samples.
    shards: Option<Arc<crate::shards::Shards>>,
}

/// Time spent by the loader's threads, summed over threads, in nanoseconds.
#[derive(Default, Debug)]
pub struct LoaderStats {
    /// Reading and decoding samples (the dataset's `get`).
    pub decode_ns: AtomicU64,
    /// The workers' transforms (all views).
    pub augment_ns: AtomicU64,
    /// Whole collations (decode + augment + copying into the batch buffers).
    pub collate_ns: AtomicU64,
    /// Samples collated.
    pub samples: AtomicU64,
}

impl LoaderStats {
    /// (decode, augment, collate) seconds and samples so far.
    pub fn snapshot(&self) -> (f64, f64, f64, u64) {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        (
            s(&self.decode_ns),
            s(&self.augment_ns),
            s(&self.collate_ns),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

impl Source {
    /// A source of `groups` views per sample for training or validation: unreadable samples
    /// fail the run (unless `skip_unreadable` is set).
    pub fn new(
        dataset: Arc<DatasetHandle>,
        groups: Vec<ViewGroup>,
        seeds: Seeds,
        name: &str,
    ) -> Source {
        Source {
            groups,
            seeds,
            name: name.to_string(),
            skip_unreadable: false,
            replace_unreadable: true,
            suggest_skipping: true,
            expand_to: None,
            size_hint: "add a Resize/crop transform so all images have one size".into(),
            pin_for: None,
            skipped: Mutex::new(BTreeMap::new()),
            stats: LoaderStats::default(),
            shards: crate::shards::of(&dataset),
            dataset,
        }
    }

    /// A source of one view per sample through `pipeline`.
    pub fn single(
        dataset: Arc<DatasetHandle>,
        pipeline: Arc<Pipeline>,
        seeds: Seeds,
        name: &str,
    ) -> Source {
        Source::new(dataset, vec![ViewGroup::workers(pipeline, 1)], seeds, name)
    }

    /// Number of views per sample, over all groups.
    pub fn views(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Number of distinct samples found unreadable so far by this process (at their place in
    /// a batch or while looking for a stand-in), and the first one's error.
    pub fn skipped_report(&self) -> (usize, Option<String>) {
        let skipped = self.skipped.lock().expect("skipped list");
        (
            skipped.len(),
            skipped
                .iter()
                .next()
                .map(|(i, e)| format!("sample {i}: {e}")),
        )
    }

    /// The samples found unreadable so far by this process, in order.
    pub fn skipped_indices(&self) -> Vec<usize> {
        self.skipped
            .lock()
            .expect("skipped list")
            .keys()
            .copied()
            .collect()
    }

    /// The seed of view `view` (counted over all groups) of sample `index` in `epoch`.
    pub fn view_seed(&self, epoch: u64, index: usize, view: usize) -> u64 {
        match self.seeds {
            Seeds::PerEpoch(seed) => seed_of(&[seed, epoch, index as u64, view as u64]),
            Seeds::Fixed(seed) => seed_of(&[seed, index as u64]),
        }
    }

    /// The views of one decoded image in `epoch`, in group order (the image is decoded once
    /// for all of them). A group augmented on the device gives one image (its workers' part)
    /// instead of its views.
    pub fn views_of(&self, image: &Image, epoch: u64, index: usize) -> Result<Vec<Image>> {
        let mut out = Vec::with_capacity(self.views());
        let mut view = 0;
        for group in &self.groups {
            if group.on_device.is_some() {
                // Without `decode_size` the workers' pipeline is empty.
                let sized = group
                    .decode_size
                    .is_none_or(|s| image.width() == s && image.height() == s);
                out.push(if sized {
                    image.clone()
                } else {
                    group
                        .pipeline
                        .apply(image.clone(), self.view_seed(epoch, index, view))?
                });
                view += group.count;
                continue;
            }
            for _ in 0..group.count {
                out.push(
                    group
                        .pipeline
                        .apply(image.clone(), self.view_seed(epoch, index, view))?,
                );
                view += 1;
            }
        }
        Ok(out)
    }

    /// The dataset's sample `index`, timed as decoding.
    fn get(&self, index: usize) -> ssl_plugin_api::Result<Sample> {
        let started = Instant::now();
        let got = self.dataset.get(index);
        self.stats
            .decode_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        got
    }

    /// Makes sample `index`'s shard readable when the dataset is in object storage: a failure
    /// there (the server, a digest) stops the pass; it is not an unreadable image to skip.
    fn fetch(&self, index: usize) -> Result<()> {
        match &self.shards {
            Some(shards) => shards
                .ensure(index)
                .with_context(|| format!("{} sample {index}", self.name)),
            None => Ok(()),
        }
    }

    /// Records sample `index` as unreadable (see [`Source::skipped_report`]).
    fn note_unreadable(&self, index: usize, error: &PluginError) {
        self.skipped
            .lock()
            .expect("skipped list")
            .entry(index)
            .or_insert_with(|| error.message());
    }

    fn known_unreadable(&self, index: usize) -> bool {
        self.skipped
            .lock()
            .expect("skipped list")
            .contains_key(&index)
    }

    /// What fills `position` of a batch, with the index it was read from: the sample itself;
    /// when it is unreadable and skipping is on, its stand-in ([`Source::stand_in`]) or, without
    /// [`Source::replace_unreadable`], nothing. Without skipping, an error naming the sample.
    fn read(&self, position: usize) -> Result<Option<(usize, Sample)>> {
        self.fetch(position)?;
        match self.get(position) {
            Ok(sample) => Ok(Some((position, sample))),
            Err(e) if self.skip_unreadable => {
                self.note_unreadable(position, &e);
                if self.replace_unreadable {
                    self.stand_in(position).map(Some)
                } else {
                    Ok(None)
                }
            }
            Err(e) if self.suggest_skipping => Err(anyhow::Error::new(e).context(format!(
                "{} sample {position} (set --skip_unreadable_images=true to skip such images)",
                self.name
            ))),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("{} sample {position}", self.name)))
            }
        }
    }

    /// The stand-in of the unreadable sample `position`, with its index: the first readable
    /// sample after it in dataset order, wrapping around at the end; samples already found
    /// unreadable are passed over without reading them again, so a search reads each sample
    /// once at most. It depends on the dataset alone, not on the batch, the process or the
    /// number of processes. It may lie outside the split being read (the next sample of the
    /// dataset may be a validation sample in a training batch): one repeated image per
    /// unreadable one.
    fn stand_in(&self, position: usize) -> Result<(usize, Sample)> {
        let len = self.dataset.len();
        for index in (position + 1..len).chain(0..position.min(len)) {
            if self.known_unreadable(index) {
                continue;
            }
            self.fetch(index)?;
            match self.get(index) {
                Ok(sample) => return Ok((index, sample)),
                Err(e) => self.note_unreadable(index, &e),
            }
        }
        bail!(
            "{}: sample {position} is unreadable and no other of its {len} samples can stand in \
             for it: every one is unreadable (first: {})",
            self.name,
            self.skipped_report().1.unwrap_or_default()
        )
    }

    /// Loads, transforms and collates the samples `indices` of `epoch`.
    pub fn collate(&self, indices: &[usize], epoch: u64) -> Result<Batch> {
        let started = Instant::now();
        let batch = self.collate_timed(indices, epoch);
        self.stats
            .collate_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        batch
    }

    fn collate_timed(&self, indices: &[usize], epoch: u64) -> Result<Batch> {
        let mut groups: Vec<GroupData> = self
            .groups
            .iter()
            .map(|g| GroupData {
                data: Vec::new(),
                count: g.count,
                shape: None,
                device: g.on_device.as_ref().map(|pipeline| DeviceViews {
                    pipeline: Arc::clone(pipeline),
                    pixels: RawPixels::U8(Vec::new()),
                    seeds: vec![Vec::new(); g.count],
                    expand_to: self.expand_to,
                }),
                pinned: None,
            })
            .collect();
        let mut labels = Vec::with_capacity(indices.len());
        let mut ids = Vec::with_capacity(indices.len());
        let mut kept = Vec::with_capacity(indices.len());
        // Per group and view, the buffer of that view (view-major within a group).
        let mut per_view: Vec<Vec<Vec<f32>>> = self
            .groups
            .iter()
            .map(|g| vec![Vec::new(); if g.on_device.is_some() { 1 } else { g.count }])
            .collect();
        let mut first: Option<(usize, String)> = None;
        for &position in indices {
            // `index`: the sample read for `position` (itself, or its stand-in); the views are
            // drawn with the seeds of `position`.
            let Some((index, sample)) = self.read(position)? else {
                continue;
            };
            let (image, label, id) = sample.into_parts();
            if first.is_none() {
                first = Some((index, id.clone()));
            }
            let augment_started = Instant::now();
            let views = self
                .views_of(&image, epoch, position)
                .with_context(|| format!("{} sample {index} ({id})", self.name))?;
            self.stats.augment_ns.fetch_add(
                augment_started.elapsed().as_nanos() as u64,
                Ordering::Relaxed,
            );
            self.stats.samples.fetch_add(1, Ordering::Relaxed);
            let mut views = views.into_iter();
            let mut first_view = 0;
            for (group, buffers) in groups.iter_mut().zip(per_view.iter_mut()) {
                if let Some(device) = &mut group.device {
                    for (v, seeds) in device.seeds.iter_mut().enumerate() {
                        seeds.push(self.view_seed(epoch, position, first_view + v));
                    }
                }
                first_view += group.count;
                for buffer in buffers.iter_mut() {
                    let out = views.next().expect("one image per view");
                    // Device groups expand after augmenting (a view of one channel there).
                    let repeat = match self.expand_to {
                        Some(n) if out.channels() == 1 && group.device.is_none() => n,
                        _ => 1,
                    };
                    let this = [
                        out.channels() as usize * repeat,
                        out.height() as usize,
                        out.width() as usize,
                    ];
                    match group.shape {
                        None => group.shape = Some(this),
                        Some(s) if s != this => {
                            let other = match &first {
                                Some((i, first_id)) if *i != index => {
                                    format!("sample {i} ({first_id}) of the same batch")
                                }
                                _ => "another view of it in the same view group".to_string(),
                            };
                            bail!(
                                "{} sample {index} ({id}) is {}×{}×{} (channels×height×width) after transforms but {other} is {}×{}×{}; {}",
                                self.name, this[0], this[1], this[2], s[0], s[1], s[2],
                                if group.device.is_some() {
                                    "with augment_on = \"device\" workers only decode: set device_input_size=N to resize every image to N×N first"
                                } else {
                                    self.size_hint.as_str()
                                }
                            )
                        }
                        Some(_) => {}
                    }
                    match &mut group.device {
                        Some(device) => device.pixels.push_chw(&out),
                        None => push_chw(buffer, &out, repeat),
                    }
                }
            }
            kept.push(index);
            labels.push(label);
            ids.push(id);
        }
        if kept.is_empty() && !indices.is_empty() {
            bail!(
                "{}: every sample of a batch was unreadable ({} samples, first: {})",
                self.name,
                indices.len(),
                self.skipped_report().1.unwrap_or_default()
            );
        }
        for (group, buffers) in groups.iter_mut().zip(per_view) {
            if group.device.is_none() {
                for v in buffers {
                    group.data.extend_from_slice(&v);
                }
            }
            if let Some(device) = self.pin_for {
                group.pin(kept.len(), device);
            }
        }
        Ok(Batch {
            groups,
            labels,
            indices: kept,
            ids,
        })
    }
}

/// `t` (`[N, C, H, W]`) in channels-last memory order (NHWC strides, the same logical shape):
/// what cuDNN's fastest convolutions use under mixed precision.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Appends `image` as f32 in [0, 1], channel-major (CHW), each channel `repeat` times in a row
/// of planes (a one-channel image expanded to `repeat` identical channels).
fn push_chw(buffer: &mut Vec<f32>, image: &Image, repeat: usize) {
    let c = image.channels() as usize;
    let n = image.width() as usize * image.height() as usize;
    let start = buffer.len();
    buffer.resize(start + n * c, 0.0);
    let planes = &mut buffer[start..];
    fn spread<T: Copy>(planes: &mut [f32], hwc: &[T], c: usize, n: usize, f: impl Fn(T) -> f32) {
        if c == 1 {
            for (d, &x) in planes.iter_mut().zip(hwc) {
                *d = f(x);
            }
            return;
        }
        for (i, px) in hwc.chunks_exact(c).enumerate().take(n) {
            for (ch, &x) in px.iter().enumerate() {
                planes[ch * n + i] = f(x);
            }
        }
    }
    match image.pixels() {
        Pixels::U8(v) => spread(planes, v, c, n, |x| x as f32 / 255.0),
        Pixels::U16(v) => spread(planes, v, c, n, |x| x as f32 / 65535.0),
        Pixels::F32(v) => spread(planes, v, c, n, |x| x),
    }
    for _ in 1..repeat {
        buffer.extend_from_within(start..start + n * c);
    }
}

/// The views of one group of a batch: `count` views of every sample, one contiguous buffer
/// `[count * len, C, H, W]` (view-major); for a group augmented on the device, one decoded
/// image per sample and the seeds of its views instead.
pub struct GroupData {
    pub data: Vec<f32>,
    pub count: usize,
    /// `[C, H, W]` (of the decoded images for a device group); `None` for an empty batch.
    pub shape: Option<[usize; 3]>,
    /// The device part of a group augmented there.
    pub device: Option<DeviceViews>,
    /// The group's pixels already in pinned host memory (`[N, C, H, W]`, see
    /// [`Source::pin_for`]); `data` / the raw pixels are then empty.
    pub pinned: Option<Tensor>,
}

/// What a group augmented on the device carries from the workers.
pub struct DeviceViews {
    pub pipeline: Arc<BatchPipeline>,
    /// One decoded image per sample, `[N, C, H, W]`.
    pub pixels: RawPixels,
    /// Per view of the group, the seed of that view of each sample.
    pub seeds: Vec<Vec<u64>>,
    /// Expand one-channel results to this many channels (a broadcast view).
    pub expand_to: Option<usize>,
}

/// Decoded pixels: 8-bit as read (a quarter of the bytes to move), or float.
pub enum RawPixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl RawPixels {
    /// Appends `image` channel-major; 8-bit stays 8-bit while every image so far is 8-bit.
    fn push_chw(&mut self, image: &Image) {
        let c = image.channels() as usize;
        if let (RawPixels::U8(buffer), Pixels::U8(v)) = (&mut *self, image.pixels()) {
            buffer.reserve(v.len());
            if c == 1 {
                // Grey (chest X-rays): already channel-major, one copy.
                buffer.extend_from_slice(v);
            } else {
                for ch in 0..c {
                    buffer.extend(v.iter().skip(ch).step_by(c));
                }
            }
            return;
        }
        if let RawPixels::U8(buffer) = self {
            let floats = buffer.iter().map(|&x| x as f32 / 255.0).collect();
            *self = RawPixels::F32(floats);
        }
        if let RawPixels::F32(buffer) = self {
            push_chw(buffer, image, 1);
        }
    }

    fn tensor(&self) -> Tensor {
        match self {
            RawPixels::U8(v) => Tensor::from_slice(v),
            RawPixels::F32(v) => Tensor::from_slice(v),
        }
    }
}

impl GroupData {
    /// Number of images the host buffer holds (views for worker groups, samples for device ones).
    fn host_tensor(&self, samples: usize) -> Tensor {
        let [c, h, w] = self.shape.unwrap_or([0, 0, 0]);
        let n = match self.device {
            Some(_) => samples,
            None => self.count * samples,
        };
        let flat = match (&self.pinned, &self.device) {
            (Some(t), _) => return t.shallow_clone(),
            (None, Some(device)) => device.pixels.tensor(),
            (None, None) => Tensor::from_slice(&self.data),
        };
        flat.view([n as i64, c as i64, h as i64, w as i64])
    }

    /// Moves the host pixels into pinned memory for `device` (frees the plain buffers).
    fn pin(&mut self, samples: usize, device: Device) {
        if self.shape.is_none() {
            return;
        }
        let pinned = self.host_tensor(samples).pin_memory(device);
        self.data = Vec::new();
        if let Some(d) = &mut self.device {
            d.pixels = RawPixels::U8(Vec::new());
        }
        self.pinned = Some(pinned);
    }

    /// The group's views on `device`, in view order.
    fn views_on(&self, samples: usize, device: Device) -> Result<Vec<Tensor>> {
        let host = self.host_tensor(samples);
        let on = if device == Device::Cpu {
            host
        } else {
            // Asynchronous when the host buffer is pinned.
            let kind = host.kind();
            host.to_device_(device, kind, self.pinned.is_some(), false)
        };
        let Some(dev) = &self.device else {
            return Ok(on.chunk(self.count as i64, 0));
        };
        let x = match on.kind() {
            Kind::Uint8 => on.to_kind(Kind::Float) / 255.0,
            _ => on,
        };
        let x = if self.count > 1 {
            x.repeat([self.count as i64, 1, 1, 1])
        } else {
            x
        };
        let seeds: Vec<u64> = dev.seeds.iter().flatten().copied().collect();
        let mut y = dev.pipeline.apply(&x, &seeds)?;
        if let (Some(n), Some(1)) = (dev.expand_to, y.size().get(1).copied()) {
            let s = y.size();
            y = y.expand([s[0], n as i64, s[2], s[3]], false);
        }
        Ok(y.chunk(self.count as i64, 0))
    }
}

/// A collated batch: the views of each group, with labels, dataset indices and sample ids.
pub struct Batch {
    pub groups: Vec<GroupData>,
    pub labels: Vec<Option<i64>>,
    pub indices: Vec<usize>,
    pub ids: Vec<String>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// All views as tensors on `device`, in group order: each group's buffer moves once, then
    /// is split into its views; a group augmented on the device is augmented there first.
    pub fn to_device(&self, device: Device) -> Result<Vec<Tensor>> {
        let mut views = Vec::new();
        for group in &self.groups {
            views.extend(group.views_on(self.len(), device)?);
        }
        Ok(views)
    }

    /// The first view on `device` (sources of one view: the linear head, classifiers,
    /// evaluation).
    pub fn images(&self, device: Device) -> Result<Tensor> {
        Ok(self.to_device(device)?.swap_remove(0))
    }

    /// Labels as an int64 tensor; an error naming the first sample without a label or with
    /// one outside `0..num_classes` (a plugin's bug that libtorch's loss would abort on).
    pub fn label_tensor(&self, device: Device, num_classes: usize) -> Result<Tensor> {
        let labels: Vec<i64> = self
            .labels
            .iter()
            .zip(&self.indices)
            .map(|(l, i)| match *l {
                None => {
                    bail!("sample {i} has no label, but the linear head needs labelled data")
                }
                Some(l) if l < 0 || l as u64 >= num_classes as u64 => bail!(
                    "sample {i} has label {l}, outside the dataset's {num_classes} classes \
                     (0..={})",
                    num_classes as i64 - 1
                ),
                Some(l) => Ok(l),
            })
            .collect::<Result<_>>()?;
        Ok(upload(Tensor::from_slice(&labels), device))
    }

    /// The findings of the first `rows` samples, row-major `[rows, F]` (1 present, 0 absent,
    /// -1 unknown), looked up by dataset index in `findings`, the table of the batch's
    /// dataset; an error naming the first sample the table does not cover.
    pub fn finding_rows(&self, findings: &Findings, rows: usize) -> Result<Vec<i8>> {
        let mut out = Vec::with_capacity(rows.min(self.len()) * findings.names().len());
        for &i in self.indices.iter().take(rows) {
            if i >= findings.len() {
                bail!(
                    "sample {i} has no findings: the dataset's table of findings has {} rows",
                    findings.len()
                );
            }
            out.extend_from_slice(findings.of(i));
        }
        Ok(out)
    }

    /// The findings of every sample as a float tensor `[len, F]` (1, 0, or -1 for unknown) on
    /// `device`, the targets of a multi-label head; see [`Batch::finding_rows`].
    pub fn finding_tensor(&self, device: Device, findings: &Findings) -> Result<Tensor> {
        let rows = self.finding_rows(findings, self.len())?;
        let values: Vec<f32> = rows.iter().map(|&v| v as f32).collect();
        Ok(upload(
            Tensor::from_slice(&values).view([self.len() as i64, findings.names().len() as i64]),
            device,
        ))
    }
}

/// `t`, a small host tensor made for this step (labels, flags), on `device` without waiting
/// for it: a non-blocking copy, which CUDA stages from host memory at once (a blocking copy of
/// pageable memory synchronises the stream, waiting for every kernel queued before it).
pub fn upload(t: Tensor, device: Device) -> Tensor {
    if device == Device::Cpu {
        return t;
    }
    t.to_device_(device, t.kind(), true, false)
}

/// Produces the batches of one pass in order, with `workers` threads preparing up to
/// `2 × workers` batches ahead (none: everything happens in the calling thread).
pub struct BatchStream {
    source: Arc<Source>,
    epoch: u64,
    plan: Vec<Vec<usize>>,
    next: usize,
    sent: usize,
    jobs: Option<mpsc::Sender<(usize, Vec<usize>)>>,
    results: Option<mpsc::Receiver<(usize, Result<Batch>)>>,
    ready: BTreeMap<usize, Result<Batch>>,
    threads: Vec<JoinHandle<()>>,
    prefetch: usize,
    bar: Option<ProgressBar>,
    /// Tells the worker threads to stop taking jobs (the stream was dropped early).
    stop: Arc<AtomicBool>,
}

impl BatchStream {
    /// Starts streaming `plan` (dataset indices per batch, from a sampler) of `epoch`.
    pub fn new(
        source: Arc<Source>,
        epoch: u64,
        plan: Vec<Vec<usize>>,
        workers: usize,
    ) -> BatchStream {
        let mut stream = BatchStream {
            source,
            epoch,
            plan,
            next: 0,
            sent: 0,
            jobs: None,
            results: None,
            ready: BTreeMap::new(),
            threads: Vec::new(),
            prefetch: 2 * workers,
            bar: None,
            stop: Arc::new(AtomicBool::new(false)),
        };
        if workers > 0 && !stream.plan.is_empty() {
            let (job_tx, job_rx) = mpsc::channel::<(usize, Vec<usize>)>();
            let (res_tx, res_rx) = mpsc::channel();
            let job_rx = Arc::new(Mutex::new(job_rx));
            for _ in 0..workers.min(stream.plan.len()) {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                let source = Arc::clone(&stream.source);
                let stop = Arc::clone(&stream.stop);
                let epoch = stream.epoch;
                stream.threads.push(std::thread::spawn(move || loop {
                    let job = match job_rx.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => break,
                    };
                    let Ok((n, indices)) = job else { break };
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A panic in plugin-free host code of a worker becomes this batch's error
                    // instead of a stream that waits forever.
                    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        source.collate(&indices, epoch)
                    }))
                    .unwrap_or_else(|_| {
                        Err(anyhow!(
                            "a data-loading thread panicked while preparing a batch of {}",
                            source.name
                        ))
                    });
                    if res_tx.send((n, batch)).is_err() {
                        break;
                    }
                }));
            }
            stream.jobs = Some(job_tx);
            stream.results = Some(res_rx);
            stream.top_up();
        }
        stream
    }

    /// Shows a progress bar of the samples delivered (on a terminal only), labelled `what`.
    pub fn with_progress(mut self, what: &str) -> BatchStream {
        if std::io::stderr().is_terminal() {
            let total: usize = self.plan.iter().map(Vec::len).sum();
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            self.bar = Some(bar);
        }
        self
    }

    /// Number of batches in the pass.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    /// Whether the pass has no batches.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    fn top_up(&mut self) {
        if let Some(jobs) = &self.jobs {
            while self.sent < self.plan.len() && self.sent < self.next + self.prefetch {
                let _ = jobs.send((self.sent, self.plan[self.sent].clone()));
                self.sent += 1;
            }
        }
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.plan.len() {
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            return None;
        }
        let n = self.next;
        let batch = match &self.results {
            None => self.source.collate(&self.plan[n], self.epoch),
            Some(results) => loop {
                if let Some(b) = self.ready.remove(&n) {
                    break b;
                }
                match results.recv() {
                    Ok((k, b)) => {
                        self.ready.insert(k, b);
                    }
                    Err(_) => break Err(anyhow!("data-loading threads stopped unexpectedly")),
                }
            },
        };
        self.next += 1;
        self.top_up();
        if let Some(bar) = &self.bar {
            bar.inc(self.plan[n].len() as u64);
        }
        Some(batch)
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.jobs = None;
        self.results = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::sampler::{Order, Sampler};
    use ssl_plugin_api::Params;

    #[test]
    fn labels_outside_the_classes_are_an_error_naming_the_sample() {
        let batch = |labels: Vec<Option<i64>>| Batch {
            groups: vec![GroupData {
                data: vec![0.0; labels.len()],
                shape: Some([1, 1, 1]),
                count: 1,
                device: None,
                pinned: None,
            }],
            indices: (10..10 + labels.len()).collect(),
            ids: vec![String::new(); labels.len()],
            labels,
        };
        let ok = batch(vec![Some(0), Some(2)])
            .label_tensor(Device::Cpu, 3)
            .unwrap();
        assert_eq!(Vec::<i64>::try_from(&ok).unwrap(), vec![0, 2]);
        for (labels, needle) in [
            (
                vec![Some(0), Some(3)],
                "sample 11 has label 3, outside the dataset's 3 classes",
            ),
            (vec![Some(-1), Some(0)], "sample 10 has label -1"),
            (vec![Some(1), None], "sample 11 has no label"),
        ] {
            let e = batch(labels).label_tensor(Device::Cpu, 3).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn findings_are_looked_up_by_dataset_index() {
        let findings =
            Findings::new(vec!["A".into(), "B".into()], vec![1, 0, -1, 1, 0, 0]).unwrap();
        let batch = |indices: Vec<usize>| Batch {
            groups: Vec::new(),
            labels: vec![None; indices.len()],
            ids: vec![String::new(); indices.len()],
            indices,
        };
        let b = batch(vec![2, 0, 1]);
        assert_eq!(b.finding_rows(&findings, 3).unwrap(), [0, 0, 1, 0, -1, 1]);
        assert_eq!(b.finding_rows(&findings, 1).unwrap(), [0, 0]);
        let t = b.finding_tensor(Device::Cpu, &findings).unwrap();
        assert_eq!(t.size(), [3, 2]);
        assert_eq!(
            Vec::<f32>::try_from(&t.view(-1)).unwrap(),
            [0.0, 0.0, 1.0, 0.0, -1.0, 1.0]
        );
        let e = batch(vec![0, 3])
            .finding_tensor(Device::Cpu, &findings)
            .unwrap_err();
        assert!(e.to_string().contains("sample 3 has no findings"), "{e}");
    }

    fn shapes(registry: &Registry, n: usize) -> Arc<DatasetHandle> {
        let params =
            Params::from_json(&format!(r#"{{"num_samples": {n}, "image_size": 32}}"#)).unwrap();
        Arc::new(registry.dataset("Shapes").unwrap().create(&params).unwrap())
    }

    fn pipeline(registry: &Registry, config: &str) -> Arc<Pipeline> {
        let config = crate::config::RunConfig::resolve(config, &[], registry).unwrap();
        Arc::new(Pipeline::build(registry, &config.ssl_augmentations, "ssl_augmentations").unwrap())
    }

    /// An `ImageFolder` of `n` 8×8 RGB PNGs (`a/img0.png`, ...; one class), those at
    /// `corrupt` written as bytes that are no PNG.
    fn folder_with_corrupt_images(
        registry: &Registry,
        dir: &std::path::Path,
        n: usize,
        corrupt: &[usize],
    ) -> Arc<DatasetHandle> {
        let class = dir.join("a");
        std::fs::create_dir_all(&class).unwrap();
        for i in 0..n {
            let path = class.join(format!("img{i}.png"));
            if corrupt.contains(&i) {
                std::fs::write(&path, b"\x89PNG but not really").unwrap();
                continue;
            }
            let pixels: Vec<u8> = (0..8 * 8 * 3).map(|p| (p * 7 + i * 31) as u8).collect();
            let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut encoder = png::Encoder::new(file, 8, 8);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(&pixels).unwrap();
        }
        let params = Params::from_json(&format!(
            r#"{{"root": {:?}, "split": "train"}}"#,
            dir.display().to_string()
        ))
        .unwrap();
        Arc::new(
            registry
                .dataset("ImageFolder")
                .unwrap()
                .create(&params)
                .unwrap(),
        )
    }

    /// A source of two randomly cropped views (8×8) of `dataset`, skipping unreadable samples.
    fn cropping(registry: &Registry, dataset: Arc<DatasetHandle>) -> Source {
        let spec = crate::config::TransformSpec {
            name: "RandomResizedCrop".into(),
            params: toml::Table::from_iter([("size".to_string(), toml::Value::Integer(8))]),
        };
        let pipeline = Arc::new(Pipeline::build(registry, &[spec], "test").unwrap());
        let mut source = Source::new(
            dataset,
            vec![ViewGroup::workers(pipeline, 2)],
            Seeds::PerEpoch(4),
            "Folder",
        );
        source.skip_unreadable = true;
        source
    }

    #[test]
    fn an_unreadable_sample_is_replaced_by_the_next_readable_one_in_dataset_order() {
        let registry = Registry::load(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dataset = folder_with_corrupt_images(&registry, dir.path(), 6, &[2, 3, 5]);
        let source = cropping(&registry, Arc::clone(&dataset));
        // 2 and 3 are unreadable: 4 stands in for 2; 5 is the last one: 0 stands in for it.
        let batch = source.collate(&[1, 2, 4, 5], 7).unwrap();
        assert_eq!(batch.indices, [1, 4, 4, 0]);
        assert_eq!(
            batch.ids,
            ["a/img1.png", "a/img4.png", "a/img4.png", "a/img0.png"]
        );
        assert_eq!(batch.labels, [Some(0); 4]);
        assert_eq!(source.skipped_report().0, 3);
        assert!(source.skipped_report().1.unwrap().starts_with("sample 2: "));
        let views = batch.to_device(Device::Cpu).unwrap();
        assert_eq!(views[0].size(), [4, 3, 8, 8]);
        // The stand-in is augmented with the seeds of the position it fills: not a copy of
        // the sample's own row.
        assert!(!views[0].get(1).equal(&views[0].get(2)));
        // The same stand-in and views whatever else the batch holds (and so whichever process
        // reads the position): rank 1's half of this batch alone gives the same rows.
        let alone = source.collate(&[4, 5], 7).unwrap();
        assert_eq!(alone.indices, [4, 0]);
        let alone = alone.to_device(Device::Cpu).unwrap();
        for v in 0..2 {
            assert!(alone[v].equal(&views[v].narrow(0, 2, 2)), "view {v}");
        }

        // Passes listing every sample once leave the row out instead.
        let mut listing = cropping(&registry, Arc::clone(&dataset));
        listing.replace_unreadable = false;
        assert_eq!(listing.collate(&[1, 2, 4, 5], 7).unwrap().indices, [1, 4]);

        // Without skipping, an error naming the sample and the option.
        let mut strict = cropping(&registry, dataset);
        strict.skip_unreadable = false;
        let e = format!("{:#}", strict.collate(&[1, 2], 0).err().unwrap());
        assert!(
            e.contains("Folder sample 2") && e.contains("--skip_unreadable_images=true"),
            "{e}"
        );
    }

    #[test]
    fn a_dataset_without_a_readable_sample_has_no_stand_in() {
        let registry = Registry::load(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dataset = folder_with_corrupt_images(&registry, dir.path(), 3, &[0, 1, 2]);
        let source = cropping(&registry, dataset);
        let e = source.collate(&[1], 0).err().unwrap().to_string();
        assert!(
            e.contains("sample 1 is unreadable and no other of its 3 samples can stand in"),
            "{e}"
        );
        assert_eq!(source.skipped_report().0, 3);
    }

    #[test]
    fn batches_do_not_depend_on_the_number_of_workers() {
        let registry = Registry::load(&[]).unwrap();
        let groups = vec![ViewGroup::workers(pipeline(&registry, "ShapesBYOL"), 2)];
        let source = Arc::new(Source::new(
            shapes(&registry, 40),
            groups,
            Seeds::PerEpoch(5),
            "Shapes",
        ));
        let plan = Sampler::new(
            (0..40).collect(),
            8,
            true,
            Order::Shuffled { seed: 3, stream: 0 },
        )
        .batches(0);
        let collect = |workers: usize| -> Vec<(Vec<f32>, Vec<usize>)> {
            BatchStream::new(Arc::clone(&source), 2, plan.clone(), workers)
                .map(|b| b.map(|mut b| (b.groups.remove(0).data, b.indices)).unwrap())
                .collect()
        };
        let reference = collect(0);
        assert_eq!(reference.len(), 5);
        assert_eq!(reference[0].0.len(), 2 * 8 * 3 * 32 * 32);
        for workers in [1, 3] {
            assert!(
                collect(workers) == reference,
                "batches differ with {workers} workers"
            );
        }
        // The two views of a sample differ (independent augmentation streams), and another
        // epoch gives other augmentations.
        let half = reference[0].0.len() / 2;
        assert_ne!(reference[0].0[..half], reference[0].0[half..]);
        let other_epoch: Vec<Batch> = BatchStream::new(Arc::clone(&source), 3, plan.clone(), 0)
            .map(Result::unwrap)
            .collect();
        assert_ne!(other_epoch[0].groups[0].data, reference[0].0);
    }

    #[test]
    fn view_groups_of_different_sizes_are_collated_per_group_in_order() {
        let registry = Registry::load(&[]).unwrap();
        let crop = |size: i64| {
            let spec = crate::config::TransformSpec {
                name: "RandomResizedCrop".into(),
                params: toml::Table::from_iter([("size".to_string(), toml::Value::Integer(size))]),
            };
            Arc::new(Pipeline::build(&registry, &[spec], "test").unwrap())
        };
        let dataset = shapes(&registry, 8);
        let two_groups = Source::new(
            Arc::clone(&dataset),
            vec![
                ViewGroup::workers(crop(32), 2),
                ViewGroup::workers(crop(16), 3),
            ],
            Seeds::PerEpoch(9),
            "Shapes",
        );
        let batch = two_groups.collate(&[1, 4, 6], 0).unwrap();
        let views = batch.to_device(Device::Cpu).unwrap();
        let sizes: Vec<Vec<i64>> = views.iter().map(Tensor::size).collect();
        assert_eq!(
            sizes,
            [
                vec![3, 3, 32, 32],
                vec![3, 3, 32, 32],
                vec![3, 3, 16, 16],
                vec![3, 3, 16, 16],
                vec![3, 3, 16, 16]
            ]
        );
        // View v of a sample is drawn with the seed of view v counted over all groups: the
        // first group alone gives the same first two views.
        let first_only = Source::new(
            dataset,
            vec![ViewGroup::workers(crop(32), 2)],
            Seeds::PerEpoch(9),
            "Shapes",
        );
        let alone = first_only
            .collate(&[1, 4, 6], 0)
            .unwrap()
            .to_device(Device::Cpu)
            .unwrap();
        assert!(alone[0].equal(&views[0]) && alone[1].equal(&views[1]));
        assert!(!views[2].equal(&views[3]), "views of a group differ");
    }

    #[test]
    fn device_augmented_batches_do_not_depend_on_the_number_of_workers() {
        let registry = Registry::load(&[]).unwrap();
        let overrides = [("augment_on".to_string(), "device".to_string())];
        let config = RunConfig::resolve("ShapesSimCLR", &overrides, &registry).unwrap();
        let group = ViewGroup::build(
            &registry,
            &config,
            &config.ssl_augmentations,
            2,
            "ssl_augmentations",
        )
        .unwrap();
        assert!(group.on_device.is_some() && group.pipeline.is_empty());
        let source = Arc::new(Source::new(
            shapes(&registry, 40),
            vec![group],
            Seeds::PerEpoch(5),
            "Shapes",
        ));
        let plan = Sampler::new(
            (0..40).collect(),
            8,
            true,
            Order::Shuffled { seed: 3, stream: 0 },
        )
        .batches(0);
        let collect = |workers: usize| -> Vec<Vec<Tensor>> {
            BatchStream::new(Arc::clone(&source), 2, plan.clone(), workers)
                .map(|b| b.unwrap().to_device(Device::Cpu).unwrap())
                .collect()
        };
        let reference = collect(0);
        assert_eq!(reference.len(), 5);
        assert_eq!(reference[0].len(), 2);
        assert_eq!(reference[0][0].size(), [8, 3, 32, 32]);
        // Workers carried one 8-bit copy per sample, not the views.
        let batch = source.collate(&plan[0], 2).unwrap();
        let device = batch.groups[0].device.as_ref().unwrap();
        assert!(matches!(&device.pixels, RawPixels::U8(v) if v.len() == 8 * 3 * 32 * 32));
        for workers in [1, 3] {
            let other = collect(workers);
            for (a, b) in reference.iter().flatten().zip(other.iter().flatten()) {
                assert!(a.equal(b), "batches differ with {workers} workers");
            }
        }
        assert!(
            !reference[0][0].equal(&reference[0][1]),
            "the two views differ"
        );
        let max = reference[0][0].max().double_value(&[]);
        let min = reference[0][0].min().double_value(&[]);
        assert!(
            (0.0..=1.0).contains(&min) && max <= 1.0 && max > min,
            "{min} {max}"
        );
    }
}
