//! `ssl-host embed`: one embedding per image of a dataset from the encoder of an SSL or
//! classifier checkpoint, written as CSV (`id,label,e0,...`) or a NumPy `.npy` array plus
//! `<stem>.ids.csv`.
//!
//! Also the pieces `predict` shares: the common options, the dataset, an ordered
//! multi-threaded evaluation loader that keeps sample ids, the encoder's forward pass in eval
//! mode, and output files written through a temporary file and renamed when complete.

use crate::cli::Cli;
use crate::config::{is_cxr_dataset, TransformSpec};
use crate::data::{batches_of, seed_of, Pipeline};
use crate::pretrained::encoder_from_checkpoint;
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{Encoder, Image, Params, Pixels};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// The seed of evaluation transforms: random ones (e.g. a linear-head crop) then give the same
/// output on every run.
const EVAL_SEED: u64 = 0xE7A1;

/// The options `embed` and `predict` share.
pub struct EvalArgs {
    /// `--checkpoint`: a checkpoint file or a run folder.
    pub checkpoint: PathBuf,
    /// `--dataset`: a registered dataset name.
    pub dataset: String,
    /// `--out`.
    pub out: PathBuf,
    /// `--batch_size` (64).
    pub batch_size: usize,
    /// `--device` (default: CUDA when available).
    pub device: Device,
    /// `--num_workers`: threads preparing batches (default: up to 4).
    pub workers: usize,
    /// Dataset parameters: `root` (from `--local_dataset`), `split`, and every other option.
    pub dataset_params: serde_json::Map<String, Value>,
}

fn whole_number(name: &str, text: &str, min: usize) -> Result<usize> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => bail!("--{name}={text}: expected a whole number of at least {min}"),
    }
}

impl EvalArgs {
    /// Takes the shared options out of `cli` (`command` names the command in errors); every
    /// option left is a dataset parameter.
    pub fn take(cli: &mut Cli, command: &str, out_hint: &str) -> Result<EvalArgs> {
        let checkpoint = cli.take("checkpoint").with_context(|| {
            format!("{command} needs --checkpoint=PATH (a checkpoint file or a run folder)")
        })?;
        let dataset = cli
            .take("dataset")
            .with_context(|| format!("{command} needs --dataset=NAME (see `ssl-host list`)"))?;
        let out = cli
            .take("out")
            .with_context(|| format!("{command} needs --out={out_hint}"))?;
        let batch_size = match cli.take("batch_size") {
            Some(t) => whole_number("batch_size", &t, 1)?,
            None => 64,
        };
        let workers = match cli.take("num_workers") {
            Some(t) => whole_number("num_workers", &t, 0)?,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
        };
        let device = crate::device::choose(cli.take("device").as_deref())?;
        let split = cli.take("split").unwrap_or_else(|| "train".into());
        if split != "train" && split != "test" {
            bail!("--split={split}: expected train or test");
        }
        let root = cli.take("local_dataset");
        let mut dataset_params = super::params_from_options(&cli.options);
        cli.options.clear();
        if let Some(root) = root {
            dataset_params.insert("root".into(), Value::String(root));
        }
        dataset_params.insert("split".into(), Value::String(split));
        Ok(EvalArgs {
            checkpoint: PathBuf::from(checkpoint),
            dataset,
            out: PathBuf::from(out),
            batch_size,
            device,
            workers,
            dataset_params,
        })
    }

    /// Opens the dataset; a clear error when it has no samples.
    pub fn open_dataset(&self, registry: &Registry) -> Result<DatasetHandle> {
        let params = Params::from_value(Value::Object(self.dataset_params.clone()))
            .map_err(anyhow::Error::msg)?;
        let dataset = registry
            .dataset(&self.dataset)?
            .create(&params)
            .map_err(anyhow::Error::msg)?;
        if dataset.is_empty() {
            let root = self
                .dataset_params
                .get("root")
                .and_then(Value::as_str)
                .map(|r| format!(" at {r}"))
                .unwrap_or_default();
            let split = self.dataset_params["split"].as_str().unwrap_or("train");
            bail!(
                "dataset `{}`{root} (split {split}) has no samples",
                self.dataset
            );
        }
        Ok(dataset)
    }
}

