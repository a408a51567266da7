//! The on-disk format of packed datasets, shared by `ssl-host pack` (the writer) and the
//! `Packed` dataset (the reader): WebDataset-compatible POSIX tar shards plus JSON indexes.
//!
//! A packed folder holds `shard-000000.tar`, `shard-000001.tar`, ... Each shard is a plain
//! ustar archive with one sample per basename (the key, the source's sample index as nine
//! digits): `<key>.cls` (the label as decimal text, absent when unlabelled), `<key>.json`
//! (`{"id":..,"label":..,"group":..}`, plus `"findings":[1,0,-1,..]` for a multi-label
//! dataset) and the image, `<key>.npy` (numpy `.npy` v1, uint8 or
//! little-endian uint16, `H×W` or `H×W×C`) or `<key>.png` (lossless, 8 or 16 bit). Headers
//! carry no time, owner or user name, so the same samples give byte-identical shards. Beside
//! each shard, `shard-000000.idx.json` lists where each member's bytes lie and each sample's
//! metadata; `index.json` describes the whole (see [`PackIndex`]; the names of a multi-label
//! dataset's findings are there, once) and is written last. Both fields of multi-label
//! datasets are optional, so folders packed before them read as they did.
//!
//! This module does not touch the file system: it builds shard bytes and parses them; the
//! host writes them (atomically) and the dataset maps them.

use crate::image_file::ImageLimits;
use serde::{Deserialize, Serialize};
use ssl_plugin_api::{bail, Image, Pixels, PluginError, Result};
use std::collections::BTreeMap;

/// The `format` tag of `index.json`.
pub const FORMAT: &str = "ssl-host-packed";
/// The version of the format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The dataset-level index's file name.
pub const INDEX_FILE: &str = "index.json";
/// A file the host writes into its local copy of a packed dataset in object storage (holding
/// the dataset's URL): the shards appear there as the host fetches them, so the reader maps
/// each on first use rather than requiring them all at open.
pub const REMOTE_MARKER: &str = ".ssl-host-remote";

/// How images are stored in shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Raw pixels in a numpy `.npy` file: no decoding cost, larger.
    Npy,
    /// Lossless PNG: smaller, decoded on read.
    Png,
}

impl Encoding {
    /// From its name (`npy` or `png`).
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "npy" => Ok(Encoding::Npy),
            "png" => Ok(Encoding::Png),
            other => bail!("unknown encoding `{other}`: expected npy or png"),
        }
    }

    /// The member extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Npy => "npy",
            Encoding::Png => "png",
        }
    }
}

/// What the source dataset declared (its `DatasetInfo`), kept so the packed copy declares the
/// same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredInfo {
    /// `grey` or `rgb`.
    pub image_kind: String,
    /// Small images (CIFAR-like).
    pub small_images: bool,
    /// Images of many sizes.
    pub varying_sizes: bool,
    /// The default evaluation pipeline: `[transform name, JSON parameters]` per step.
    pub eval_transforms: Vec<(String, String)>,
}

/// Where the packed samples came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The source dataset's registered name (`webdataset` for shards found without index).
    pub dataset: String,
    /// The split that was packed.
    pub split: String,
    /// The source dataset's parameters (the folder included).
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// One shard as `index.json` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the packed folder.
    pub file: String,
    /// Index of its first sample in the packed dataset.
    pub first_sample: u64,
    /// Number of samples in it.
    pub samples: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
    /// The file name of its member index (`*.idx.json`).
    pub index: String,
}

/// The dataset-level `index.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackIndex {
    /// [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Number of samples.
    pub samples: u64,
    /// Number of classes; `None` when unlabelled or multi-label.
    pub num_classes: Option<u64>,
    /// The names of a multi-label dataset's findings (each sample's values are in its
    /// [`SampleMeta::findings`]); `None` otherwise, and in folders packed before findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<String>>,
    /// Channels of the images (the largest seen).
    pub channels: u32,
    /// 8 or 16.
    pub bit_depth: u32,
    /// The longer side's limit the images were resized to, `None` when kept as they were.
    pub max_side: Option<u32>,
    /// Smallest and largest `[width, height]` seen.
    pub min_size: [u32; 2],
    /// See `min_size`.
    pub max_size: [u32; 2],
    /// `npy` or `png` (`mixed` only for foreign shards, never written by `pack`).
    pub encoding: String,
    /// What the source declared.
    pub declared: DeclaredInfo,
    /// The source dataset.
    pub source: SourceInfo,
    /// The version of ssl-host that wrote it.
    pub ssl_host_version: String,
    /// Samples that could not be read and were skipped (`--skip_unreadable_images`).
    pub skipped: u64,
    /// The shards, in sample order.
    pub shards: Vec<ShardEntry>,
}

