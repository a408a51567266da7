//! `Packed`: a dataset read from tar shards (`packed_format.rs`), written by `ssl-host pack`
//! or by Python's `webdataset`.
//!
//! Random access by sample index: the shards are memory-mapped and a sample's image is decoded
//! from its member's bytes, located through the shard's member index; no shard is read whole.
//! Labels, ids, groups and findings (`.cls`, `.json`) are read once when the dataset opens, so
//! `targets`, `groups` and `findings` decode no image. A multi-label dataset's findings are
//! served when `index.json` names them (`findings`); then every sample must have one value per
//! name, else opening is an error naming the shard and sample. Folders packed without findings
//! have none. The images are exactly what was packed: the
//! sampler, distributed slicing and resume see the same dataset as from the source.
//!
//! A folder without `index.json` (shards written by another tool) is indexed on first use:
//! the index is written beside the shards, or under the cache folder (parameter `cache_dir`,
//! else `$XDG_CACHE_HOME/ssl-host` or `~/.cache/ssl-host`) when that folder is read-only, and
//! reused while the shards keep their sizes.
//!
//! A packed folder holds one split: the split it was packed from (`train` for foreign shards)
//! gives every sample, the other split none.

use crate::csv_table::{check_params, root_param};
use crate::packed_format::{
    self as format, DeclaredInfo, PackIndex, SampleEntry, SampleMeta, ShardEntry, ShardIndex,
    SourceInfo, INDEX_FILE,
};
use crate::split::Split;
use ssl_plugin_api::{
    bail, Dataset, DatasetInfo, Findings, ImageKind, Params, Pixels, Plugin, PluginError, Result,
    Sample,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NAME: &str = "Packed";

/// One shard: its member index, and its memory map once a sample of it is read.
struct Shard {
    file: String,
    /// The size `index.json` lists.
    bytes: u64,
    index: ShardIndex,
    /// Mapped on first use: a dataset in object storage has a shard in its local folder only
    /// once the host has fetched it, which it does before the first read of one of its images.
    map: OnceLock<memmap2::Mmap>,
}

impl Shard {
    /// The shard's bytes, mapped on first use.
    fn map(&self, root: &Path) -> Result<&memmap2::Mmap> {
        if let Some(map) = self.map.get() {
            return Ok(map);
        }
        let map = map_shard(&root.join(&self.file), self.bytes)?;
        // Two threads may map it at once; the second map is dropped.
        Ok(self.map.get_or_init(|| map))
    }
}

/// A packed dataset (see the module doc).
pub struct Packed {
    root: PathBuf,
    index: PackIndex,
    shards: Vec<Shard>,
    /// Index of each shard's first sample (ascending), for the binary search of `get`.
    starts: Vec<usize>,
    metas: Vec<SampleMeta>,
    /// The findings of the samples served, when `index.json` names findings.
    findings: Option<Findings>,
    /// False for the split the folder does not hold.
    served: bool,
}

impl Packed {
    /// Opens the folder `root` (parameters `root`, `split`, `cache_dir`).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(params, NAME, &["cache_dir"])?;
        let root = root_param(params, NAME)?;
        let split = Split::parse(&params.get_or("split", "train".to_string())?)?;
        let cache_dir: Option<PathBuf> = params.get("cache_dir")?;
        let (index, index_dir) = load_or_build_index(&root, cache_dir.as_deref())?;
        let served = index.source.split == split.as_str();
        let mut shards = Vec::with_capacity(index.shards.len());
        let mut counts = BTreeMap::new();
        // A local copy of a dataset in object storage gets its shards as the host fetches
        // them; any other folder must hold them all, whole, now.
        let on_demand = root.join(format::REMOTE_MARKER).exists();
        for (n, entry) in index.shards.iter().enumerate() {
            let path = root.join(&entry.file);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() != entry.bytes => {
                    return Err(wrong_size(&path, m.len(), entry.bytes))
                }
                Ok(_) => {}
                Err(_) if on_demand => {}
                Err(e) => bail!(
                    "{NAME}: shard {} listed in {INDEX_FILE}: {e}",
                    path.display()
                ),
            }
            let shard = open_shard(&root, &index_dir, entry)?;
            counts.insert(n, shard.index.samples.len());
            shards.push(shard);
        }
        format::check_counts(
            &index,
            &counts,
            &root.join(INDEX_FILE).display().to_string(),
        )?;
        let starts = index
            .shards
            .iter()
            .map(|s| s.first_sample as usize)
            .collect();
        // Metadata from the member indexes when `pack` wrote it there, else from the members.
        let mut metas = Vec::with_capacity(index.samples as usize);
        let mut values = Vec::new();
        for shard in &shards {
            let what = root.join(&shard.file).display().to_string();
            for entry in &shard.index.samples {
                let meta = match &entry.meta {
                    Some(meta) => meta.clone(),
                    None => format::read_meta(shard.map(&root)?, entry, &what)?,
                };
                if let Some(names) = &index.findings {
                    values.extend(sample_findings(&meta, names, &entry.key, &what)?);
                }
                metas.push(meta);
            }
        }
        let findings = match &index.findings {
            Some(names) if !served => Some(Findings::new(names.clone(), Vec::new())),
            Some(names) => Some(Findings::new(names.clone(), values)),
            None => None,
        }
        .transpose()
        .map_err(|e| {
            PluginError::msg(format!(
                "{NAME}: {}: findings: {e}",
                root.join(INDEX_FILE).display()
            ))
        })?;
        Ok(Packed {
            root,
            index,
            shards,
            starts,
            metas,
            findings,
            served,
        })
    }

    /// What the dataset in `params` declares: what its source declared (from `index.json`);
    /// for foreign shards, grey or RGB from the first image.
    pub fn info_from_params(params: &Params) -> Result<DatasetInfo> {
        let root = root_param(params, NAME)?;
        let cache_dir: Option<PathBuf> = params.get("cache_dir")?;
        let (index, _) = load_or_build_index(&root, cache_dir.as_deref())?;
        Ok(declared_info(&index.declared))
    }

    fn locate(&self, index: usize) -> (&Shard, &SampleEntry) {
        let n = self.starts.partition_point(|&s| s <= index) - 1;
        let shard = &self.shards[n];
        (shard, &shard.index.samples[index - self.starts[n]])
    }
}