/// The output extension of `out` (lower case) if it is one of `allowed`; a clear error otherwise.
pub fn output_kind(out: &Path, allowed: &[&str]) -> Result<String> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !allowed.contains(&ext.as_str()) {
        let list: Vec<String> = allowed.iter().map(|a| format!(".{a}")).collect();
        bail!(
            "--out={}: unknown output format `{}`; expected a file ending in {}",
            out.display(),
            if ext.is_empty() {
                "(none)".to_string()
            } else {
                format!(".{ext}")
            },
            list.join(" or ")
        );
    }
    Ok(ext)
}

/// `text` as one CSV field, quoted when it holds a comma, quote or line break.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A file written under a temporary name next to its destination and renamed into place by
/// [`OutputFile::commit`]; dropped uncommitted (also after a failed commit), the temporary
/// file is removed.
pub struct OutputFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: BufWriter<File>,
    renamed: bool,
}

impl OutputFile {
    /// Creates the temporary file (and the destination folder).
    pub fn create(path: &Path) -> Result<OutputFile> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("--out={}: not a file name", path.display()))?;
        let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            tmp,
            writer: BufWriter::new(file),
            renamed: false,
        })
    }

    /// The buffered writer.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        &mut self.writer
    }

    /// Writes `bytes`, naming the file in an error.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.tmp.display()))
    }

    /// Flushes and syncs the temporary file: after this only the rename can fail (so files
    /// that belong together are all synced before any is renamed).
    pub fn sync(&mut self) -> Result<()> {
        self.writer
            .flush()
            .and_then(|()| self.writer.get_ref().sync_all())
            .with_context(|| format!("writing {}", self.tmp.display()))
    }

    /// Syncs and renames the file to its destination.
    pub fn commit(mut self) -> Result<()> {
        self.sync()?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.path.display())
        })?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The header of a NumPy `.npy` (format 1.0) file holding a little-endian float32 C-order
/// array of `shape`: magic, version, header length, the dict padded with spaces to a
/// multiple of 64 bytes, ending in a newline.
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// One prepared batch: images `[N, C, H, W]` on the device, with ids and labels.
pub struct EvalBatch {
    pub images: Tensor,
    pub ids: Vec<String>,
    pub labels: Vec<Option<i64>>,
}

struct Prepared {
    data: Vec<f32>,
    shape: [usize; 3],
    ids: Vec<String>,
    labels: Vec<Option<i64>>,
}

/// What an evaluation pass reads: a dataset in order, through a fixed-seed transform pipeline.
pub struct EvalSource<'a> {
    pub dataset: &'a DatasetHandle,
    pub dataset_name: &'a str,
    pub pipeline: &'a Pipeline,
    /// Expand 1-channel images to this many identical channels (3 for an RGB encoder).
    pub expand_to: Option<usize>,
    /// Appended to the error for images of different sizes in one batch.
    pub size_hint: &'a str,
}

/// Pixels as f32 in [0, 1], channel-major (CHW), from an HWC image.
fn unit_chw(image: &Image, repeat: usize) -> Vec<f32> {
    let c = image.channels() as usize;
    let hwc: Vec<f32> = match image.pixels() {
        Pixels::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
        Pixels::U16(v) => v.iter().map(|&x| x as f32 / 65535.0).collect(),
        Pixels::F32(v) => v.to_vec(),
    };
    let mut out = Vec::with_capacity(hwc.len() * repeat);
    for ch in 0..c {
        out.extend(hwc.iter().skip(ch).step_by(c));
    }
    let plane = out.clone();
    for _ in 1..repeat {
        out.extend_from_slice(&plane);
    }
    out
}

