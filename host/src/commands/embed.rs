//! `ssl-host embed`: one embedding per image of a dataset from the encoder of an SSL or
//! classifier checkpoint, written as CSV (`id,label,e0,...`) or a NumPy `.npy` array plus
//! `<stem>.ids.csv`.
//!
//! Also the pieces `predict` shares: the common options, the dataset, an ordered
//! multi-threaded evaluation loader that keeps sample ids, the encoder's forward pass in eval
//! mode, and output files written through a temporary file and renamed when complete.

use crate::cli::Cli;
use crate::config::TransformSpec;
use crate::loader::{BatchStream, Seeds, Source};
use crate::pipeline::Pipeline;
use crate::pretrained::encoder_from_checkpoint;
use crate::registry::Registry;
use crate::sampler::{Order, Sampler};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{DatasetInfo, Encoder, ImageKind, Params};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// `--batch_size` (64), `--num_workers` (the cores, at most 4) and `--device` (CUDA when
/// available), taken out of `cli`: the loader options of `predict`, `embed` and `evaluate`.
pub fn loader_options(cli: &mut Cli) -> Result<(usize, usize, Device)> {
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
    Ok((batch_size, workers, device))
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
        let (batch_size, workers, device) = loader_options(cli)?;
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
    pub fn open_dataset(&self, registry: &Registry) -> Result<Arc<DatasetHandle>> {
        // A URL or catalogue name as the root: the local copy of the packed dataset (settings
        // from the environment: SSL_HOST_CACHE, SSL_HOST_DATASET_CATALOGUE).
        let mut params = self.dataset_params.clone();
        let given = params
            .get("root")
            .and_then(Value::as_str)
            .map(str::to_string);
        let resolved =
            crate::shards::resolve(given.as_deref(), &crate::shards::StoreSettings::from_env())?;
        if let Some(root) = &resolved.root {
            params.insert("root".into(), Value::String(root.clone()));
        }
        let params = Params::from_value(Value::Object(params))?;
        let dataset = Arc::new(registry.dataset(&self.dataset)?.create(&params)?);
        if let Some(shards) = resolved.shards {
            crate::shards::register(&dataset, shards);
        }
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

/// What an evaluation pass reads: a dataset in order, through a fixed-seed transform pipeline.
pub struct EvalSource<'a> {
    pub dataset: Arc<DatasetHandle>,
    pub dataset_name: &'a str,
    pub pipeline: Arc<Pipeline>,
    /// Expand 1-channel images to this many identical channels (3 for an RGB encoder).
    pub expand_to: Option<usize>,
    /// Appended to the error for images of different sizes in one batch.
    pub size_hint: &'a str,
}

impl EvalSource<'_> {
    /// Every sample once, in dataset order, in batches of `batch_size` (the last one may be
    /// smaller), from the one loader with `workers` threads and a progress bar labelled `what`.
    pub fn stream(self, batch_size: usize, workers: usize, what: &str) -> BatchStream {
        let order: Vec<usize> = (0..self.dataset.len()).collect();
        let plan = Sampler::new(order, batch_size, false, Order::Sequential).batches(0);
        let mut source = Source::single(
            self.dataset,
            self.pipeline,
            Seeds::Fixed(EVAL_SEED),
            self.dataset_name,
        );
        source.suggest_skipping = false;
        source.expand_to = self.expand_to;
        source.size_hint = self.size_hint.to_string();
        BatchStream::new(Arc::new(source), 0, plan, workers).with_progress(what)
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
    let out = tch::no_grad(|| encoder.forward(images, false))?;
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

/// The evaluation transform for `embed` of `dataset`, which declares `info`: the pipeline it
/// declares (chest X-rays: the original's linear-head validation pipeline, ExpandChannels,
/// Resize 256, CenterCrop 224; for `Packed`, its source's), none if it declares none; with `image_size`, Resize to it (shorter side)
/// and CenterCrop it instead (after ExpandChannels for grey datasets).
pub fn embed_transform(
    dataset: &str,
    info: &DatasetInfo,
    image_size: Option<u32>,
) -> Result<Vec<TransformSpec>> {
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
    match image_size {
        None => info
            .eval_transforms
            .iter()
            .map(|(name, json)| {
                let params: toml::Table = serde_json::from_str(json).with_context(|| {
                    format!("the evaluation transform `{name}` that dataset `{dataset}` declares")
                })?;
                Ok(TransformSpec {
                    name: name.clone(),
                    params,
                })
            })
            .collect(),
        Some(n) => {
            let mut specs = Vec::new();
            if info.image_kind == ImageKind::Grey {
                specs.push(spec("ExpandChannels", None));
            }
            specs.push(spec("Resize", Some(n)));
            specs.push(spec("CenterCrop", Some(n)));
            Ok(specs)
        }
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
    let info = registry
        .dataset(&args.dataset)?
        .info_for(&Params::from_value(Value::Object(
            args.dataset_params.clone(),
        ))?)?;
    let specs = embed_transform(&args.dataset, &info, image_size)?;
    let pipeline = Pipeline::build(registry, &specs, "the embed transform")?;
    let mut encoder = loaded.encoder;
    let dim = encoder.output_dim() as usize;
    let n = dataset.len();
    let source = EvalSource {
        dataset: Arc::clone(&dataset),
        dataset_name: &args.dataset,
        pipeline: Arc::new(pipeline),
        expand_to: encoder_in_channels(&encoder).filter(|&c| c > 1),
        size_hint: if image_size.is_some() {
            "images with different numbers of channels cannot share a batch"
        } else {
            "images of different sizes cannot share a batch: pass --image_size=N to resize and centre-crop every image to N×N (or --batch_size=1)"
        },
    };
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
    // Loading starts only now that the output files exist.
    let stream = source.stream(args.batch_size, args.workers, "embed");
    for batch in stream {
        let batch = batch?;
        let images = batch.images(args.device)?;
        let embeddings = embed_batch(&mut encoder, &images)?;
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
                    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
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
    }
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
        let registry = Registry::load(&[]).unwrap();
        let info = |name: &str| registry.dataset(name).unwrap().info();
        let cxr = names(embed_transform("RSNAKaggleCXR", &info("RSNAKaggleCXR"), None).unwrap());
        assert_eq!(
            cxr,
            vec![
                ("ExpandChannels".into(), None),
                ("Resize".into(), Some(256)),
                ("CenterCrop".into(), Some(224))
            ]
        );
        let sized = names(embed_transform("NIHCXR", &info("NIHCXR"), Some(64)).unwrap());
        assert_eq!(
            sized[1..],
            [("Resize".into(), Some(64)), ("CenterCrop".into(), Some(64))]
        );
        assert!(embed_transform("ImageFolder", &info("ImageFolder"), None)
            .unwrap()
            .is_empty());
        assert_eq!(
            names(embed_transform("Shapes", &info("Shapes"), Some(16)).unwrap()).len(),
            2
        );
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
}