/// The finding values of the sample `key` of the shard `what`: one per name of `names`.
fn sample_findings<'a>(
    meta: &'a SampleMeta,
    names: &[String],
    key: &str,
    what: &str,
) -> Result<&'a [i8]> {
    match &meta.findings {
        Some(values) if values.len() == names.len() => Ok(values),
        Some(values) => bail!(
            "{NAME}: {what}: sample `{key}` has {} finding values, {INDEX_FILE} names {} \
             findings ({})",
            values.len(),
            names.len(),
            names.join(", ")
        ),
        None => bail!(
            "{NAME}: {what}: sample `{key}` has no findings, but {INDEX_FILE} names findings \
             ({}); pack the dataset again",
            names.join(", ")
        ),
    }
}

fn declared_info(declared: &DeclaredInfo) -> DatasetInfo {
    DatasetInfo {
        image_kind: if declared.image_kind == "grey" {
            ImageKind::Grey
        } else {
            ImageKind::Rgb
        },
        small_images: declared.small_images,
        varying_sizes: declared.varying_sizes,
        eval_transforms: declared.eval_transforms.clone(),
    }
}

impl Dataset for Packed {
    fn len(&self) -> usize {
        if self.served {
            self.metas.len()
        } else {
            0
        }
    }

    fn num_classes(&self) -> Option<usize> {
        self.index.num_classes.map(|n| n as usize)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            bail!("{NAME}: sample {index} of {} requested", self.len());
        }
        let (shard, entry) = self.locate(index);
        let what = self.root.join(&shard.file).display().to_string();
        let image = format::read_image(shard.map(&self.root)?, entry, &what)?;
        let meta = &self.metas[index];
        Ok(Sample::new(image, meta.label, meta.id.clone()))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(self.metas[..self.len()].iter().map(|m| m.label).collect())
    }

    fn groups(&self) -> Result<Option<Vec<String>>> {
        let metas = &self.metas[..self.len()];
        if metas.iter().all(|m| m.group.is_none()) {
            return Ok(None);
        }
        Ok(Some(
            metas
                .iter()
                .map(|m| m.group.clone().unwrap_or_else(|| m.id.clone()))
                .collect(),
        ))
    }

    fn findings(&self) -> Result<Option<Findings>> {
        Ok(self.findings.clone())
    }

    fn ids(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(
            self.metas[..self.len()]
                .iter()
                .map(|m| m.id.clone())
                .collect(),
        ))
    }
}