impl PackIndex {
    /// Parses `index.json`, checking the format tag and version; `what` names the file.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| PluginError::msg(format!("{what}: not valid JSON: {e}")))?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            bail!("{what}: format `{format}` is not `{FORMAT}`");
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != FORMAT_VERSION as u64 {
            bail!("{what}: format version {version}, this ssl-host reads version {FORMAT_VERSION}");
        }
        serde_json::from_value(value).map_err(|e| PluginError::msg(format!("{what}: {e}")))
    }

    /// As JSON text (pretty, stable key order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the index serializes") + "\n"
    }
}

/// One member of a shard: where its bytes lie in the tar file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The member's extension (`npy`, `png`, `jpg`, `cls`, `json`, ...).
    pub ext: String,
    /// Offset of its first byte in the shard.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// One sample of a shard's member index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleEntry {
    /// The basename shared by its members.
    pub key: String,
    /// Its members.
    pub members: Vec<MemberEntry>,
    /// Its label, id and group, as its `.cls`/`.json` members hold them: written by `pack`
    /// so that a reader knows every sample's metadata without the shard's bytes (a dataset
    /// in object storage fetches a shard only when one of its images is read). Absent from
    /// indexes built for foreign shards, whose metadata is read from the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<SampleMeta>,
}

impl SampleEntry {
    /// The member with extension `ext`.
    pub fn member(&self, ext: &str) -> Option<&MemberEntry> {
        self.members.iter().find(|m| m.ext == ext)
    }
}

/// A shard's member index (`*.idx.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// The samples, in tar order.
    pub samples: Vec<SampleEntry>,
}

/// A sample to pack.
#[derive(Clone, Debug)]
pub struct PackSample {
    /// Its key (basename).
    pub key: String,
    /// The image (8- or 16-bit).
    pub image: Image,
    /// The label.
    pub label: Option<i64>,
    /// The id.
    pub id: String,
    /// The group (e.g. the patient).
    pub group: Option<String>,
    /// The values of a multi-label dataset's findings (1, 0 or -1, one per name of
    /// [`PackIndex::findings`]).
    pub findings: Option<Vec<i8>>,
}

/// Builds one tar shard in memory.
#[derive(Default)]
pub struct ShardBuilder {
    bytes: Vec<u8>,
    samples: Vec<SampleEntry>,
}

impl ShardBuilder {
    /// An empty shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of samples added.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was added.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Bytes so far (without the end-of-archive blocks).
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `sample` with its image in `encoding`.
    pub fn add(&mut self, sample: &PackSample, encoding: Encoding) -> Result<()> {
        let mut members: Vec<(&str, Vec<u8>)> = Vec::new();
        if let Some(label) = sample.label {
            members.push(("cls", label.to_string().into_bytes()));
        }
        let mut meta = serde_json::Map::new();
        meta.insert("id".into(), sample.id.clone().into());
        meta.insert(
            "label".into(),
            sample
                .label
                .map(serde_json::Value::from)
                .unwrap_or_default(),
        );
        if let Some(group) = &sample.group {
            meta.insert("group".into(), group.clone().into());
        }
        if let Some(findings) = &sample.findings {
            meta.insert("findings".into(), findings.clone().into());
        }
        members.push((
            "json",
            serde_json::Value::Object(meta).to_string().into_bytes(),
        ));
        let image = match encoding {
            Encoding::Npy => encode_npy(&sample.image)?,
            Encoding::Png => encode_png(&sample.image)?,
        };
        members.push((encoding.extension(), image));
        let mut entry = SampleEntry {
            key: sample.key.clone(),
            members: Vec::new(),
            meta: Some(SampleMeta {
                label: sample.label,
                id: sample.id.clone(),
                group: sample.group.clone(),
                findings: sample.findings.clone(),
            }),
        };
        for (ext, data) in members {
            let name = format!("{}.{ext}", sample.key);
            let offset = append_member(&mut self.bytes, &name, &data)?;
            entry.members.push(MemberEntry {
                ext: ext.into(),
                offset,
                size: data.len() as u64,
            });
        }
        self.samples.push(entry);
        Ok(())
    }

    /// The finished tar bytes and the member index.
    pub fn finish(mut self) -> (Vec<u8>, ShardIndex) {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        (
            self.bytes,
            ShardIndex {
                samples: self.samples,
            },
        )
    }
}

