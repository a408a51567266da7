//! `ssl-host pack`: writes a split of any dataset (built-in or a plugin's) as WebDataset tar
//! shards that the `Packed` dataset reads back by memory map (format:
//! `ssl_builtin_datasets::packed_format`).
//!
//! Samples are read through the dataset plugin, optionally resized so that the longer side is
//! at most `--max_side` (the pipelines' bilinear `Resize`), and kept as the dataset gives them
//! otherwise: grey stays one channel, 8 and 16 bit stay as they are. A multi-label dataset's
//! findings travel with its samples (names in `index.json`, values in each sample's metadata),
//! so the packed copy serves the same findings. Output is deterministic
//! (same input, byte-identical shards and indexes). Every file is written to a temporary name
//! and renamed, and `index.json` (which lists the shards) is removed first and written last: an
//! interrupted pack leaves no index that lists a shard that is not whole.

use super::DatasetArgs;
use crate::atomic_file::write_atomic;
use crate::cli::Cli;
use crate::registry::Registry;
use crate::shards::StoreSettings;
use crate::storage::{ObjectUrl, Storage, StorageOptions};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ssl_builtin_datasets::packed_format::{
    self as format, DeclaredInfo, Encoding, PackIndex, PackSample, ShardBuilder, ShardEntry,
    SourceInfo, INDEX_FILE,
};
use ssl_builtin_transforms::resize::Resize;
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::{DatasetInfo, Image, ImageKind, Params, Pixels, Transform};
use std::path::{Path, PathBuf};

/// Default `--shard_size`, in MB (10⁶ bytes): large enough that per-file costs vanish, small
/// enough that a node's cache and a retry hold a few.
const DEFAULT_SHARD_MB: u64 = 256;

/// Samples read (in parallel) before they are appended in order.
const CHUNK: usize = 64;

/// What `pack` was asked to do.
pub struct PackOptions {
    /// `--output`: the packed folder (for a URL: the local staging folder it is packed into).
    pub output: PathBuf,
    /// `--output` as given when it is a URL: the packed folder is uploaded there.
    pub upload_to: Option<String>,
    /// `--max_side`: the longer side's limit.
    pub max_side: Option<u32>,
    /// `--encoding` (`npy` by default: see docs/datasets-at-scale.md).
    pub encoding: Encoding,
    /// `--shard_size`, in bytes.
    pub shard_bytes: u64,
    /// `--shard_samples`: at most this many samples per shard (as WebDataset's `maxcount`).
    pub shard_samples: u64,
    /// `--skip_unreadable_images`.
    pub skip_unreadable: bool,
    /// Threads reading samples.
    pub threads: usize,
}

fn flag(cli: &mut Cli, name: &str) -> Result<bool> {
    match cli.take(name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => bail!("--{name}={other}: expected true or false"),
    }
}

fn positive(cli: &mut Cli, name: &str) -> Result<Option<u64>> {
    cli.take(name)
        .map(|t| match t.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("--{name}={t}: expected a whole number of at least 1"),
        })
        .transpose()
}