/// Shard `entry` of the folder `root` with its member index (from `index_dir`, or from the
/// tar itself when the file is missing, which maps the shard now); the shard is mapped on
/// first use otherwise.
fn open_shard(root: &Path, index_dir: &Path, entry: &ShardEntry) -> Result<Shard> {
    let shard = Shard {
        file: entry.file.clone(),
        bytes: entry.bytes,
        index: ShardIndex::default(),
        map: OnceLock::new(),
    };
    let idx_path = index_dir.join(&entry.index);
    let index = match std::fs::read(&idx_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::msg(format!("{NAME}: {}: {e}", idx_path.display())))?,
        Err(_) => {
            let path = root.join(&entry.file);
            format::index_tar(shard.map(root)?, &path.display().to_string())?
        }
    };
    Ok(Shard { index, ..shard })
}

/// The error for the shard at `path` of `len` bytes where `index.json` lists `listed`.
fn wrong_size(path: &Path, len: u64, listed: u64) -> PluginError {
    PluginError::msg(format!(
        "{NAME}: shard {} is {len} bytes, {INDEX_FILE} lists {listed} bytes: it is incomplete or was replaced; pack the dataset again",
        path.display()
    ))
}

/// Maps the shard at `path`, whose size must be `bytes` (the size `index.json` lists).
fn map_shard(path: &Path, bytes: u64) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)
        .map_err(|e| PluginError::msg(format!("{NAME}: opening shard {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .map_err(|e| PluginError::msg(format!("{NAME}: {}: {e}", path.display())))?
        .len();
    if len != bytes {
        return Err(wrong_size(path, len, bytes));
    }
    // SAFETY: the map is read-only and lives as long as `Shard`; shards are written once
    // (to a temporary name, then renamed), never modified in place, so the bytes do not
    // change under the map. A shard truncated by another process would fault, not corrupt.
    unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| PluginError::msg(format!("{NAME}: mapping {}: {e}", path.display())))
}

/// `root/index.json`, else an index built earlier for foreign shards (beside them or in the
/// cache) while their sizes match, else one built now; with the folder its member indexes
/// are in.
fn load_or_build_index(root: &Path, cache_dir: Option<&Path>) -> Result<(PackIndex, PathBuf)> {
    if !root.is_dir() {
        bail!("{NAME}: {} is not a folder", root.display());
    }
    let own = root.join(INDEX_FILE);
    if own.exists() {
        let text = std::fs::read_to_string(&own)
            .map_err(|e| PluginError::msg(format!("{NAME}: reading {}: {e}", own.display())))?;
        return Ok((
            PackIndex::parse(&text, &own.display().to_string())?,
            root.to_path_buf(),
        ));
    }
    let cache = index_cache_dir(root, cache_dir);
    if let Some(cache) = &cache {
        let cached = cache.join(INDEX_FILE);
        if let Ok(text) = std::fs::read_to_string(&cached) {
            if let Ok(index) = PackIndex::parse(&text, &cached.display().to_string()) {
                if sizes_match(root, &index) {
                    return Ok((index, cache.clone()));
                }
            }
        }
    }
    let (index, members) = build_foreign_index(root)?;
    let write_into = |dir: &Path| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (entry, shard) in index.shards.iter().zip(&members) {
            let text = serde_json::to_string(shard).expect("the member index serializes");
            write_atomic(&dir.join(&entry.index), text.as_bytes())?;
        }
        write_atomic(&dir.join(INDEX_FILE), index.to_json().as_bytes())
    };
    if write_into(root).is_ok() {
        return Ok((index, root.to_path_buf()));
    }
    let Some(cache) = cache else {
        bail!(
            "{NAME}: {} has no {INDEX_FILE}, is read-only, and there is no cache folder (set cache_dir)",
            root.display()
        );
    };
    write_into(&cache).map_err(|e| {
        PluginError::msg(format!(
            "{NAME}: writing the index of {} into {}: {e}",
            root.display(),
            cache.display()
        ))
    })?;
    Ok((index, cache))
}

