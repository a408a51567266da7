//! Checkpoints: safetensors files (no code runs on load) with a JSON record under the
//! `ssl_host` metadata key, written atomically (temporary file, fsync, rename).
//!
//! Every file written here also carries, under the [`CHECKSUM_KEY`] metadata key, a SHA-256
//! checksum of its tensors (names, dtypes, shapes and bytes; see [`tensors_checksum`]).
//! [`load`] verifies it, so a flipped bit on disk is reported as a corrupt file, naming it,
//! instead of surfacing later as a shape error or a NaN loss. Files written before the
//! checksum existed have no such key and load unchecked.

use crate::atomic_file::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The format tag of the metadata record.
pub const FORMAT: &str = "ssl-host-checkpoint-v1";

/// The metadata key of the tensors' checksum: `sha256:` and 64 hex digits.
pub const CHECKSUM_KEY: &str = "ssl_host_tensors_checksum";

/// What a checkpoint says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointInfo {
    /// Always [`FORMAT`].
    pub format: String,
    /// Epochs completed (the next run continues at this epoch index).
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// The `--model` name.
    pub model: String,
    /// The resolved config (TOML).
    pub config: String,
    /// The SSL algorithm (e.g. `BYOL`).
    pub algorithm: String,
    /// The encoder (e.g. `resnet18`) and its parameters (JSON).
    pub encoder: String,
    pub encoder_params: String,
    /// Prefix of the embedding encoder inside the `algorithm.` tensors.
    pub embedding_encoder_prefix: String,
    /// Name and version of each plugin used.
    pub plugins: BTreeMap<String, String>,
    /// The number of processes that trained the run (1 in checkpoints written before it was
    /// recorded): with the per-process batch sizes of `config`, the global batch.
    #[serde(default = "one")]
    pub world_size: usize,
    /// The precision the run trained with (`32-true`, `16-mixed`, `bf16-mixed`: `precision`
    /// resolved for the device, see [`crate::engine::precision::resolve`]); empty in
    /// checkpoints written before it was recorded.
    #[serde(default)]
    pub precision: String,
}

fn one() -> usize {
    1
}

fn kind_to_dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store tensors of kind {other:?}"),
    })
}

/// The tch kind of a safetensors dtype.
pub fn dtype_to_kind(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => bail!("unsupported tensor type {other:?}"),
    })
}

/// Writes `tensors` and `info` to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)], info: &CheckpointInfo) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert("ssl_host".to_string(), serde_json::to_string(info)?);
    save_with_metadata(path, tensors, metadata)
}

/// Writes `tensors` as safetensors with `metadata` to `path` atomically.
pub fn save_with_metadata(
    path: &Path,
    tensors: &[(String, Tensor)],
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let t = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = kind_to_dtype(t.kind()).with_context(|| format!("tensor `{name}`"))?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, numel);
        let shape = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                TensorView::new(*d, s.clone(), b).map_err(|e| anyhow!("tensor `{n}`: {e:?}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    metadata.insert(
        CHECKSUM_KEY.to_string(),
        tensors_checksum(views.iter().map(|(n, v)| (n.as_str(), v))),
    );
    let bytes = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| anyhow!("serializing checkpoint: {e:?}"))?;
    write_atomic(path, &bytes)
}

/// The checksum of a set of tensors, independent of their order: `sha256:` and the hex
/// SHA-256 of, for each tensor in name order, the name, the dtype as the safetensors header
/// writes it (`F32`, `I64`, ...), the shape and the data bytes, each preceded by its length
/// (or, for the shape, its number of dimensions) as a little-endian `u64`.
pub fn tensors_checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a TensorView<'a>)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for (name, view) in sorted {
        field(name.as_bytes());
        field(format!("{:?}", view.dtype()).as_bytes());
        let shape: Vec<u8> = view
            .shape()
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&shape);
        field(view.data());
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Checks the tensors of a parsed file against the checksum written with them; a file
/// without one (written before checksums existed) passes unchecked.
fn verify_checksum(
    path: &Path,
    parsed: &safetensors::SafeTensors<'_>,
    metadata: &safetensors::tensor::Metadata,
) -> Result<()> {
    let Some(expected) = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CHECKSUM_KEY))
    else {
        return Ok(());
    };
    let views = parsed.tensors();
    let actual = tensors_checksum(views.iter().map(|(n, v)| (n.as_str(), v)));
    if &actual != expected {
        bail!(
            "checkpoint {} is corrupt: its tensors do not match the checksum written with them \
             (expected {expected}, found {actual}); the file was damaged after it was written \
             (disk, copy or transfer): use an intact copy",
            path.display()
        );
    }
    Ok(())
}