impl PackOptions {
    /// Takes pack's own options out of `cli` (the rest are dataset options).
    pub fn take(cli: &mut Cli) -> Result<PackOptions> {
        let output = cli
            .take("output")
            .context("pack needs --output=DIR (the folder of the shards)")?;
        let max_side = positive(cli, "max_side")?
            .map(|n| u32::try_from(n).context("--max_side is too large"))
            .transpose()?;
        let encoding = match cli.take("encoding") {
            Some(e) => Encoding::parse(&e).map_err(|e| anyhow::anyhow!("--encoding: {e}"))?,
            None => Encoding::Npy,
        };
        let shard_bytes = positive(cli, "shard_size")?.unwrap_or(DEFAULT_SHARD_MB) * 1_000_000;
        let shard_samples = positive(cli, "shard_samples")?.unwrap_or(u64::MAX);
        let skip_unreadable = flag(cli, "skip_unreadable_images")?;
        let threads = match positive(cli, "num_workers")? {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        // A URL: packed into a staging folder under the cache, named after the URL (a rerun
        // continues there), then uploaded.
        let (local, upload_to) = if ObjectUrl::is_url(&output) && !output.starts_with("file://") {
            ObjectUrl::parse(&output)?;
            let key = format::sha256_hex(output.as_bytes());
            let staging = StoreSettings::from_env()
                .cache_dir
                .join("pack-staging")
                .join(&key[..16]);
            (staging, Some(output))
        } else {
            let path = output
                .strip_prefix("file://")
                .unwrap_or(&output)
                .to_string();
            (PathBuf::from(path), None)
        };
        Ok(PackOptions {
            output: local,
            upload_to,
            max_side,
            encoding,
            shard_bytes,
            shard_samples,
            skip_unreadable,
            threads,
        })
    }
}

pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let options = PackOptions::take(cli)?;
    let args = DatasetArgs::take(cli, "pack")?;
    let dataset = args.open(registry, true)?;
    let declared = registry
        .dataset(&args.name)?
        .info_for(&args.plugin_params()?)?;
    let source = SourceInfo {
        dataset: args.name.clone(),
        split: args.params["split"].as_str().unwrap_or("train").to_string(),
        params: args.params.clone(),
    };
    let summary = pack(&dataset, &declared, source, &options)?;
    if let Some(url) = &options.upload_to {
        upload(&options.output, url, &summary.index)?;
    }
    if summary.skipped > 0 {
        eprintln!(
            "warning: skipped {} unreadable image(s) of `{}`; the first: {}",
            summary.skipped,
            args.name,
            summary.first_error.as_deref().unwrap_or("?")
        );
    }
    println!(
        "packed {} samples of `{}` into {} shard(s), {} bytes, at {}",
        summary.index.samples,
        args.name,
        summary.index.shards.len(),
        summary.index.shards.iter().map(|s| s.bytes).sum::<u64>(),
        options
            .upload_to
            .clone()
            .unwrap_or_else(|| options.output.display().to_string())
    );
    Ok(())
}

/// Uploads the packed folder `dir` (indexed by `index`) to `url`: shards (multipart, each
/// visible only whole) and member indexes first, `index.json` last, so a reader never finds an
/// index listing a shard that is not there. Credentials come from the environment.
fn upload(dir: &Path, url: &str, index: &PackIndex) -> Result<()> {
    let root = ObjectUrl::parse(url)?;
    let storage = Storage::from_process_env(StorageOptions::default());
    let total: u64 = index.shards.iter().map(|s| s.bytes).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("uploading [{bar:30}] {bytes}/{total_bytes} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for shard in &index.shards {
        for name in [&shard.file, &shard.index] {
            storage
                .put_file(&root.join(name)?, &dir.join(name), &mut |_| {})
                .with_context(|| format!("uploading {} to {url}", dir.join(name).display()))?;
        }
        bar.inc(shard.bytes);
    }
    storage.put_file(&root.join(INDEX_FILE)?, &dir.join(INDEX_FILE), &mut |_| {})?;
    bar.finish_and_clear();
    Ok(())
}

/// What a pack wrote.
pub struct PackSummary {
    /// The index written as `index.json`.
    pub index: PackIndex,
    /// Samples skipped as unreadable.
    pub skipped: u64,
    /// The first skipped sample's error.
    pub first_error: Option<String>,
}

/// Image statistics gathered while packing.
#[derive(Default)]
struct Seen {
    channels: u32,
    bit_depth: u32,
    min_size: Option<[u32; 2]>,
    max_size: [u32; 2],
}

impl Seen {
    fn add(&mut self, image: &Image) {
        self.channels = self.channels.max(image.channels());
        let depth = if matches!(image.pixels(), Pixels::U16(_)) {
            16
        } else {
            8
        };
        self.bit_depth = self.bit_depth.max(depth);
        let size = [image.width(), image.height()];
        let min = self.min_size.get_or_insert(size);
        *min = [min[0].min(size[0]), min[1].min(size[1])];
        self.max_size = [self.max_size[0].max(size[0]), self.max_size[1].max(size[1])];
    }
}