impl EvalSource<'_> {
    fn prepare(&self, indices: &[usize]) -> Result<Prepared> {
        let mut data = Vec::new();
        let mut shape: Option<([usize; 3], usize, String)> = None;
        let mut ids = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            let sample = self
                .dataset
                .get(index)
                .map_err(|e| anyhow!("{} sample {index}: {e}", self.dataset_name))?;
            let (image, label, id) = sample.into_parts();
            let image = self
                .pipeline
                .apply(image, seed_of(&[EVAL_SEED, index as u64]))
                .with_context(|| format!("{} sample {index} ({id})", self.dataset_name))?;
            let repeat = match self.expand_to {
                Some(n) if image.channels() == 1 => n,
                _ => 1,
            };
            let this = [
                image.channels() as usize * repeat,
                image.height() as usize,
                image.width() as usize,
            ];
            match &shape {
                None => shape = Some((this, index, id.clone())),
                Some((s, first, first_id)) if *s != this => bail!(
                    "{} sample {index} ({id}) is {}×{}×{} (channels×height×width) but sample {first} ({first_id}) of the same batch is {}×{}×{}; {}",
                    self.dataset_name, this[0], this[1], this[2], s[0], s[1], s[2], self.size_hint
                ),
                Some(_) => {}
            }
            data.extend(unit_chw(&image, repeat));
            ids.push(id);
            labels.push(label);
        }
        Ok(Prepared {
            data,
            shape: shape.map(|s| s.0).unwrap_or([0, 0, 0]),
            ids,
            labels,
        })
    }

    /// Calls `f` on every batch of `batch_size` samples, in dataset order, with `workers`
    /// threads preparing batches ahead (0: in this thread) and a progress bar on a terminal.
    pub fn for_each_batch(
        &self,
        batch_size: usize,
        workers: usize,
        device: Device,
        what: &str,
        mut f: impl FnMut(EvalBatch) -> Result<()>,
    ) -> Result<()> {
        let order: Vec<usize> = (0..self.dataset.len()).collect();
        let plan = batches_of(&order, batch_size, false);
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(order.len() as u64);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        let mut consume = |prepared: Prepared| -> Result<()> {
            let [c, h, w] = prepared.shape;
            let n = prepared.ids.len();
            let images =
                Tensor::from_slice(&prepared.data).view([n as i64, c as i64, h as i64, w as i64]);
            let images = if device == Device::Cpu {
                images
            } else {
                images.to_device(device)
            };
            f(EvalBatch {
                images,
                ids: prepared.ids,
                labels: prepared.labels,
            })?;
            bar.inc(n as u64);
            Ok(())
        };
        let result = if workers == 0 {
            plan.iter()
                .try_for_each(|indices| consume(self.prepare(indices)?))
        } else {
            self.parallel(&plan, workers, &mut consume)
        };
        bar.finish_and_clear();
        result
    }

    /// Prepares the batches of `plan` on `workers` threads and hands them to `consume` in order.
    fn parallel(
        &self,
        plan: &[Vec<usize>],
        workers: usize,
        consume: &mut dyn FnMut(Prepared) -> Result<()>,
    ) -> Result<()> {
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Prepared>)>(workers);
        std::thread::scope(|scope| {
            for _ in 0..workers.min(plan.len()) {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= plan.len() {
                        break;
                    }
                    if tx.send((n, self.prepare(&plan[n]))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut ready: BTreeMap<usize, Result<Prepared>> = BTreeMap::new();
            let result = (0..plan.len()).try_for_each(|n| {
                let batch = loop {
                    if let Some(b) = ready.remove(&n) {
                        break b;
                    }
                    let (k, b) = rx
                        .recv()
                        .map_err(|_| anyhow!("data-loading threads stopped unexpectedly"))?;
                    ready.insert(k, b);
                };
                consume(batch?)
            });
            stop.store(true, Ordering::Relaxed);
            drop(rx);
            result
        })
    }
}

/// The number of input channels of `encoder`: that of its first convolution (`conv1.weight`,
/// `features.conv0.weight`, else its first 4-D parameter); `None` when it has none.
pub fn encoder_in_channels(encoder: &dyn Encoder) -> Option<usize> {
    let params = encoder.named_parameters();
    let by_name = ["conv1.weight", "features.conv0.weight"]
        .iter()
        .find_map(|n| params.iter().find(|(name, _)| name == n));
    by_name
        .or_else(|| params.iter().find(|(_, t)| t.dim() == 4))
        .map(|(_, t)| t.size()[1] as usize)
}

/// Embeddings `[N, D]` (float32) of `images` in eval mode without gradients.
pub fn embed_batch(encoder: &mut dyn Encoder, images: &Tensor) -> Result<Tensor> {
    let out = tch::no_grad(|| encoder.forward(images, false)).map_err(|e| anyhow!("{e}"))?;
    Ok(out.flatten(1, -1).to_kind(Kind::Float))
}

