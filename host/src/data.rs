//! Data loading: train/val splits, transform pipelines, and a multi-threaded loader that
//! decodes, transforms and collates samples into one contiguous buffer per batch.
//!
//! Every random choice is a pure function of (seed, epoch, sample index, view): the shuffled
//! order comes from (seed, epoch, cycle), the augmentation stream of a sample view from
//! (seed, epoch, index, view, transform position). Batches therefore do not depend on the
//! number of worker threads, and a resumed run sees the same data as an uninterrupted one.

use crate::config::TransformSpec;
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::host::{DatasetHandle, TransformHandle};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{Image, Params, Pixels};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// splitmix64: the mixing function behind every seed here.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes several values into one seed.
pub fn seed_of(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5EED_u64, |acc, &p| mix(acc, p))
}

/// The random permutation of `0..n` for `seed` (Fisher-Yates over splitmix64).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        state = mix(state, i as u64);
        let j = (state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The train/validation split of a dataset of `len` samples, as bolts' `random_split`:
/// `val_len = int(val_split * len)`, the permutation is torch's `randperm(len)` from a generator
/// seeded with `seed` (so splits match the original's), train = its first `len - val_len`
/// entries, val = the rest.
pub fn train_val_split(len: usize, val_split: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let val_len = (val_split * len as f64).floor() as usize;
    ssl_plugin_api::tch::manual_seed(seed as i64);
    let perm = Tensor::randperm(len as i64, (Kind::Int64, Device::Cpu));
    let perm: Vec<i64> = Vec::<i64>::try_from(&perm).expect("randperm gives int64");
    let perm: Vec<usize> = perm.into_iter().map(|i| i as usize).collect();
    let (train, val) = perm.split_at(len - val_len);
    (train.to_vec(), val.to_vec())
}

/// NumPy's legacy `RandomState(seed)` generator (MT19937 seeded as `init_genrand`), enough of
/// it to reproduce `RandomState(seed).permutation(array)`.
struct NumpyRandomState {
    key: [u32; 624],
    pos: usize,
}

impl NumpyRandomState {
    fn new(seed: u32) -> Self {
        let mut key = [0u32; 624];
        key[0] = seed;
        for i in 1..624 {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        NumpyRandomState { key, pos: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            for i in 0..624 {
                let y = (self.key[i] & 0x8000_0000) | (self.key[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.key[(i + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.key[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..=max` by masked rejection (`random_interval`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `permutation(items)`: Fisher-Yates from the end, as NumPy's `shuffle`.
    fn permutation<T: Clone>(&mut self, items: &[T]) -> Vec<T> {
        let mut out = items.to_vec();
        for i in (1..out.len()).rev() {
            let j = self.interval(i as u32) as usize;
            out.swap(i, j);
        }
        out
    }
}

/// The train/validation split of a dataset whose samples come in groups (e.g. several images
/// per patient), as the original's `CovidDataset._split_dataset`: the sorted unique groups
/// are permuted by `numpy.random.RandomState(seed)`, the first `int(groups × val_split)` are
/// validation, the rest training; samples follow their group, in dataset order.
pub fn group_split(groups: &[String], val_split: f64, seed: u32) -> (Vec<usize>, Vec<usize>) {
    // The original reads the CSV with pandas: a column of integers becomes int64 and
    // np.unique sorts it numerically ("2" before "10", "007" = "7"); anything else as strings.
    match groups
        .iter()
        .map(|g| g.trim().parse::<i64>().ok())
        .collect::<Option<Vec<i64>>>()
    {
        Some(numbers) => split_by_key(&numbers, val_split, seed),
        None => split_by_key(groups, val_split, seed),
    }
}

fn split_by_key<K: Ord + std::hash::Hash + Clone>(
    keys: &[K],
    val_split: f64,
    seed: u32,
) -> (Vec<usize>, Vec<usize>) {
    let mut unique: Vec<&K> = keys.iter().collect();
    unique.sort();
    unique.dedup();
    let shuffled = NumpyRandomState::new(seed).permutation(&unique);
    let val_len = (unique.len() as f64 * val_split).floor() as usize;
    let val: std::collections::HashSet<&K> = shuffled[..val_len].iter().copied().collect();
    let (mut train_idx, mut val_idx) = (Vec::new(), Vec::new());
    for (i, k) in keys.iter().enumerate() {
        if val.contains(k) {
            val_idx.push(i);
        } else {
            train_idx.push(i);
        }
    }
    (train_idx, val_idx)
}

/// The split of `dataset`: by group when it has groups ([`group_split`]), else
/// [`train_val_split`].
pub fn split_dataset(
    dataset: &DatasetHandle,
    val_split: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    Ok(match dataset.groups().map_err(anyhow::Error::from)? {
        Some(groups) => {
            // NumPy's RandomState, which the original seeds with it, takes 32-bit seeds only.
            let seed = u32::try_from(seed).map_err(|_| {
                anyhow!(
                    "random_seed={seed}: a dataset split by subject uses NumPy's RandomState, \
                     whose seeds are below 2^32"
                )
            })?;
            group_split(&groups, val_split, seed)
        }
        None => train_val_split(dataset.len(), val_split, seed),
    })
}

/// A sequence of transforms applied in order, each with its own seed.
pub struct Pipeline {
    steps: Vec<(String, TransformHandle)>,
}

impl Pipeline {
    /// Builds the transforms named in `specs`.
    pub fn build(registry: &Registry, specs: &[TransformSpec], what: &str) -> Result<Pipeline> {
        let mut steps = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let json = serde_json::to_value(&spec.params).context("transform parameters")?;
            let params = Params::from_value(json).map_err(anyhow::Error::from)?;
            let transform = registry
                .transform(&spec.name)
                .and_then(|f| f.create(&params).map_err(anyhow::Error::from))
                .with_context(|| format!("{what}[{i}] (`{}`)", spec.name))?;
            steps.push((spec.name.clone(), transform));
        }
        Ok(Pipeline { steps })
    }

    /// Applies every step; `seed` is the seed of this sample view.
    pub fn apply(&self, mut image: Image, seed: u64) -> Result<Image> {
        for (position, (name, step)) in self.steps.iter().enumerate() {
            image = step
                .apply(image, mix(seed, position as u64))
                .map_err(|e| anyhow!("transform `{name}`: {e:#}"))?;
        }
        Ok(image)
    }
}

/// A collated batch: `views` stacked views of `len` samples, one contiguous buffer
/// `[views * len, C, H, W]` (view-major), with labels and dataset indices.
pub struct Batch {
    pub data: Vec<f32>,
    pub views: usize,
    pub shape: [usize; 3],
    pub labels: Vec<Option<i64>>,
    pub indices: Vec<usize>,
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

    /// The views as tensors on `device`: the whole buffer moves once, then is split.
    pub fn to_device(&self, device: Device) -> Vec<Tensor> {
        let [c, h, w] = self.shape;
        let all = Tensor::from_slice(&self.data).view([
            (self.views * self.len()) as i64,
            c as i64,
            h as i64,
            w as i64,
        ]);
        let all = if device == Device::Cpu {
            all
        } else {
            all.to_device(device)
        };
        all.chunk(self.views as i64, 0)
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
        Ok(Tensor::from_slice(&labels).to_device(device))
    }
}

/// Pixels as f32 in [0, 1], HWC.
fn to_unit_f32(image: &Image) -> Vec<f32> {
    match image.pixels() {
        Pixels::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
        Pixels::U16(v) => v.iter().map(|&x| x as f32 / 65535.0).collect(),
        Pixels::F32(v) => v.to_vec(),
    }
}

/// What a loader reads: a dataset, its transform pipeline, how many views per sample, and the
/// seed of its random stream.
pub struct Source {
    pub dataset: Arc<DatasetHandle>,
    pub pipeline: Arc<Pipeline>,
    pub views: usize,
    pub seed: u64,
    pub name: String,
    /// Skip samples the dataset cannot read (`skip_unreadable_images`) instead of failing.
    pub skip_unreadable: bool,
    /// The samples skipped so far: index -> the error (see [`Source::skipped_report`]).
    pub skipped: Mutex<BTreeMap<usize, String>>,
}

impl Source {
    /// A source that fails on unreadable samples.
    pub fn new(
        dataset: Arc<DatasetHandle>,
        pipeline: Arc<Pipeline>,
        views: usize,
        seed: u64,
        name: &str,
    ) -> Source {
        Source {
            dataset,
            pipeline,
            views,
            seed,
            name: name.to_string(),
            skip_unreadable: false,
            skipped: Mutex::new(BTreeMap::new()),
        }
    }

    /// Number of distinct samples skipped so far, and the first one's error.
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

    /// Loads, transforms and collates the samples `indices` of `epoch`.
    pub fn collate(&self, indices: &[usize], epoch: u64) -> Result<Batch> {
        let mut data: Vec<f32> = Vec::new();
        let mut shape: Option<[usize; 3]> = None;
        let mut labels = Vec::with_capacity(indices.len());
        let mut per_view: Vec<Vec<f32>> = vec![Vec::new(); self.views];
        let mut kept = Vec::with_capacity(indices.len());
        for &index in indices {
            let sample = match self.dataset.get(index) {
                Ok(sample) => sample,
                Err(e) if self.skip_unreadable => {
                    self.skipped
                        .lock()
                        .expect("skipped list")
                        .insert(index, e.message());
                    continue;
                }
                Err(e) => bail!(
                    "{} sample {index}: {e:#} (set --skip_unreadable_images=true to skip such images)",
                    self.name
                ),
            };
            kept.push(index);
            let (image, label, id) = sample.into_parts();
            labels.push(label);
            for (view, buffer) in per_view.iter_mut().enumerate() {
                let seed = seed_of(&[self.seed, epoch, index as u64, view as u64]);
                let out = self
                    .pipeline
                    .apply(image.clone(), seed)
                    .with_context(|| format!("{} sample {index} ({id})", self.name))?;
                let this = [
                    out.channels() as usize,
                    out.height() as usize,
                    out.width() as usize,
                ];
                match shape {
                    None => shape = Some(this),
                    Some(s) if s != this => bail!(
                        "{} sample {index} ({id}) is {}×{}×{} after transforms but the batch is {}×{}×{}; add a Resize/crop transform so all images have one size",
                        self.name, this[0], this[1], this[2], s[0], s[1], s[2]
                    ),
                    Some(_) => {}
                }
                let [c, h, w] = this;
                let hwc = to_unit_f32(&out);
                buffer.reserve(c * h * w);
                for ch in 0..c {
                    buffer.extend(hwc.iter().skip(ch).step_by(c));
                }
                let _ = (h, w);
            }
        }
        if kept.is_empty() {
            bail!(
                "{}: every sample of a batch was unreadable ({} samples, first: {})",
                self.name,
                indices.len(),
                self.skipped_report().1.unwrap_or_default()
            );
        }
        for v in per_view {
            data.extend_from_slice(&v);
        }
        Ok(Batch {
            data,
            views: self.views,
            shape: shape.unwrap_or([0, 0, 0]),
            labels,
            indices: kept,
        })
    }
}

/// Splits `order` into batches of `batch_size` (dropping an incomplete last one when asked).
pub fn batches_of(order: &[usize], batch_size: usize, drop_last: bool) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if drop_last && out.last().is_some_and(|b| b.len() < batch_size) {
        out.pop();
    }
    out
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
}

impl BatchStream {
    /// Starts streaming `plan` (dataset indices per batch) of `epoch`.
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
        };
        if workers > 0 && !stream.plan.is_empty() {
            let (job_tx, job_rx) = mpsc::channel::<(usize, Vec<usize>)>();
            let (res_tx, res_rx) = mpsc::channel();
            let job_rx = Arc::new(Mutex::new(job_rx));
            for _ in 0..workers.min(stream.plan.len()) {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                let source = Arc::clone(&stream.source);
                let epoch = stream.epoch;
                stream.threads.push(std::thread::spawn(move || loop {
                    let job = job_rx.lock().expect("job queue").recv();
                    let Ok((n, indices)) = job else { break };
                    if res_tx.send((n, source.collate(&indices, epoch))).is_err() {
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
        Some(batch)
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
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

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = permutation(100, 7);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 7));
        assert_ne!(p, permutation(100, 8));
    }

    #[test]
    fn labels_outside_the_classes_are_an_error_naming_the_sample() {
        let batch = |labels: Vec<Option<i64>>| Batch {
            data: vec![0.0; labels.len()],
            shape: [1, 1, 1],
            views: 1,
            indices: (10..10 + labels.len()).collect(),
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
    fn group_split_matches_numpy() {
        // numpy: RandomState(seed).permutation(np.unique(subjects)) for 12 subjects, named by
        // strings, and by integers as pandas reads a numeric column (sorted 2 < 10, "007" = 7).
        let named: Vec<String> = (0..30).map(|i| format!("s{:02}", (i * 7) % 12)).collect();
        let numbered: Vec<String> = (0..30)
            .map(|i| match (i * 7) % 12 {
                7 => "007".to_string(),
                k => (k * 5).to_string(),
            })
            .collect();
        let python =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/torch-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-libtorch.sh",
            python.display()
        );
        let script = "import numpy as np, sys\n\
            s = np.array(sys.argv[1].split(','))\n\
            s = s.astype(np.int64) if sys.argv[3] == 'int' else s\n\
            u = np.random.RandomState(int(sys.argv[2])).permutation(np.unique(s))\n\
            n = int(len(u) * 0.25)\n\
            print(','.join(str(i) for i in np.where(np.isin(s, u[n:]))[0]))\n\
            print(','.join(str(i) for i in np.where(np.isin(s, u[:n]))[0]))";
        for (subjects, kind, seed) in [
            (&named, "str", 1u32),
            (&named, "str", 42),
            (&named, "str", 12345),
            (&numbered, "int", 1),
            (&numbered, "int", 42),
        ] {
            let out = std::process::Command::new(&python)
                .args(["-c", script, &subjects.join(","), &seed.to_string(), kind])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let mut lines = text.lines();
            let parse = |l: Option<&str>| -> Vec<usize> {
                l.unwrap().split(',').map(|v| v.parse().unwrap()).collect()
            };
            let (train, val) = (parse(lines.next()), parse(lines.next()));
            assert_eq!(
                group_split(subjects, 0.25, seed),
                (train, val),
                "{kind} subjects, seed {seed}"
            );
        }
    }

    #[test]
    fn split_matches_torch_random_split() {
        // bolts/torch anchor: random_split of CIFAR10's 50000 with seed 42 starts with these.
        let (train, val) = train_val_split(50000, 0.1, 42);
        assert_eq!((train.len(), val.len()), (45000, 5000));
        assert_eq!(&train[..5], &[37542, 44491, 216, 43688, 41558]);
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, (0..50000).collect::<Vec<_>>());
    }

    #[test]
    fn batches_do_not_depend_on_the_number_of_workers() {
        let registry = Registry::load(&[]).unwrap();
        let config = crate::config::RunConfig::resolve("ShapesBYOL", &[], &registry).unwrap();
        let params = Params::from_json(r#"{"num_samples": 40, "image_size": 32}"#).unwrap();
        let dataset = Arc::new(registry.dataset("Shapes").unwrap().create(&params).unwrap());
        let pipeline = Arc::new(
            Pipeline::build(&registry, &config.ssl_augmentations, "ssl_augmentations").unwrap(),
        );
        let source = Arc::new(Source::new(dataset, pipeline, 2, 5, "Shapes"));
        let plan = batches_of(&permutation(40, 3), 8, true);
        let collect = |workers: usize| -> Vec<(Vec<f32>, Vec<usize>)> {
            BatchStream::new(Arc::clone(&source), 2, plan.clone(), workers)
                .map(|b| b.map(|b| (b.data, b.indices)).unwrap())
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
        assert_ne!(other_epoch[0].data, reference[0].0);
    }

    #[test]
    fn batches_drop_last() {
        let order: Vec<usize> = (0..10).collect();
        assert_eq!(batches_of(&order, 4, true).len(), 2);
        assert_eq!(batches_of(&order, 4, false).len(), 3);
        assert_eq!(batches_of(&order, 5, true).len(), 2);
    }
}