/// The cache folder of `root`'s index: `cache_dir` (else the user's cache) /
/// `packed-index/<hash of root's absolute path>`.
fn index_cache_dir(root: &Path, cache_dir: Option<&Path>) -> Option<PathBuf> {
    let base = match cache_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
            .join("ssl-host"),
    };
    let absolute = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let hash = format::sha256_hex(absolute.to_string_lossy().as_bytes());
    Some(base.join("packed-index").join(&hash[..16]))
}

fn sizes_match(root: &Path, index: &PackIndex) -> bool {
    index
        .shards
        .iter()
        .all(|s| std::fs::metadata(root.join(&s.file)).is_ok_and(|m| m.len() == s.bytes))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("index");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Indexes every `*.tar` of `root` (by name order) as WebDataset reads them.
fn build_foreign_index(root: &Path) -> Result<(PackIndex, Vec<ShardIndex>)> {
    let mut files: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| PluginError::msg(format!("{NAME}: listing {}: {e}", root.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tar") && !n.starts_with('.'))
        .collect();
    files.sort();
    let interrupted = std::fs::read_dir(root)
        .map_err(|e| PluginError::msg(format!("{NAME}: listing {}: {e}", root.display())))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with(".idx.json"));
    if interrupted {
        bail!(
            "{NAME}: {} has shard indexes (*.idx.json) but no {INDEX_FILE}: an interrupted `ssl-host pack`; pack it again",
            root.display()
        );
    }
    if files.is_empty() {
        bail!(
            "{NAME}: {} has neither {INDEX_FILE} nor .tar shards (write one with `ssl-host pack`)",
            root.display()
        );
    }
    let mut shards = Vec::new();
    let mut members = Vec::new();
    let mut metas = Vec::new();
    let mut first_image = None;
    let mut encodings = std::collections::BTreeSet::new();
    let mut next = 0u64;
    for file in &files {
        let path = root.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| PluginError::msg(format!("{NAME}: reading {}: {e}", path.display())))?;
        let what = path.display().to_string();
        let index = format::index_tar(&bytes, &what)?;
        let index = ShardIndex {
            samples: index
                .samples
                .into_iter()
                .filter(|s| {
                    format::IMAGE_EXTENSIONS
                        .iter()
                        .any(|e| s.member(e).is_some())
                })
                .collect(),
        };
        for entry in &index.samples {
            metas.push(format::read_meta(&bytes, entry, &what)?);
            if let Some(ext) = format::IMAGE_EXTENSIONS
                .iter()
                .find(|e| entry.member(e).is_some())
            {
                encodings.insert(ext.to_string());
            }
            if first_image.is_none() {
                first_image = Some(format::read_image(&bytes, entry, &what)?);
            }
        }
        let stem = file.trim_end_matches(".tar");
        shards.push(ShardEntry {
            file: file.clone(),
            first_sample: next,
            samples: index.samples.len() as u64,
            bytes: bytes.len() as u64,
            sha256: format::sha256_hex(&bytes),
            index: format!("{stem}.idx.json"),
        });
        next += index.samples.len() as u64;
        members.push(index);
    }
    let Some(first) = first_image else {
        bail!("{NAME}: the shards of {} hold no image", root.display());
    };
    let max_label = metas.iter().filter_map(|m| m.label).max();
    let size = [first.width(), first.height()];
    let index = PackIndex {
        format: format::FORMAT.into(),
        version: format::FORMAT_VERSION,
        samples: next,
        num_classes: max_label.map(|l| (l.max(0) + 1) as u64),
        // Foreign shards name no findings (their values alone mean nothing).
        findings: None,
        channels: first.channels(),
        bit_depth: if matches!(first.pixels(), Pixels::U16(_)) {
            16
        } else {
            8
        },
        max_side: None,
        min_size: size,
        max_size: size,
        encoding: if encodings.len() == 1 {
            encodings.into_iter().next().unwrap_or_default()
        } else {
            "mixed".into()
        },
        declared: DeclaredInfo {
            image_kind: if first.channels() == 1 { "grey" } else { "rgb" }.into(),
            ..DeclaredInfo::default()
        },
        source: SourceInfo {
            dataset: "webdataset".into(),
            split: "train".into(),
            params: serde_json::Map::new(),
        },
        ssl_host_version: String::new(),
        skipped: 0,
        shards,
    };
    Ok((index, members))
}

/// Registers `Packed`; its declaration comes from each folder's `index.json`.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            NAME,
            "tar shards written by `ssl-host pack` (or Python's webdataset), read by memory map; \
             declares what the packed source declared; params: root (--local_dataset), split, cache_dir",
            Packed::from_params,
        )
        .dataset_info_from(Packed::info_from_params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed_format::{shard_names, Encoding, PackSample, ShardBuilder};
    use ssl_plugin_api::Image;

    /// Writes `samples` as `pack` would, `per_shard` to a shard, with `index.json`.
    fn write_pack(dir: &Path, samples: &[PackSample], per_shard: usize, encoding: Encoding) {
        write_pack_with_findings(dir, samples, per_shard, encoding, None)
    }

    /// [`write_pack`] with the findings' names in `index.json`.
    fn write_pack_with_findings(
        dir: &Path,
        samples: &[PackSample],
        per_shard: usize,
        encoding: Encoding,
        findings: Option<&[&str]>,
    ) {
        let mut shards = Vec::new();
        for (n, chunk) in samples.chunks(per_shard).enumerate() {
            let mut builder = ShardBuilder::new();
            for s in chunk {
                builder.add(s, encoding).unwrap();
            }
            let (bytes, index) = builder.finish();
            let (tar, idx) = shard_names(n);
            std::fs::write(dir.join(&tar), &bytes).unwrap();
            std::fs::write(dir.join(&idx), serde_json::to_string(&index).unwrap()).unwrap();
            shards.push(ShardEntry {
                file: tar,
                first_sample: (n * per_shard) as u64,
                samples: chunk.len() as u64,
                bytes: bytes.len() as u64,
                sha256: format::sha256_hex(&bytes),
                index: idx,
            });
        }
        let index = PackIndex {
            format: format::FORMAT.into(),
            version: format::FORMAT_VERSION,
            samples: samples.len() as u64,
            num_classes: Some(3),
            findings: findings.map(|names| names.iter().map(|n| n.to_string()).collect()),
            channels: 1,
            bit_depth: 16,
            max_side: None,
            min_size: [4, 3],
            max_size: [4, 3],
            encoding: encoding.extension().into(),
            declared: DeclaredInfo {
                image_kind: "grey".into(),
                varying_sizes: true,
                ..DeclaredInfo::default()
            },
            source: SourceInfo {
                dataset: "Test".into(),
                split: "train".into(),
                params: Default::default(),
            },
            ssl_host_version: "0".into(),
            skipped: 0,
            shards,
        };
        std::fs::write(dir.join(INDEX_FILE), index.to_json()).unwrap();
    }

    fn samples(n: usize) -> Vec<PackSample> {
        (0..n)
            .map(|i| PackSample {
                key: format!("{i:09}"),
                image: Image::from_u16(4, 3, 1, (0..12).map(|x| (x * 1000 + i) as u16).collect())
                    .unwrap(),
                label: Some((i % 3) as i64),
                id: format!("id{i}"),
                group: Some(format!("p{}", i / 2)),
                findings: None,
            })
            .collect()
    }

    fn params(dir: &Path, split: &str) -> Params {
        Params::from_value(serde_json::json!({"root": dir, "split": split})).unwrap()
    }

    #[test]
    fn reads_back_every_sample_across_shards_in_both_encodings() {
        for encoding in [Encoding::Npy, Encoding::Png] {
            let dir = tempfile::tempdir().unwrap();
            let source = samples(7);
            write_pack(dir.path(), &source, 3, encoding);
            let packed = Packed::from_params(&params(dir.path(), "train")).unwrap();
            assert_eq!(packed.len(), 7);
            assert_eq!(packed.num_classes(), Some(3));
            for (i, s) in source.iter().enumerate() {
                let got = packed.get(i).unwrap();
                assert_eq!(got.image(), &s.image, "sample {i} ({encoding:?})");
                assert_eq!((got.label(), got.id()), (s.label, s.id.as_str()));
            }
            let groups = packed.groups().unwrap().unwrap();
            assert_eq!(groups[5], "p2");
            assert_eq!(packed.targets().unwrap()[4], Some(1));
            let info = Packed::info_from_params(&params(dir.path(), "train")).unwrap();
            assert_eq!(info.image_kind, ImageKind::Grey);
            assert!(info.varying_sizes);
            let test = Packed::from_params(&params(dir.path(), "test")).unwrap();
            assert_eq!(test.len(), 0);
        }
    }

    #[test]
    fn a_shard_of_the_wrong_size_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_pack(dir.path(), &samples(4), 2, Encoding::Npy);
        let shard = dir.path().join("shard-000001.tar");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 512]).unwrap();
        let err = Packed::from_params(&params(dir.path(), "train"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("shard-000001.tar"), "{err}");
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[test]
    fn foreign_shards_are_indexed_once_beside_them_or_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        write_pack(dir.path(), &samples(5), 2, Encoding::Png);
        // As another tool would leave them: shards only.
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        for n in 0..3 {
            std::fs::remove_file(dir.path().join(shard_names(n).1)).unwrap();
            let (tar, _) = shard_names(n);
            std::fs::rename(
                dir.path().join(&tar),
                dir.path().join(format!("data-{n}.tar")),
            )
            .unwrap();
        }
        let packed = Packed::from_params(&params(dir.path(), "train")).unwrap();
        assert_eq!(packed.len(), 5);
        assert_eq!(packed.get(4).unwrap().id(), "id4");
        assert_eq!(packed.findings().unwrap(), None);
        assert_eq!(packed.num_classes(), Some(3));
        assert!(dir.path().join(INDEX_FILE).exists());
        assert!(dir.path().join("data-2.idx.json").exists());

        // Read-only folder: the index goes to the cache folder.
        let ro = tempfile::tempdir().unwrap();
        for n in 0..3 {
            let name = format!("data-{n}.tar");
            std::fs::copy(dir.path().join(&name), ro.path().join(&name)).unwrap();
        }
        let mut perms = std::fs::metadata(ro.path()).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(ro.path(), perms.clone()).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let p =
            Params::from_value(serde_json::json!({"root": ro.path(), "cache_dir": cache.path()}))
                .unwrap();
        let result = Packed::from_params(&p);
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(ro.path(), perms).unwrap();
        let packed = result.unwrap();
        assert_eq!(packed.get(3).unwrap().image(), &samples(5)[3].image);
        let cached = index_cache_dir(ro.path(), Some(cache.path())).unwrap();
        // Under root, writing into a read-only folder succeeds: then the index is beside it.
        assert!(cached.join(INDEX_FILE).exists() || ro.path().join(INDEX_FILE).exists());
    }

    /// `samples(n)` of a multi-label dataset: findings A, B, C with values cycling over 1, 0, -1.
    fn multi_label(n: usize) -> Vec<PackSample> {
        let mut samples = samples(n);
        for (i, s) in samples.iter_mut().enumerate() {
            s.label = None;
            s.findings = Some((0..3).map(|f| ((i + f) % 3) as i8 - 1).collect());
        }
        samples
    }

    #[test]
    fn findings_are_read_back_and_older_folders_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let source = multi_label(7);
        write_pack_with_findings(
            dir.path(),
            &source,
            3,
            Encoding::Npy,
            Some(&["A", "B", "C"]),
        );
        let packed = Packed::from_params(&params(dir.path(), "train")).unwrap();
        let findings = packed.findings().unwrap().unwrap();
        assert_eq!(findings.names(), ["A", "B", "C"]);
        assert_eq!(findings.len(), 7);
        for (i, s) in source.iter().enumerate() {
            assert_eq!(Some(findings.of(i)), s.findings.as_deref(), "sample {i}");
        }
        assert_eq!(findings.of(4), [0, 1, -1]);
        assert_eq!(packed.get(5).unwrap().label(), None);
        let ids: Vec<String> = (0..7)
            .map(|i| packed.get(i).unwrap().id().to_string())
            .collect();
        assert_eq!(packed.ids().unwrap().unwrap(), ids);
        let test = Packed::from_params(&params(dir.path(), "test")).unwrap();
        let none = test.findings().unwrap().unwrap();
        assert_eq!((none.len(), none.names().len()), (0, 3));

        // A folder packed before findings: no `findings` in index.json nor in the metadata.
        let old = tempfile::tempdir().unwrap();
        write_pack(old.path(), &samples(4), 3, Encoding::Npy);
        let text = std::fs::read_to_string(old.path().join(INDEX_FILE)).unwrap();
        assert!(!text.contains("findings"), "{text}");
        let packed = Packed::from_params(&params(old.path(), "train")).unwrap();
        assert_eq!(packed.findings().unwrap(), None);
        assert_eq!(packed.targets().unwrap()[2], Some(2));
    }

    #[test]
    fn findings_that_do_not_match_their_names_are_named() {
        let open_error = |samples: &[PackSample]| {
            let dir = tempfile::tempdir().unwrap();
            write_pack_with_findings(
                dir.path(),
                samples,
                2,
                Encoding::Npy,
                Some(&["A", "B", "C"]),
            );
            Packed::from_params(&params(dir.path(), "train"))
                .err()
                .unwrap()
                .to_string()
        };
        let mut missing = multi_label(4);
        missing[3].findings = None;
        let e = open_error(&missing);
        assert!(
            e.contains("shard-000001.tar: sample `000000003` has no findings")
                && e.contains("(A, B, C)"),
            "{e}"
        );
        let mut short = multi_label(4);
        short[2].findings = Some(vec![1, 0]);
        let e = open_error(&short);
        assert!(
            e.contains("shard-000001.tar: sample `000000002` has 2 finding values")
                && e.contains("names 3 findings"),
            "{e}"
        );
        let mut bad = multi_label(4);
        bad[1].findings = Some(vec![1, 2, 0]);
        let e = open_error(&bad);
        assert!(
            e.contains("index.json: findings: sample 1 has value 2 for finding `B`"),
            "{e}"
        );
    }
}