/// `tensor` (any device) as a flat `Vec<f32>`.
pub fn to_vec_f32(tensor: &Tensor) -> Result<Vec<f32>> {
    let t = tensor
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&t).map_err(|e| anyhow!("reading a tensor: {e}"))
}

/// The evaluation transform of `dataset` for `embed`: for the chest X-ray datasets the
/// original's linear-head validation pipeline (ExpandChannels, Resize 256, CenterCrop 224),
/// for any other none; with `image_size`, Resize to it (shorter side) and CenterCrop it
/// instead (after ExpandChannels for chest X-rays).
pub fn embed_transform(dataset: &str, image_size: Option<u32>) -> Result<Vec<TransformSpec>> {
    let cxr = is_cxr_dataset(dataset);
    let spec = |name: &str, size: Option<u32>| {
        let mut params = toml::Table::new();
        if let Some(size) = size {
            params.insert("size".into(), toml::Value::Integer(size.into()));
        }
        TransformSpec {
            name: name.into(),
            params,
        }
    };
    match (cxr, image_size) {
        (true, None) => {
            let name = "cxr_linear_head_augmentations.yaml";
            let text = crate::augmentation_yaml::builtin_yaml(name)
                .ok_or_else(|| anyhow!("the built-in {name} is missing"))?;
            Ok(crate::augmentation_yaml::cxr_pipelines(text, name, true)?.val_without_augmentation)
        }
        (true, Some(n)) => Ok(vec![
            spec("ExpandChannels", None),
            spec("Resize", Some(n)),
            spec("CenterCrop", Some(n)),
        ]),
        (false, None) => Ok(Vec::new()),
        (false, Some(n)) => Ok(vec![spec("Resize", Some(n)), spec("CenterCrop", Some(n))]),
    }
}