/// The checkpoint of the run in `dir`: `dir/checkpoints/last.safetensors`, the latest one
/// (written after every epoch, and mid-epoch on a signal or `checkpoint_every_n_steps`).
pub fn last_in(dir: &Path) -> PathBuf {
    dir.join("checkpoints").join("last.safetensors")
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub info: CheckpointInfo,
    pub tensors: HashMap<String, Tensor>,
}

/// Reads `info` only, without materialising tensors.
pub fn read_info(path: &Path) -> Result<CheckpointInfo> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    Ok(parse(path, &bytes)?.1)
}

/// Loads a checkpoint, with one clear error for a missing, truncated, corrupt (checksum
/// mismatch) or foreign file.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    from_bytes(path, &bytes)
}

/// [`load`] of the bytes of the checkpoint file `path` (named in errors), e.g. bytes another
/// process read and sent.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let (parsed, info) = parse(path, bytes)?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{}: {e:?}", path.display()))?;
    verify_checksum(path, &parsed, &metadata)?;
    let mut tensors = HashMap::new();
    for (name, view) in parsed.tensors() {
        let kind = dtype_to_kind(view.dtype())
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.insert(name, Tensor::from_data_size(view.data(), &shape, kind));
    }
    Ok(Checkpoint { info, tensors })
}

/// The safetensors view of a checkpoint's bytes and its ssl-host record.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(safetensors::SafeTensors<'a>, CheckpointInfo)> {
    let parsed = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow!(
            "{} is not a readable safetensors checkpoint (truncated or corrupt?): {e:?}",
            path.display()
        )
    })?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{}: {e:?}", path.display()))?;
    let record = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ssl_host"))
        .ok_or_else(|| {
            anyhow!(
                "{} is a safetensors file but not an ssl-host checkpoint (no `ssl_host` metadata)",
                path.display()
            )
        })?;
    let info: CheckpointInfo = serde_json::from_str(record)
        .map_err(|e| anyhow!("{}: unreadable ssl-host metadata: {e}", path.display()))?;
    if info.format != FORMAT {
        bail!(
            "{}: checkpoint format `{}`, this ssl-host reads `{FORMAT}`",
            path.display(),
            info.format
        );
    }
    Ok((parsed, info))
}

/// `list` with every name prefixed by `prefix` (how a run's parts share one checkpoint).
pub fn prefixed(prefix: &str, list: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    list.into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect()
}

/// The stored tensors whose names start with `prefix`, without it (shallow clones).
pub fn under(stored: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    stored
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(prefix)
                .map(|n| (n.to_string(), t.shallow_clone()))
        })
        .collect()
}