/// The file name of shard `n` and of its member index.
pub fn shard_names(n: usize) -> (String, String) {
    (
        format!("shard-{n:06}.tar"),
        format!("shard-{n:06}.idx.json"),
    )
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Appends a ustar header and `data` (padded to 512 bytes); the data's offset.
fn append_member(tar: &mut Vec<u8>, name: &str, data: &[u8]) -> Result<u64> {
    if name.len() > 100 {
        bail!("tar member name `{name}` is longer than 100 bytes");
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}", width = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    if data.len() as u64 >= 8u64.pow(11) {
        bail!(
            "tar member `{name}` is {} bytes, over ustar's 8 GiB",
            data.len()
        );
    }
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    tar.extend_from_slice(&header);
    let offset = tar.len() as u64;
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    Ok(offset)
}

/// Reads a tar field holding an octal number (or GNU base-256).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return Some(
            field[1..]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64),
        );
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The `path` record of a pax extended header, if any.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len == 0 || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(path) = record.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(path).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

/// The member index of a tar file written by any tool (Python's `webdataset`, GNU tar, ...):
/// regular files grouped into samples by basename as WebDataset does (the name up to the
/// first `.` of its last path component), in tar order. `what` names the file in errors.
pub fn index_tar(bytes: &[u8], what: &str) -> Result<ShardIndex> {
    let mut samples: Vec<SampleEntry> = Vec::new();
    let mut pos = 0usize;
    let mut long_name: Option<String> = None;
    while pos + 512 <= bytes.len() {
        let header = &bytes[pos..pos + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let size = parse_number(&header[124..136])
            .ok_or_else(|| PluginError::msg(format!("{what}: bad tar header at byte {pos}")))?;
        let data_start = pos + 512;
        let data_end = data_start
            .checked_add(size as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                PluginError::msg(format!(
                    "{what}: the tar member at byte {pos} ends past the end of the file (truncated?)"
                ))
            })?;
        let data = &bytes[data_start..data_end];
        let kind = header[156];
        let mut name = field_str(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = field_str(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match kind {
            b'x' => long_name = pax_path(data).or(long_name),
            b'L' => long_name = Some(field_str(data)),
            b'0' | 0 => {
                let name = long_name.take().unwrap_or(name);
                if let Some((key, ext)) = split_key(&name) {
                    let member = MemberEntry {
                        ext: ext.to_string(),
                        offset: data_start as u64,
                        size,
                    };
                    match samples.last_mut() {
                        Some(last) if last.key == key => last.members.push(member),
                        _ => samples.push(SampleEntry {
                            key: key.to_string(),
                            members: vec![member],
                            meta: None,
                        }),
                    }
                }
            }
            _ => long_name = None,
        }
        pos = data_start + (size as usize).div_ceil(512) * 512;
    }
    if pos < bytes.len() && pos + 512 > bytes.len() {
        bail!("{what}: ends inside a tar header at byte {pos} (truncated?)");
    }
    Ok(ShardIndex { samples })
}

/// WebDataset's split of a member name into key and extension: the extension starts at the
/// first `.` of the last path component.
fn split_key(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let dot = name[base_start..].find('.')? + base_start;
    if dot == base_start {
        return None;
    }
    Some((&name[..dot], &name[dot + 1..]))
}

/// The metadata of a sample read from its `.cls` and `.json` members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleMeta {
    /// From `.cls`, else the JSON's `label`.
    pub label: Option<i64>,
    /// The JSON's `id`, else the key.
    pub id: String,
    /// The JSON's `group`.
    pub group: Option<String>,
    /// The JSON's `findings`: the values of a multi-label dataset's findings, in the order
    /// of [`PackIndex::findings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<i8>>,
}

/// Reads a sample's label, id and group from its members (`shard` holds its bytes).
pub fn read_meta(shard: &[u8], entry: &SampleEntry, what: &str) -> Result<SampleMeta> {
    let slice = |m: &MemberEntry| member_bytes(shard, m, what);
    let mut meta = SampleMeta {
        id: entry.key.clone(),
        ..SampleMeta::default()
    };
    if let Some(m) = entry.member("json") {
        let value: serde_json::Value = serde_json::from_slice(slice(m)?).map_err(|e| {
            PluginError::msg(format!("{what}: {}.json is not valid JSON: {e}", entry.key))
        })?;
        if let Some(id) = value.get("id") {
            meta.id = match id {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
        meta.label = value.get("label").and_then(|l| l.as_i64());
        meta.group = value.get("group").and_then(|g| match g {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        });
        meta.findings = match value.get("findings") {
            None | Some(serde_json::Value::Null) => None,
            Some(findings) => Some(finding_values(findings).ok_or_else(|| {
                PluginError::msg(format!(
                    "{what}: {}.json has findings {findings}: expected a list of 1, 0 or -1",
                    entry.key
                ))
            })?),
        };
    }
    if let Some(m) = entry.member("cls") {
        let text = std::str::from_utf8(slice(m)?).unwrap_or("").trim();
        meta.label = Some(text.parse().map_err(|_| {
            PluginError::msg(format!(
                "{what}: {}.cls holds `{text}`, not a whole number",
                entry.key
            ))
        })?);
    }
    Ok(meta)
}

/// A JSON list of finding values (each 1, 0 or -1).
fn finding_values(value: &serde_json::Value) -> Option<Vec<i8>> {
    value
        .as_array()?
        .iter()
        .map(|v| match v.as_i64()? {
            x @ -1..=1 => Some(x as i8),
            _ => None,
        })
        .collect()
}

/// The image member's extensions this reader decodes, in order of preference.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["npy", "png", "jpg", "jpeg"];

/// Decodes a sample's image.
pub fn read_image(shard: &[u8], entry: &SampleEntry, what: &str) -> Result<Image> {
    let Some(member) = IMAGE_EXTENSIONS.iter().find_map(|e| entry.member(e)) else {
        bail!(
            "{what}: sample `{}` has no image member (.npy, .png, .jpg)",
            entry.key
        );
    };
    let bytes = member_bytes(shard, member, what)?;
    let decoded = match member.ext.as_str() {
        "npy" => decode_npy(bytes),
        "png" => decode_png(bytes),
        _ => crate::image_file::decode_bytes_both(bytes, ImageLimits::default()).map(|(_, n)| n),
    };
    decoded.map_err(|e| e.context(format!("{what}: {}.{}", entry.key, member.ext)))
}

fn member_bytes<'a>(shard: &'a [u8], m: &MemberEntry, what: &str) -> Result<&'a [u8]> {
    let start = m.offset as usize;
    shard
        .get(start..start + m.size as usize)
        .ok_or_else(|| PluginError::msg(format!("{what}: a member lies past the end of the shard")))
}

/// The image's shape as numpy writes it: `(H, W)` for one channel, `(H, W, C)` otherwise.
fn npy_shape(image: &Image) -> String {
    match image.channels() {
        1 => format!("({}, {})", image.height(), image.width()),
        c => format!("({}, {}, {c})", image.height(), image.width()),
    }
}

/// A numpy `.npy` (version 1.0) file of the image's pixels: `|u1` or `<u2`, row-major.
pub fn encode_npy(image: &Image) -> Result<Vec<u8>> {
    let (descr, data): (&str, Vec<u8>) = match image.pixels() {
        Pixels::U8(v) => ("|u1", v.to_vec()),
        Pixels::U16(v) => ("<u2", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Pixels::F32(_) => bail!("packed shards hold 8- or 16-bit images, not floating point"),
    };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        npy_shape(image)
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Reads a `.npy` file of `uint8` or `uint16` (`H×W` or `H×W×C`, C order).
pub fn decode_npy(bytes: &[u8]) -> Result<Image> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file (no \\x93NUMPY magic)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!(".npy version {v} is not supported"),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| PluginError::msg(".npy header is truncated or not text"))?;
    let field = |name: &str| -> Option<&str> {
        let at = header.find(&format!("'{name}'"))? + name.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|d| d.strip_prefix('\''))
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| PluginError::msg(".npy header has no descr"))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        bail!(".npy in Fortran order is not supported");
    }
    let shape: Vec<u32> = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| PluginError::msg(".npy header has no shape"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| PluginError::msg(".npy shape is not a list of whole numbers"))?;
    let (h, w, c) = match shape[..] {
        [h, w] => (h, w, 1),
        [h, w, c] => (h, w, c),
        _ => bail!(".npy shape {shape:?}: expected (H, W) or (H, W, C)"),
    };
    let data = &bytes[start + header_len..];
    let n = h as usize * w as usize * c as usize;
    match descr {
        "|u1" | "<u1" | "u1" => {
            if data.len() != n {
                bail!(".npy holds {} bytes for {n} uint8 values", data.len());
            }
            Image::from_u8(w, h, c, data.to_vec())
        }
        "<u2" => {
            if data.len() != 2 * n {
                bail!(".npy holds {} bytes for {n} uint16 values", data.len());
            }
            let v = data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            Image::from_u16(w, h, c, v)
        }
        other => bail!(".npy dtype `{other}`: expected uint8 (|u1) or uint16 (<u2)"),
    }
}