/// `ssl-host embed`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let image_size = match cli.take("image_size") {
        Some(t) => Some(whole_number("image_size", &t, 1)? as u32),
        None => None,
    };
    let args = EvalArgs::take(cli, "embed", "FILE.csv or FILE.npy")?;
    let format = output_kind(&args.out, &["csv", "npy"])?;
    let dataset = args.open_dataset(registry)?;
    let (loaded, _) = encoder_from_checkpoint(registry, &args.checkpoint, args.device)?;
    let specs = embed_transform(&args.dataset, image_size)?;
    let pipeline = Pipeline::build(registry, &specs, "the embed transform")?;
    let mut encoder = loaded.encoder;
    let dim = encoder.output_dim() as usize;
    let source = EvalSource {
        dataset: &dataset,
        dataset_name: &args.dataset,
        pipeline: &pipeline,
        expand_to: encoder_in_channels(&encoder).filter(|&c| c > 1),
        size_hint: if image_size.is_some() {
            "images with different numbers of channels cannot share a batch"
        } else {
            "images of different sizes cannot share a batch: pass --image_size=N to resize and centre-crop every image to N×N (or --batch_size=1)"
        },
    };
    let n = dataset.len();
    let mut main = OutputFile::create(&args.out)?;
    let ids_path = args.out.with_extension("ids.csv");
    let mut ids_file = None;
    if format == "npy" {
        main.write(&npy_header(&[n, dim]))?;
        let mut f = OutputFile::create(&ids_path)?;
        f.write(b"index,id,label\n")?;
        ids_file = Some(f);
    } else {
        let columns: Vec<String> = (0..dim).map(|j| format!("e{j}")).collect();
        main.write(format!("id,label,{}\n", columns.join(",")).as_bytes())?;
    }
    let mut row = 0usize;
    source.for_each_batch(
        args.batch_size,
        args.workers,
        args.device,
        "embed",
        |batch| {
            let embeddings = embed_batch(&mut encoder, &batch.images)?;
            let width = embeddings.size()[1] as usize;
            if width != dim {
                bail!(
                "the `{}` encoder gave {width} features per image but says its output has {dim}",
                loaded.name
            );
            }
            let values = to_vec_f32(&embeddings)?;
            for (k, (id, label)) in batch.ids.iter().zip(&batch.labels).enumerate() {
                let label = label.map(|l| l.to_string()).unwrap_or_default();
                let features = &values[k * dim..(k + 1) * dim];
                match &mut ids_file {
                    Some(ids) => {
                        let bytes: Vec<u8> =
                            features.iter().flat_map(|v| v.to_le_bytes()).collect();
                        main.write(&bytes)?;
                        ids.write(format!("{row},{},{label}\n", csv_field(id)).as_bytes())?;
                    }
                    None => {
                        let mut line = format!("{},{label}", csv_field(id));
                        for v in features {
                            line.push(',');
                            line.push_str(&v.to_string());
                        }
                        line.push('\n');
                        main.write(line.as_bytes())?;
                    }
                }
                row += 1;
            }
            Ok(())
        },
    )?;
    // Both synced before either is renamed: an `.npy` never lands beside the ids of an
    // unfinished run.
    main.sync()?;
    if let Some(ids) = &mut ids_file {
        ids.sync()?;
    }
    main.commit()?;
    if let Some(ids) = ids_file {
        ids.commit()?;
        println!(
            "wrote {row} embeddings of {dim} features ({} encoder of {}) to {} (float32 [{row}, {dim}]) and {}",
            loaded.name,
            loaded.path.display(),
            args.out.display(),
            ids_path.display()
        );
    } else {
        println!(
            "wrote {row} embeddings of {dim} features ({} encoder of {}) to {}",
            loaded.name,
            loaded.path.display(),
            args.out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let header = npy_header(&[7, 512]);
        assert_eq!(header.len() % 64, 0);
        assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([header[8], header[9]]) as usize;
        assert_eq!(10 + len, header.len());
        let text = std::str::from_utf8(&header[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (7, 512), }"));
        assert!(text.ends_with(" \n"));
        assert!(std::str::from_utf8(&npy_header(&[3])[10..])
            .unwrap()
            .contains("(3,)"));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a/b.png"), "a/b.png");
        assert_eq!(csv_field("x,y"), "\"x,y\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn output_kinds() {
        assert_eq!(
            output_kind(Path::new("a/e.NPY"), &["csv", "npy"]).unwrap(),
            "npy"
        );
        let err = output_kind(Path::new("e.txt"), &["csv", "npy"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`.txt`") && err.contains(".csv or .npy"),
            "{err}"
        );
        let err = output_kind(Path::new("e"), &["csv"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("(none)"), "{err}");
    }

    #[test]
    fn embed_transforms() {
        let names = |specs: Vec<TransformSpec>| -> Vec<(String, Option<i64>)> {
            specs
                .into_iter()
                .map(|s| (s.name, s.params.get("size").and_then(|v| v.as_integer())))
                .collect()
        };
        let cxr = names(embed_transform("RSNAKaggleCXR", None).unwrap());
        assert_eq!(
            cxr,
            vec![
                ("ExpandChannels".into(), None),
                ("Resize".into(), Some(256)),
                ("CenterCrop".into(), Some(224))
            ]
        );
        let sized = names(embed_transform("NIHCXR", Some(64)).unwrap());
        assert_eq!(
            sized[1..],
            [("Resize".into(), Some(64)), ("CenterCrop".into(), Some(64))]
        );
        assert!(embed_transform("ImageFolder", None).unwrap().is_empty());
        assert_eq!(names(embed_transform("Shapes", Some(16)).unwrap()).len(), 2);
    }

    #[test]
    fn output_file_is_renamed_on_commit_and_removed_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("o.csv");
        let mut f = OutputFile::create(&path).unwrap();
        f.write(b"x\n").unwrap();
        assert!(!path.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\n");
        let other = dir.path().join("p.csv");
        {
            let mut f = OutputFile::create(&other).unwrap();
            f.write(b"y").unwrap();
        }
        assert!(!other.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failed rename (the destination is a non-empty folder) leaves no temporary file.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let mut f = OutputFile::create(&blocked).unwrap();
        f.write(b"z").unwrap();
        assert!(f.commit().is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
    }

    #[test]
    fn channels_are_expanded_and_planar() {
        let grey = Image::from_u8(2, 1, 1, vec![0, 255]).unwrap();
        assert_eq!(unit_chw(&grey, 3), vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        let rgb = Image::from_u8(2, 1, 3, vec![255, 0, 0, 0, 0, 255]).unwrap();
        assert_eq!(unit_chw(&rgb, 1), vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }
}