/// Writes the shards and indexes of `dataset` into `options.output`.
pub fn pack(
    dataset: &DatasetHandle,
    declared: &DatasetInfo,
    source: SourceInfo,
    options: &PackOptions,
) -> Result<PackSummary> {
    let out = &options.output;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The old index goes first: from now until the new one is written, no index lists a
    // shard being replaced.
    let index_path = out.join(INDEX_FILE);
    if index_path.exists() {
        std::fs::remove_file(&index_path)
            .with_context(|| format!("removing the old {}", index_path.display()))?;
    }
    let groups = dataset.groups().context("reading the dataset's groups")?;
    let findings = dataset
        .findings()
        .context("reading the dataset's findings")?;
    let bar = ProgressBar::new(dataset.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("packing [{bar:30}] {pos}/{len} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut shards: Vec<ShardEntry> = Vec::new();
    let mut builder = ShardBuilder::new();
    let mut seen = Seen::default();
    let mut skipped = 0u64;
    let mut first_error = None;
    for start in (0..dataset.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(dataset.len());
        for (offset, result) in read_chunk(dataset, start..end, options)
            .into_iter()
            .enumerate()
        {
            let index = start + offset;
            let (image, label, id) = match result {
                Ok(parts) => parts,
                Err(e) if options.skip_unreadable => {
                    skipped += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                    continue;
                }
                Err(e) => {
                    return Err(e.context(
                        "pack stopped; --skip_unreadable_images=true skips such samples and counts them",
                    ))
                }
            };
            seen.add(&image);
            let sample = PackSample {
                key: format!("{index:09}"),
                image,
                label,
                id,
                group: groups.as_ref().map(|g| g[index].clone()),
                findings: findings.as_ref().map(|f| f.of(index).to_vec()),
            };
            if !builder.is_empty()
                && (builder.size() as u64 >= options.shard_bytes
                    || builder.len() as u64 >= options.shard_samples)
            {
                let full = std::mem::take(&mut builder);
                shards.push(write_shard(out, &shards, full)?);
            }
            builder
                .add(&sample, options.encoding)
                .map_err(|e| anyhow::anyhow!("sample {index} ({}): {e}", sample.id))?;
        }
        bar.set_position(end as u64);
    }
    if !builder.is_empty() {
        shards.push(write_shard(out, &shards, builder)?);
    }
    bar.finish_and_clear();
    if shards.is_empty() {
        bail!(
            "every sample was unreadable ({skipped}); the first: {}",
            first_error.unwrap_or_default()
        );
    }
    remove_stale_shards(out, shards.len())?;
    let samples = shards.iter().map(|s| s.samples).sum();
    let index = PackIndex {
        format: format::FORMAT.into(),
        version: format::FORMAT_VERSION,
        samples,
        num_classes: dataset.num_classes().map(|n| n as u64),
        findings: findings.map(|f| f.names().to_vec()),
        channels: seen.channels,
        bit_depth: seen.bit_depth,
        max_side: options.max_side,
        min_size: seen.min_size.unwrap_or_default(),
        max_size: seen.max_size,
        encoding: options.encoding.extension().into(),
        declared: DeclaredInfo {
            image_kind: match declared.image_kind {
                ImageKind::Grey => "grey",
                ImageKind::Rgb => "rgb",
            }
            .into(),
            small_images: declared.small_images,
            varying_sizes: declared.varying_sizes,
            eval_transforms: declared.eval_transforms.clone(),
        },
        source,
        ssl_host_version: env!("CARGO_PKG_VERSION").into(),
        skipped,
        shards,
    };
    write_atomic(&index_path, index.to_json().as_bytes())?;
    Ok(PackSummary {
        index,
        skipped,
        first_error,
    })
}

/// Reads samples `range` on up to `options.threads` threads, resized; in order.
fn read_chunk(
    dataset: &DatasetHandle,
    range: std::ops::Range<usize>,
    options: &PackOptions,
) -> Vec<Result<(Image, Option<i64>, String)>> {
    let read = |index: usize| -> Result<(Image, Option<i64>, String)> {
        let (image, label, id) = dataset
            .get(index)
            .with_context(|| format!("reading sample {index}"))?
            .into_parts();
        let image = match options.max_side {
            Some(side) => limit_side(image, side).with_context(|| format!("resizing {id}"))?,
            None => image,
        };
        Ok((image, label, id))
    };
    let threads = options.threads.clamp(1, range.len().max(1));
    if threads == 1 {
        return range.map(read).collect();
    }
    let mut results: Vec<Option<Result<_>>> = (0..range.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = range.clone();
                let read = &read;
                scope.spawn(move || {
                    range
                        .clone()
                        .skip(t)
                        .step_by(threads)
                        .map(|i| (i - range.start, read(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(_) => {
                    for slot in results.iter_mut().filter(|s| s.is_none()) {
                        *slot = Some(Err(anyhow::anyhow!("a pack thread panicked")));
                    }
                }
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a sample was not read"))))
        .collect()
}

/// `image` with its longer side at most `side`, resized as the pipelines' `Resize` does and
/// rounded back to the image's own bit depth; unchanged when it already fits.
pub fn limit_side(image: Image, side: u32) -> Result<Image> {
    let (w, h) = (image.width(), image.height());
    let long = w.max(h);
    if long <= side {
        return Ok(image);
    }
    let scale = |x: u32| ((x as f64 * side as f64 / long as f64).round() as u32).max(1);
    let (out_w, out_h) = (scale(w), scale(h));
    let sixteen = match image.pixels() {
        Pixels::U8(_) => false,
        Pixels::U16(_) => true,
        Pixels::F32(_) => bail!("pack stores 8- or 16-bit images; this dataset gives floats"),
    };
    let channels = image.channels();
    let resize = Resize::from_params(&Params::from_value(serde_json::json!({
        "size": [out_h, out_w]
    }))?)?;
    let resized = resize.apply(image, 0)?;
    let Pixels::F32(values) = resized.pixels() else {
        bail!("Resize gave integer pixels");
    };
    if sixteen {
        let v = values
            .iter()
            .map(|&x| (x.clamp(0.0, 1.0) * 65535.0).round() as u16)
            .collect();
        Ok(Image::from_u16(out_w, out_h, channels, v)?)
    } else {
        let v = values
            .iter()
            .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        Ok(Image::from_u8(out_w, out_h, channels, v)?)
    }
}

/// Writes the shard after `before` and its member index, each atomically.
fn write_shard(out: &Path, before: &[ShardEntry], builder: ShardBuilder) -> Result<ShardEntry> {
    let (tar, idx) = format::shard_names(before.len());
    let first = before.iter().map(|s| s.samples).sum();
    let samples = builder.len() as u64;
    let (bytes, members) = builder.finish();
    write_atomic(&out.join(&tar), &bytes)?;
    let members = serde_json::to_string(&members)?;
    write_atomic(&out.join(&idx), members.as_bytes())?;
    Ok(ShardEntry {
        file: tar,
        first_sample: first,
        samples,
        bytes: bytes.len() as u64,
        sha256: format::sha256_hex(&bytes),
        index: idx,
    })
}

/// Removes `shard-N.tar` and `shard-N.idx.json` for N ≥ `count` (left by an earlier, larger
/// pack into the same folder).
fn remove_stale_shards(out: &Path, count: usize) -> Result<()> {
    let mut n = count;
    loop {
        let (tar, idx) = format::shard_names(n);
        let (tar, idx) = (out.join(tar), out.join(idx));
        if !tar.exists() && !idx.exists() {
            return Ok(());
        }
        for path in [tar, idx] {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the stale {}", path.display()))?;
            }
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longer_side_is_limited_keeping_depth_and_channels() {
        let grey16 = Image::from_u16(8, 4, 1, vec![40000; 32]).unwrap();
        let out = limit_side(grey16, 4).unwrap();
        assert_eq!((out.width(), out.height(), out.channels()), (4, 2, 1));
        assert!(matches!(out.pixels(), Pixels::U16(v) if v.iter().all(|&x| x == 40000)));
        let rgb = Image::from_u8(3, 6, 3, vec![9; 54]).unwrap();
        let out = limit_side(rgb, 3).unwrap();
        assert_eq!((out.width(), out.height(), out.channels()), (2, 3, 3));
        assert!(matches!(out.pixels(), Pixels::U8(v) if v.iter().all(|&x| x == 9)));
        let small = Image::from_u8(2, 2, 1, vec![1, 2, 3, 4]).unwrap();
        assert_eq!(limit_side(small.clone(), 5).unwrap(), small);
    }

    fn pack_into(
        registry: &Registry,
        name: &str,
        params: serde_json::Value,
        out: &Path,
    ) -> (DatasetHandle, PackSummary) {
        let factory = registry.dataset(name).unwrap();
        let params = Params::from_value(params).unwrap();
        let source = factory.create(&params).unwrap();
        let declared = factory.info_for(&params).unwrap();
        let options = PackOptions {
            output: out.to_path_buf(),
            upload_to: None,
            max_side: None,
            encoding: Encoding::Npy,
            shard_bytes: u64::MAX,
            shard_samples: 2,
            skip_unreadable: false,
            threads: 1,
        };
        let info = SourceInfo {
            dataset: name.into(),
            split: "train".into(),
            params: params.as_json().as_object().unwrap().clone(),
        };
        let summary = pack(&source, &declared, info, &options).unwrap();
        (source, summary)
    }

    /// An NIH folder written by hand (three PNGs with their findings and patients) is packed,
    /// over two shards, and `Packed` serves the same findings and groups.
    #[test]
    fn a_multi_label_dataset_is_packed_with_its_findings() {
        let tmp = tempfile::tempdir().unwrap();
        let nih = tmp.path().join("nih");
        std::fs::create_dir_all(&nih).unwrap();
        let rows = [
            ("00000001_000.png", "Effusion|Mass", 1),
            ("00000001_001.png", "No Finding", 1),
            ("00000002_000.png", "Hernia", 2),
        ];
        let mut csv = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient \
                       Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
            .to_string();
        for (i, (name, findings, patient)) in rows.iter().enumerate() {
            let image = Image::from_u8(4, 3, 1, vec![40 * i as u8; 12]).unwrap();
            std::fs::write(nih.join(name), format::encode_png(&image).unwrap()).unwrap();
            csv += &format!("{name},{findings},0,{patient},50,M,PA,4,3,0.1,0.1\n");
        }
        std::fs::write(nih.join("Data_Entry_2017.csv"), csv).unwrap();
        let registry = Registry::load(&[]).unwrap();
        let out = tmp.path().join("packed");
        let (source, summary) = pack_into(
            &registry,
            "NIHCXR",
            serde_json::json!({"root": nih, "split": "train"}),
            &out,
        );
        let names = summary.index.findings.clone().unwrap();
        assert_eq!((names.len(), names[2].as_str()), (14, "Effusion"));
        assert_eq!(summary.index.shards.len(), 2);
        assert_eq!(summary.index.num_classes, None);
        let packed = registry
            .dataset("Packed")
            .unwrap()
            .create(&Params::from_value(serde_json::json!({"root": out})).unwrap())
            .unwrap();
        let findings = packed.findings().unwrap().unwrap();
        assert_eq!(Some(&findings), source.findings().unwrap().as_ref());
        let mut first = [0i8; 14];
        (first[2], first[4]) = (1, 1);
        let mut third = [0i8; 14];
        third[13] = 1;
        assert_eq!(findings.values(), [first, [0; 14], third].concat());
        assert_eq!(packed.groups().unwrap().unwrap(), ["1", "1", "2"]);
        assert_eq!(packed.num_classes(), None);
        assert_eq!(packed.targets().unwrap(), [None, None, None]);

        // A single-label dataset packs no findings.
        let shapes = tmp.path().join("shapes");
        let (_, summary) = pack_into(
            &registry,
            "Shapes",
            serde_json::json!({"num_samples": 3, "image_size": 8}),
            &shapes,
        );
        assert_eq!(summary.index.findings, None);
        let text = std::fs::read_to_string(shapes.join(INDEX_FILE)).unwrap();
        assert!(!text.contains("findings"), "{text}");
        let packed = registry
            .dataset("Packed")
            .unwrap()
            .create(&Params::from_value(serde_json::json!({"root": shapes})).unwrap())
            .unwrap();
        assert_eq!(packed.findings().unwrap(), None);
        assert_eq!(packed.num_classes(), Some(4));
    }
}