/// Copies stored tensors into live ones (same names after `prefix`), in place; every live
/// tensor must be present with the same shape.
pub fn restore_into(
    stored: &HashMap<String, Tensor>,
    prefix: &str,
    live: &[(String, Tensor)],
    what: &str,
) -> Result<()> {
    ssl_plugin_api::tch::no_grad(|| -> Result<()> {
        for (name, tensor) in live {
            let key = format!("{prefix}{name}");
            let source = stored
                .get(&key)
                .ok_or_else(|| anyhow!("checkpoint lacks `{key}` ({what})"))?;
            if source.size() != tensor.size() {
                bail!(
                    "checkpoint `{key}` has shape {:?}, {what} expects {:?}",
                    source.size(),
                    tensor.size()
                );
            }
            let mut target = tensor.shallow_clone();
            target.copy_(&source.to_device(tensor.device()).to_kind(tensor.kind()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CheckpointInfo {
        CheckpointInfo {
            format: FORMAT.into(),
            epochs_done: 2,
            global_step: 10,
            model: "M".into(),
            config: "x = 1".into(),
            algorithm: "BYOL".into(),
            encoder: "resnet18".into(),
            encoder_params: "{}".into(),
            embedding_encoder_prefix: "target.encoder.".into(),
            plugins: BTreeMap::new(),
            world_size: 1,
            precision: "32-true".into(),
        }
    }

    #[test]
    fn round_trip_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1]);
        let b = Tensor::from_slice(&[7i64]);
        save(
            &path,
            &[
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            &info(),
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.info, info());
        assert!(c.tensors["a"].equal(&a) && c.tensors["b"].equal(&b));
        let live = Tensor::zeros([3, 1], (Kind::Float, Device::Cpu));
        restore_into(
            &c.tensors,
            "",
            &[("a".into(), live.shallow_clone())],
            "test",
        )
        .unwrap();
        assert!(live.equal(&a));
        let err = restore_into(&c.tensors, "x.", &[("a".into(), live)], "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks `x.a`"), "{err}");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        let plain = safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), &None).unwrap();
        std::fs::write(&path, plain).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(err.contains("not an ssl-host checkpoint"), "{err}");
        assert!(load(&dir.path().join("missing")).is_err());
    }

    /// Writes a two-tensor checkpoint and returns its path and the offset of the data region
    /// (after the 8-byte header length and the JSON header).
    fn saved(dir: &Path) -> (std::path::PathBuf, usize) {
        let path = dir.join("last.safetensors");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.5]).view([2, 2]);
        let b = Tensor::from_slice(&[7i64, 8]);
        save(&path, &[("a".into(), a), ("b".into(), b)], &info()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (path, 8 + header)
    }

    #[test]
    fn a_flipped_byte_in_the_tensor_data_is_reported_as_corruption_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data_start) = saved(dir.path());
        // Intact: loads, and the checksum is in the header.
        let c = load(&path).unwrap();
        assert_eq!(c.tensors.len(), 2);
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
        assert!(text.contains(CHECKSUM_KEY), "{text}");
        let intact = std::fs::read(&path).unwrap();
        let data_len = intact.len() - data_start;
        assert_eq!(data_len, 4 * 4 + 2 * 8);
        // One flipped bit at each end and in the middle of the data region.
        for offset in [0, data_len / 2, data_len - 1] {
            let mut bytes = intact.clone();
            bytes[data_start + offset] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            let err = format!(
                "{:#}",
                load(&path).err().expect("corruption went unnoticed")
            );
            assert!(
                err.contains(&format!(
                    "checkpoint {} is corrupt: its tensors do not match the checksum written with them",
                    path.display()
                )),
                "byte {offset}: {err}"
            );
        }
        std::fs::write(&path, &intact).unwrap();
        assert!(load(&path).is_ok());
    }

    #[test]
    fn a_checkpoint_without_a_checksum_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.safetensors");
        // As written before checksums existed: only the `ssl_host` record.
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![2], &data).unwrap();
        let metadata = HashMap::from([(
            "ssl_host".to_string(),
            serde_json::to_string(&info()).unwrap(),
        )]);
        std::fs::write(
            &path,
            safetensors::serialize([("w".to_string(), view)], &Some(metadata)).unwrap(),
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert!(c.tensors["w"].equal(&Tensor::from_slice(&[1.0f32, 2.0])));
        assert_eq!(c.info, info());
    }

    #[test]
    fn the_checksum_covers_names_dtypes_and_shapes_not_just_bytes() {
        let data = [0u8; 8];
        let sum = |name: &str, dtype: Dtype, shape: Vec<usize>| {
            let view = TensorView::new(dtype, shape, &data).unwrap();
            tensors_checksum([(name, &view)])
        };
        let base = sum("w", Dtype::F32, vec![2]);
        assert!(
            base.starts_with("sha256:") && base.len() == 7 + 64,
            "{base}"
        );
        assert_eq!(base, sum("w", Dtype::F32, vec![2]));
        assert_ne!(base, sum("v", Dtype::F32, vec![2]));
        assert_ne!(base, sum("w", Dtype::I32, vec![2]));
        assert_ne!(base, sum("w", Dtype::F32, vec![1, 2]));
        assert_ne!(base, sum("w", Dtype::U8, vec![8]));
    }
}