/// A lossless PNG of the image: 8 or 16 bit (big-endian, as PNG stores it), 1 to 4 channels.
pub fn encode_png(image: &Image) -> Result<Vec<u8>> {
    let color = match image.channels() {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => bail!("cannot store a {c}-channel image as PNG (use --encoding=npy)"),
    };
    let (depth, data): (png::BitDepth, Vec<u8>) = match image.pixels() {
        Pixels::U8(v) => (png::BitDepth::Eight, v.to_vec()),
        Pixels::U16(v) => (
            png::BitDepth::Sixteen,
            v.iter().flat_map(|x| x.to_be_bytes()).collect(),
        ),
        Pixels::F32(_) => bail!("packed shards hold 8- or 16-bit images, not floating point"),
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
    encoder.set_color(color);
    encoder.set_depth(depth);
    let err = |e: png::EncodingError| PluginError::msg(format!("encoding PNG: {e}"));
    encoder
        .write_header()
        .map_err(err)?
        .write_image_data(&data)
        .map_err(err)?;
    Ok(out)
}

/// Decodes a PNG keeping its channels and bit depth (palettes and low bit depths expand to
/// 8 bit).
pub fn decode_png(bytes: &[u8]) -> Result<Image> {
    let err = |e: png::DecodingError| PluginError::msg(format!("decoding PNG: {e}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(err)?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(err)?;
    buf.truncate(frame.buffer_size());
    let channels = frame.color_type.samples() as u32;
    match frame.bit_depth {
        png::BitDepth::Sixteen => Image::from_u16(
            frame.width,
            frame.height,
            channels,
            buf.chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect(),
        ),
        _ => Image::from_u8(frame.width, frame.height, channels, buf),
    }
}

/// Checks that the shard indexes agree with `index.json`: as many shards, the sample counts.
pub fn check_counts(index: &PackIndex, shards: &BTreeMap<usize, usize>, what: &str) -> Result<()> {
    let mut next = 0u64;
    for (n, shard) in index.shards.iter().enumerate() {
        if shard.first_sample != next {
            bail!(
                "{what}: shard {} starts at sample {}, expected {next}",
                shard.file,
                shard.first_sample
            );
        }
        if let Some(&found) = shards.get(&n) {
            if found as u64 != shard.samples {
                bail!(
                    "{what}: {} lists {} samples, its member index {found}",
                    shard.file,
                    shard.samples
                );
            }
        }
        next += shard.samples;
    }
    if next != index.samples {
        bail!(
            "{what}: the shards hold {next} samples, index.json says {}",
            index.samples
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, image: Image) -> PackSample {
        PackSample {
            key: format!("{i:09}"),
            image,
            label: Some(i as i64 % 3),
            id: format!("img/{i}.png"),
            group: Some(format!("patient{}", i / 2)),
            findings: Some(vec![(i % 3) as i8 - 1, 1]),
        }
    }

    #[test]
    fn npy_and_png_round_trip_8_and_16_bit_grey_and_rgb() {
        let images = [
            Image::from_u8(3, 2, 1, (0..6).collect()).unwrap(),
            Image::from_u8(2, 2, 3, (0..12).map(|x| x * 20).collect()).unwrap(),
            Image::from_u16(3, 1, 1, vec![0, 300, 65535]).unwrap(),
            Image::from_u16(1, 2, 3, vec![1, 2, 3, 40000, 5, 65535]).unwrap(),
        ];
        for image in images {
            for bytes in [encode_npy(&image).unwrap(), encode_png(&image).unwrap()] {
                let back = if bytes[0] == 0x93 {
                    decode_npy(&bytes).unwrap()
                } else {
                    decode_png(&bytes).unwrap()
                };
                assert_eq!(
                    (back.width(), back.height(), back.channels()),
                    (image.width(), image.height(), image.channels())
                );
                assert_eq!(
                    format!("{:?}", back.pixels()),
                    format!("{:?}", image.pixels())
                );
            }
        }
        let npy = encode_npy(&Image::from_u8(3, 2, 1, vec![0; 6]).unwrap()).unwrap();
        assert_eq!((npy.len() - 6) % 64, 0, "header padded to 64 bytes");
        let text = String::from_utf8_lossy(&npy[10..npy.len() - 6]).into_owned();
        assert!(text.contains("'shape': (2, 3)"), "{text}");
        assert!(decode_npy(b"\x93NUMPY\x01\x00\x05\x00{'de").is_err());
    }

    #[test]
    fn shards_are_deterministic_and_their_index_matches_a_tar_parse() {
        let build = || {
            let mut shard = ShardBuilder::new();
            for i in 0..4 {
                let image = Image::from_u8(5, 4, 1, vec![i as u8; 20]).unwrap();
                shard.add(&sample(i, image), Encoding::Npy).unwrap();
            }
            shard.finish()
        };
        let (a, index) = build();
        let (b, _) = build();
        assert_eq!(a, b);
        assert_eq!(a.len() % 512, 0);
        // The tar parse finds the same members; the written index also holds each sample's
        // metadata, equal to what the members say.
        let parsed = index_tar(&a, "shard").unwrap();
        assert_eq!(parsed.samples.len(), 4);
        for (written, parsed) in index.samples.iter().zip(&parsed.samples) {
            assert_eq!(
                (&written.key, &written.members),
                (&parsed.key, &parsed.members)
            );
            assert_eq!(parsed.meta, None);
            let from_members = read_meta(&a, parsed, "shard").unwrap();
            assert_eq!(written.meta.as_ref(), Some(&from_members));
        }
        let meta = read_meta(&a, &index.samples[3], "shard").unwrap();
        assert_eq!(
            meta,
            SampleMeta {
                label: Some(0),
                id: "img/3.png".into(),
                group: Some("patient1".into()),
                findings: Some(vec![-1, 1]),
            }
        );
        let image = read_image(&a, &index.samples[2], "shard").unwrap();
        assert_eq!(
            format!("{:?}", image.pixels()),
            format!("{:?}", Pixels::U8(&[2; 20]))
        );
    }

    #[test]
    fn the_tar_crate_reads_our_shards() {
        let mut shard = ShardBuilder::new();
        let image = Image::from_u8(2, 2, 3, vec![7; 12]).unwrap();
        shard.add(&sample(12, image), Encoding::Png).unwrap();
        let (bytes, _) = shard.finish();
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.header().mtime().unwrap(), 0);
                e.path().unwrap().display().to_string()
            })
            .collect();
        assert_eq!(names, ["000000012.cls", "000000012.json", "000000012.png"]);
    }

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("a/b.c/x.seg.png"), Some(("a/b.c/x", "seg.png")));
        assert_eq!(split_key("000001.cls"), Some(("000001", "cls")));
        assert_eq!(split_key("noext"), None);
    }

    #[test]
    fn a_truncated_tar_is_an_error_naming_it() {
        let mut shard = ShardBuilder::new();
        let image = Image::from_u8(40, 40, 1, vec![1; 1600]).unwrap();
        shard.add(&sample(0, image), Encoding::Npy).unwrap();
        let (bytes, _) = shard.finish();
        let err = index_tar(&bytes[..1200], "shard-000000.tar").unwrap_err();
        assert!(err.to_string().contains("shard-000000.tar"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    /// Findings in a `.json` member: read back as written; absent in older shards; anything
    /// but a list of 1, 0, -1 is an error naming the shard and sample.
    #[test]
    fn findings_are_read_from_the_json_member() {
        let meta_of = |json: &str| {
            let mut tar = Vec::new();
            append_member(&mut tar, "000000007.json", json.as_bytes()).unwrap();
            tar.extend_from_slice(&[0u8; 1024]);
            let index = index_tar(&tar, "shard-000003.tar").unwrap();
            read_meta(&tar, &index.samples[0], "shard-000003.tar")
        };
        let meta = meta_of(r#"{"id":"a","label":null,"findings":[1,0,-1]}"#).unwrap();
        assert_eq!(
            (meta.id.as_str(), meta.findings),
            ("a", Some(vec![1, 0, -1]))
        );
        let old = meta_of(r#"{"id":"a","label":2}"#).unwrap();
        assert_eq!((old.label, old.findings), (Some(2), None));
        for bad in ["[1,2]", "[0.5]", "\"1,0\"", "[true]"] {
            let e = meta_of(&format!(r#"{{"id":"a","findings":{bad}}}"#))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("shard-000003.tar: 000000007.json has findings")
                    && e.contains("expected a list of 1, 0 or -1"),
                "{bad}: {e}"
            );
        }
    }
}
