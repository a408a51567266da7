//! `CIFAR10` and `CIFAR100` (fine labels): 32×32 RGB images, 50000 train / 10000 test.
//!
//! Parameters: `root` (folder, required), `split` (`train` | `test`), `download` (default
//! true), `base_url` (default `https://www.cs.toronto.edu/~kriz/`), `md5` (override of the
//! archive's expected MD5, for mirrors and tests). Unknown parameters are an error.
//!
//! Looked for in `root`, in this order (also accepted: `root` being one of these folders):
//! 1. the official binary version, `cifar-10-batches-bin/` (`data_batch_{1..5}.bin`,
//!    `test_batch.bin`; records of a label byte and 3072 bytes: R, G and B planes, each 32×32
//!    row-major) or `cifar-100-binary/` (`train.bin`, `test.bin`; records of a coarse and a
//!    fine label byte and 3072 bytes);
//! 2. torchvision's python version, `cifar-10-batches-py/` (`data_batch_{1..5}`,
//!    `test_batch`) or `cifar-100-python/` (`train`, `test`): Python pickles of dicts with
//!    `data` (numpy `uint8`, N×3072, same planes) and `labels` / `fine_labels`, read by the
//!    small pickle reader below.
//!
//! When neither is there and `download` is true, the binary archive is downloaded into `root`
//! and extracted (see `download.rs`). Files may hold any number of records (their size must be
//! a multiple of the record size). The split is loaded into memory at open.

use crate::download;
use crate::split::Split;
use ssl_plugin_api::{
    bail, Dataset, DatasetInfo, Image, Params, Plugin, PluginError, Result, Sample,
};
use std::path::{Path, PathBuf};

/// The default `base_url`: the CIFAR home page's folder.
const DEFAULT_BASE_URL: &str = "https://www.cs.toronto.edu/~kriz/";
/// Bytes of one image (3 planes of 32×32).
const IMAGE_BYTES: usize = 3072;
/// The parameters the datasets accept.
const PARAMS: [&str; 5] = ["root", "split", "download", "base_url", "md5"];

/// Adds `CIFAR10` and `CIFAR100` to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            "CIFAR10",
            "CIFAR-10, 32×32 RGB, 10 classes, 50000 train / 10000 test, from `root` (official \
             binary or torchvision python layout; downloaded when absent); params: root, split \
             (train|test), download (true), base_url (https://www.cs.toronto.edu/~kriz/), md5",
            |p: &Params| Cifar::open(Kind::Cifar10, p),
        )
        .dataset_info(small_images())
        .dataset(
            "CIFAR100",
            "CIFAR-100 with its 100 fine labels, 32×32 RGB, 50000 train / 10000 test, from `root` \
             (official binary or torchvision python layout; downloaded when absent); params: \
             root, split (train|test), download (true), base_url, md5",
            |p: &Params| Cifar::open(Kind::Cifar100, p),
        )
        .dataset_info(small_images())
}

/// 32×32 images: encoders use their small-image (CIFAR) stem, as the original's
/// `use_7x7_first_conv_in_resnet = not dataset.startswith("CIFAR")`.
fn small_images() -> DatasetInfo {
    DatasetInfo {
        small_images: true,
        ..DatasetInfo::default()
    }
}

/// Which of the two datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cifar10,
    Cifar100,
}

/// Where a split's files were found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// The official binary records, in this folder.
    Binary(PathBuf),
    /// torchvision's pickles, in this folder.
    Python(PathBuf),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cifar10 => "CIFAR10",
            Kind::Cifar100 => "CIFAR100",
        }
    }

    fn num_classes(self) -> usize {
        match self {
            Kind::Cifar10 => 10,
            Kind::Cifar100 => 100,
        }
    }

    fn binary_folder(self) -> &'static str {
        match self {
            Kind::Cifar10 => "cifar-10-batches-bin",
            Kind::Cifar100 => "cifar-100-binary",
        }
    }

    fn python_folder(self) -> &'static str {
        match self {
            Kind::Cifar10 => "cifar-10-batches-py",
            Kind::Cifar100 => "cifar-100-python",
        }
    }

    fn archive(self) -> &'static str {
        match self {
            Kind::Cifar10 => "cifar-10-binary.tar.gz",
            Kind::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    fn archive_md5(self) -> &'static str {
        match self {
            Kind::Cifar10 => "c32a1d4ab5d03f1284b67883e8d87530",
            Kind::Cifar100 => "03b5dce01913d631647c71ecec9e9cb8",
        }
    }

    /// The binary files of a split.
    fn binary_files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Kind::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (Kind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (Kind::Cifar100, Split::Train) => vec!["train.bin".into()],
            (Kind::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }

    /// The pickle files of a split.
    fn python_files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Kind::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}")).collect(),
            (Kind::Cifar10, Split::Test) => vec!["test_batch".into()],
            (Kind::Cifar100, Split::Train) => vec!["train".into()],
            (Kind::Cifar100, Split::Test) => vec!["test".into()],
        }
    }

    /// Label bytes before the image in a binary record; the last one is the label used.
    fn label_bytes(self) -> usize {
        match self {
            Kind::Cifar10 => 1,
            Kind::Cifar100 => 2,
        }
    }

    /// The key of the labels in a pickled batch.
    fn python_label_key(self) -> &'static str {
        match self {
            Kind::Cifar10 => "labels",
            Kind::Cifar100 => "fine_labels",
        }
    }

    /// Where the data is under `root`: the binary folder, the python folder, or `root` itself
    /// when it is one of them (by name, or holding the split's files).
    fn locate(self, root: &Path, split: Split) -> Option<Layout> {
        let binary = root.join(self.binary_folder());
        if binary.is_dir() {
            return Some(Layout::Binary(binary));
        }
        let python = root.join(self.python_folder());
        if python.is_dir() {
            return Some(Layout::Python(python));
        }
        let name = root.file_name().and_then(|n| n.to_str());
        let holds = |files: Vec<String>| files.iter().all(|f| root.join(f).is_file());
        if name == Some(self.binary_folder()) || holds(self.binary_files(split)) {
            return Some(Layout::Binary(root.to_path_buf()));
        }
        if name == Some(self.python_folder()) || holds(self.python_files(split)) {
            return Some(Layout::Python(root.to_path_buf()));
        }
        None
    }
}

/// A CIFAR split held in memory.
struct Cifar {
    kind: Kind,
    split: Split,
    /// Images as in the files: R, G and B planes of 32×32, `IMAGE_BYTES` each.
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Cifar {
    fn open(kind: Kind, params: &Params) -> Result<Self> {
        Self::open_inner(kind, params).map_err(|e| e.context(kind.name()))
    }

    fn open_inner(kind: Kind, params: &Params) -> Result<Self> {
        if let Some(table) = params.as_json().as_object() {
            let unknown: Vec<&str> = table
                .keys()
                .map(String::as_str)
                .filter(|k| !PARAMS.contains(k))
                .collect();
            if !unknown.is_empty() {
                bail!(
                    "unknown parameter{} `{}` (accepted: {})",
                    if unknown.len() > 1 { "s" } else { "" },
                    unknown.join("`, `"),
                    PARAMS.join(", ")
                );
            }
        }
        let root: PathBuf = params.require("root")?;
        let split = Split::parse(&params.get_or("split", "train".to_string())?)?;
        let download: bool = params.get_or("download", true)?;
        let base_url: String = params.get_or("base_url", DEFAULT_BASE_URL.to_string())?;
        let md5 = match params.get::<String>("md5")? {
            Some(text) => download::parse_md5(&text, "parameter `md5`")?,
            None => kind.archive_md5().to_string(),
        };
        let layout = match kind.locate(&root, split) {
            Some(layout) => layout,
            None if download => {
                fetch_and_extract(kind, &root, &base_url, &md5)?;
                kind.locate(&root, split).ok_or_else(|| {
                    PluginError::msg(format!(
                        "{} was extracted but holds no {}",
                        root.join(kind.binary_folder()).display(),
                        kind.binary_files(split).join(", ")
                    ))
                })?
            }
            None => bail!(
                "no dataset in {}: looked for {} (the official binary version) and {} \
                 (torchvision's python version); set `download = true` to fetch {}{}, or \
                 extract an archive from https://www.cs.toronto.edu/~kriz/cifar.html there",
                root.display(),
                root.join(kind.binary_folder()).display(),
                root.join(kind.python_folder()).display(),
                with_slash(&base_url),
                kind.archive()
            ),
        };
        let (pixels, labels) = match &layout {
            Layout::Binary(dir) => read_binary(kind, dir, split)?,
            Layout::Python(dir) => read_python(kind, dir, split)?,
        };
        if labels.is_empty() {
            bail!("{layout:?}: the {} split holds no images", split.as_str());
        }
        Ok(Cifar {
            kind,
            split,
            pixels,
            labels,
        })
    }
}

impl std::fmt::Debug for Cifar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.kind.name())
            .field("split", &self.split)
            .field("len", &self.labels.len())
            .finish()
    }
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.kind.num_classes())
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some(&label) = self.labels.get(index) else {
            bail!(
                "{}: index {index} out of range ({} images)",
                self.kind.name(),
                self.labels.len()
            );
        };
        let planes = &self.pixels[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES];
        let (r, rest) = planes.split_at(1024);
        let (g, b) = rest.split_at(1024);
        let hwc = (0..1024).flat_map(|p| [r[p], g[p], b[p]]).collect();
        let image = Image::from_u8(32, 32, 3, hwc)?;
        Ok(Sample::new(
            image,
            Some(label as i64),
            format!("{}/{index}", self.split.as_str()),
        ))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(self.labels.iter().map(|&l| Some(l as i64)).collect())
    }
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// Downloads (unless a verified copy is there) and extracts the binary archive into `root`.
fn fetch_and_extract(kind: Kind, root: &Path, base_url: &str, md5: &str) -> Result<()> {
    std::fs::create_dir_all(root)
        .map_err(|e| PluginError::from(e).context(format!("cannot create {}", root.display())))?;
    let archive = root.join(kind.archive());
    let url = format!("{}{}", with_slash(base_url), kind.archive());
    let reuse = archive.is_file() && {
        let actual = download::md5_file(&archive)?;
        if actual != md5 {
            eprintln!(
                "{}: MD5 {actual}, expected {md5}; downloading it again",
                archive.display()
            );
            std::fs::remove_file(&archive).map_err(|e| {
                PluginError::from(e).context(format!("cannot remove {}", archive.display()))
            })?;
        }
        actual == md5
    };
    if !reuse {
        download::fetch(&url, &archive, md5)?;
    }
    eprintln!("extracting {}", archive.display());
    download::extract_tar_gz(&archive, root, kind.binary_folder())?;
    Ok(())
}

/// Reads the binary records of a split: pixels (planes) and labels.
fn read_binary(kind: Kind, dir: &Path, split: Split) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in kind.binary_files(split) {
        let path = dir.join(&name);
        require_file(dir, &path)?;
        let bytes =
            std::fs::read(&path).map_err(|e| PluginError::from(e).context(path.display()))?;
        parse_binary(kind, &bytes, &path, &mut pixels, &mut labels)?;
    }
    Ok((pixels, labels))
}

/// Appends the records of one binary file's `bytes` (read from `path`, named in errors).
fn parse_binary(
    kind: Kind,
    bytes: &[u8],
    path: &Path,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let skip = kind.label_bytes();
    let record = skip + IMAGE_BYTES;
    if !bytes.len().is_multiple_of(record) {
        bail!(
            "{}: {} bytes is not a whole number of {record}-byte records ({skip} label \
             byte{} + {IMAGE_BYTES} pixel bytes)",
            path.display(),
            bytes.len(),
            if skip > 1 { "s" } else { "" }
        );
    }
    pixels.reserve(bytes.len() / record * IMAGE_BYTES);
    for (i, chunk) in bytes.chunks_exact(record).enumerate() {
        let label = chunk[skip - 1];
        check_label(kind, label as i64, path, i)?;
        labels.push(label);
        pixels.extend_from_slice(&chunk[skip..]);
    }
    Ok(())
}

/// The fuzz targets' entry points: one binary file or one pickled batch, from bytes.
pub(crate) mod from_bytes {
    use super::*;

    /// The pixels and labels of a CIFAR-10 (`cifar100` false) or CIFAR-100 binary file.
    pub(crate) fn binary(bytes: &[u8], cifar100: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        let kind = if cifar100 {
            Kind::Cifar100
        } else {
            Kind::Cifar10
        };
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        parse_binary(kind, bytes, Path::new("<bytes>"), &mut pixels, &mut labels)?;
        Ok((pixels, labels))
    }

    /// The pixels and labels of a CIFAR-10 or CIFAR-100 pickled batch.
    pub(crate) fn pickled(bytes: &[u8], cifar100: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        let kind = if cifar100 {
            Kind::Cifar100
        } else {
            Kind::Cifar10
        };
        parse_python_batch(kind, bytes)
    }
}

/// An error when a file of the layout found in `dir` is missing.
fn require_file(dir: &Path, path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{} is missing: {} is incomplete (remove it to download the dataset again)",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

fn check_label(kind: Kind, label: i64, path: &Path, record: usize) -> Result<()> {
    if !(0..kind.num_classes() as i64).contains(&label) {
        bail!(
            "{} record {record}: label {label} is not a class of {} (0..{})",
            path.display(),
            kind.name(),
            kind.num_classes()
        );
    }
    Ok(())
}

/// Reads the pickled batches of a split: pixels (planes) and labels.
fn read_python(kind: Kind, dir: &Path, split: Split) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in kind.python_files(split) {
        let path = dir.join(&name);
        require_file(dir, &path)?;
        let (batch_pixels, batch_labels) =
            read_python_batch(kind, &path).map_err(|e| e.context(path.display()))?;
        pixels.extend_from_slice(&batch_pixels);
        labels.extend(batch_labels);
    }
    Ok((pixels, labels))
}

fn read_python_batch(kind: Kind, path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(path)?;
    parse_python_batch(kind, &bytes)
}

fn parse_python_batch(kind: Kind, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    use pickle::Value;
    let root = pickle::load(bytes)?;
    let key = kind.python_label_key();
    let (Some(data), Some(label_list)) = (root.dict_get("data"), root.dict_get(key)) else {
        bail!("expected a pickled dict with keys `data` and `{key}`");
    };
    let Value::Array(array) = data else {
        bail!("`data` is not a numpy array");
    };
    // Taken out, so that its bytes (no longer shared once unpickled) move without a copy.
    let array = std::mem::take(&mut *array.borrow_mut());
    if !matches!(array.dtype.as_str(), "u1" | "|u1" | "uint8" | "B") {
        bail!("`data` has dtype {:?}, expected uint8", array.dtype);
    }
    if array.shape.len() != 2 || array.shape[1] != IMAGE_BYTES {
        bail!(
            "`data` has shape {:?}, expected (N, {IMAGE_BYTES})",
            array.shape
        );
    }
    let count = array.shape[0];
    if array.fortran_order && count > 1 {
        bail!("`data` is stored in Fortran order, expected C order");
    }
    if array.data.len() != count * IMAGE_BYTES {
        bail!(
            "`data` holds {} bytes, expected {count} × {IMAGE_BYTES}",
            array.data.len()
        );
    }
    let Value::List(label_list) = label_list else {
        bail!("`{key}` is not a list");
    };
    let label_list = label_list.borrow();
    if label_list.len() != count {
        bail!(
            "`{key}` has {} entries but `data` {count} rows",
            label_list.len()
        );
    }
    let mut labels = Vec::with_capacity(count);
    for (i, value) in label_list.iter().enumerate() {
        let Value::Int(label) = value else {
            bail!("`{key}`[{i}] is not an integer");
        };
        if !(0..kind.num_classes() as i64).contains(label) {
            bail!(
                "`{key}`[{i}] = {label} is not a class of {} (0..{})",
                kind.name(),
                kind.num_classes()
            );
        }
        labels.push(*label as u8);
    }
    Ok((std::rc::Rc::unwrap_or_clone(array.data), labels))
}

/// A reader of the Python pickles CIFAR's python version uses: protocol 2 (written by Python
/// 2 or 3), dicts, lists, strings, ints and numpy arrays (`numpy.core.multiarray._reconstruct`
/// or numpy 2's `numpy._core.multiarray._reconstruct`, rebuilt from raw bytes). Anything
/// else is a clear error; no code is ever run.
mod pickle {
    use ssl_plugin_api::{bail, PluginError, Result};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// A numpy array, once BUILD has given it its state.
    #[derive(Clone, Debug, Default)]
    pub(super) struct Array {
        pub(super) shape: Vec<usize>,
        pub(super) dtype: String,
        pub(super) fortran_order: bool,
        pub(super) data: Rc<Vec<u8>>,
    }

    /// A Python object. Containers are shared (as in Python) so memo entries see mutations.
    #[derive(Clone, Debug)]
    pub(super) enum Value {
        None,
        Bool(bool),
        Int(i64),
        /// A text string (`str` in Python 3, `unicode` in Python 2).
        Str(Rc<str>),
        /// A byte string (`bytes` in Python 3, `str` in Python 2).
        Bytes(Rc<Vec<u8>>),
        Tuple(Rc<Vec<Value>>),
        List(Rc<RefCell<Vec<Value>>>),
        Dict(Rc<RefCell<Vec<(Value, Value)>>>),
        /// A class or function, `module.name`.
        Global(Rc<str>, Rc<str>),
        /// A `numpy.dtype`, by its type string (e.g. `u1`).
        Dtype(Rc<str>),
        Array(Rc<RefCell<Array>>),
    }

    impl Value {
        /// The value at the text or byte string key `key` of a dict.
        pub(super) fn dict_get(&self, key: &str) -> Option<Value> {
            let Value::Dict(items) = self else {
                return None;
            };
            let items = items.borrow();
            items.iter().find_map(|(k, v)| {
                let matches = match k {
                    Value::Str(s) => &**s == key,
                    Value::Bytes(b) => b.as_slice() == key.as_bytes(),
                    _ => false,
                };
                matches.then(|| v.clone())
            })
        }

        fn kind(&self) -> &'static str {
            match self {
                Value::None => "None",
                Value::Bool(_) => "bool",
                Value::Int(_) => "int",
                Value::Str(_) => "str",
                Value::Bytes(_) => "bytes",
                Value::Tuple(_) => "tuple",
                Value::List(_) => "list",
                Value::Dict(_) => "dict",
                Value::Global(..) => "global",
                Value::Dtype(_) => "numpy.dtype",
                Value::Array(_) => "numpy.ndarray",
            }
        }
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
        stack: Vec<Value>,
        marks: Vec<usize>,
        /// The memo, by index. A map, not a vector: the indices of BINPUT/LONG_BINPUT come
        /// from the file, and a corrupt one (e.g. ~4e9) must not size an allocation.
        memo: HashMap<usize, Value>,
    }

    /// Unpickles `bytes`.
    pub(super) fn load(bytes: &[u8]) -> Result<Value> {
        let mut reader = Reader {
            bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        };
        reader
            .run()
            .map_err(|e| e.context(format!("unreadable pickle (at byte {})", reader.pos)))
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8]> {
            if self.bytes.len() - self.pos < n {
                bail!("the file ends inside a pickle opcode");
            }
            let slice = &self.bytes[self.pos..self.pos + n];
            self.pos += n;
            Ok(slice)
        }

        fn u8(&mut self) -> Result<u8> {
            Ok(self.take(1)?[0])
        }

        fn u32(&mut self) -> Result<u32> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn line(&mut self) -> Result<String> {
            let rest = &self.bytes[self.pos..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                bail!("the file ends inside a pickle opcode");
            };
            let text = String::from_utf8(rest[..end].to_vec())
                .map_err(|_| PluginError::msg("a GLOBAL name is not UTF-8"))?;
            self.pos += end + 1;
            Ok(text)
        }

        fn pop(&mut self) -> Result<Value> {
            if self.marks.last() == Some(&self.stack.len()) {
                bail!("pickle stack underflow");
            }
            self.stack
                .pop()
                .ok_or_else(|| PluginError::msg("pickle stack underflow"))
        }

        fn top(&mut self) -> Result<&mut Value> {
            self.stack
                .last_mut()
                .ok_or_else(|| PluginError::msg("pickle stack underflow"))
        }

        /// The values above the last MARK, which is removed.
        fn pop_mark(&mut self) -> Result<Vec<Value>> {
            let mark = self
                .marks
                .pop()
                .ok_or_else(|| PluginError::msg("pickle MARK missing"))?;
            Ok(self.stack.split_off(mark))
        }

        fn put(&mut self, index: usize) -> Result<()> {
            let value = self.top()?.clone();
            self.memo.insert(index, value);
            Ok(())
        }

        fn get(&mut self, index: usize) -> Result<()> {
            let value =
                self.memo.get(&index).cloned().ok_or_else(|| {
                    PluginError::msg(format!("pickle memo entry {index} missing"))
                })?;
            self.stack.push(value);
            Ok(())
        }

        fn push_str(&mut self, n: usize) -> Result<()> {
            let text = std::str::from_utf8(self.take(n)?)
                .map_err(|_| PluginError::msg("a pickled unicode string is not UTF-8"))?;
            let value = Value::Str(text.into());
            self.stack.push(value);
            Ok(())
        }

        fn push_bytes(&mut self, n: usize) -> Result<()> {
            let value = Value::Bytes(Rc::new(self.take(n)?.to_vec()));
            self.stack.push(value);
            Ok(())
        }

        fn run(&mut self) -> Result<Value> {
            loop {
                let op = self.u8()?;
                match op {
                    0x80 => {
                        let protocol = self.u8()?;
                        if protocol > 4 {
                            bail!("pickle protocol {protocol} is not supported (0 to 4 are)");
                        }
                    }
                    0x95 => {
                        self.take(8)?; // FRAME: a length hint
                    }
                    b'.' => {
                        let value = self.pop()?;
                        self.memo.clear();
                        return Ok(value);
                    }
                    b'(' => self.marks.push(self.stack.len()),
                    b'}' => self.stack.push(Value::Dict(Default::default())),
                    b']' => self.stack.push(Value::List(Default::default())),
                    b')' => self.stack.push(Value::Tuple(Default::default())),
                    b'N' => self.stack.push(Value::None),
                    0x88 => self.stack.push(Value::Bool(true)),
                    0x89 => self.stack.push(Value::Bool(false)),
                    b'K' => {
                        let v = self.u8()?;
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'M' => {
                        let b = self.take(2)?;
                        let v = u16::from_le_bytes([b[0], b[1]]);
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'J' => {
                        let v = self.u32()? as i32;
                        self.stack.push(Value::Int(v as i64));
                    }
                    0x8a => {
                        let n = self.u8()? as usize;
                        if n > 8 {
                            bail!("an integer of {n} bytes is too large");
                        }
                        let b = self.take(n)?;
                        let mut v: i64 = 0;
                        for (i, &byte) in b.iter().enumerate() {
                            v |= (byte as i64) << (8 * i);
                        }
                        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                            v -= 1i64 << (8 * n); // negative, two's complement
                        }
                        self.stack.push(Value::Int(v));
                    }
                    b'X' => {
                        let n = self.u32()? as usize;
                        self.push_str(n)?;
                    }
                    0x8c => {
                        let n = self.u8()? as usize;
                        self.push_str(n)?;
                    }
                    b'T' => {
                        let n = self.u32()? as i32;
                        if n < 0 {
                            bail!("negative string length");
                        }
                        self.push_bytes(n as usize)?;
                    }
                    b'U' | b'C' => {
                        let n = self.u8()? as usize;
                        self.push_bytes(n)?;
                    }
                    b'B' => {
                        let n = self.u32()? as usize;
                        self.push_bytes(n)?;
                    }
                    b'q' => {
                        let i = self.u8()? as usize;
                        self.put(i)?;
                    }
                    b'r' => {
                        let i = self.u32()? as usize;
                        self.put(i)?;
                    }
                    0x94 => {
                        // MEMOIZE: the next index is the memo's size, as Python's unpickler.
                        let i = self.memo.len();
                        self.put(i)?;
                    }
                    b'h' => {
                        let i = self.u8()? as usize;
                        self.get(i)?;
                    }
                    b'j' => {
                        let i = self.u32()? as usize;
                        self.get(i)?;
                    }
                    b'c' => {
                        let module = self.line()?;
                        let name = self.line()?;
                        self.stack.push(Value::Global(module.into(), name.into()));
                    }
                    0x93 => {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        let (Value::Str(module), Value::Str(name)) = (module, name) else {
                            bail!("STACK_GLOBAL needs two strings");
                        };
                        self.stack.push(Value::Global(module, name));
                    }
                    b't' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::Tuple(Rc::new(items)));
                    }
                    0x85..=0x87 => {
                        let n = (op - 0x84) as usize;
                        let mut items = Vec::with_capacity(n);
                        for _ in 0..n {
                            items.push(self.pop()?);
                        }
                        items.reverse();
                        self.stack.push(Value::Tuple(Rc::new(items)));
                    }
                    b'l' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                    }
                    b'd' => {
                        let items = self.pop_mark()?;
                        let pairs = pairs(items)?;
                        self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                    }
                    b'a' => {
                        let item = self.pop()?;
                        self.append(vec![item])?;
                    }
                    b'e' => {
                        let items = self.pop_mark()?;
                        self.append(items)?;
                    }
                    b's' => {
                        let value = self.pop()?;
                        let key = self.pop()?;
                        self.set_items(vec![(key, value)])?;
                    }
                    b'u' => {
                        let items = self.pop_mark()?;
                        let pairs = pairs(items)?;
                        self.set_items(pairs)?;
                    }
                    b'R' => {
                        let args = self.pop()?;
                        let callable = self.pop()?;
                        let value = reduce(callable, args)?;
                        self.stack.push(value);
                    }
                    b'b' => {
                        let state = self.pop()?;
                        let object = self.top()?.clone();
                        build(&object, state)?;
                    }
                    other => bail!(
                        "pickle opcode 0x{other:02x} ({:?}) is not supported: this reader \
                         handles the CIFAR python files only",
                        other as char
                    ),
                }
            }
        }

        fn append(&mut self, items: Vec<Value>) -> Result<()> {
            match self.top()? {
                Value::List(list) => {
                    list.borrow_mut().extend(items);
                    Ok(())
                }
                other => bail!("APPEND to a {}, expected a list", other.kind()),
            }
        }

        fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<()> {
            match self.top()? {
                Value::Dict(dict) => {
                    dict.borrow_mut().extend(pairs);
                    Ok(())
                }
                other => bail!("SETITEM on a {}, expected a dict", other.kind()),
            }
        }
    }

    fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if items.len() % 2 == 1 {
            bail!("a dict needs an even number of items");
        }
        let mut iter = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn tuple(value: &Value, n: usize, what: &str) -> Result<Rc<Vec<Value>>> {
        match value {
            Value::Tuple(items) if items.len() == n => Ok(items.clone()),
            other => bail!("{what}: expected a tuple of {n}, found a {}", other.kind()),
        }
    }

    /// Calls one of the few callables these files use.
    fn reduce(callable: Value, args: Value) -> Result<Value> {
        let Value::Global(module, name) = &callable else {
            bail!("REDUCE on a {}, expected a global", callable.kind());
        };
        match (&**module, &**name) {
            ("_codecs", "encode") => {
                let args = tuple(&args, 2, "_codecs.encode")?;
                let (Value::Str(text), Value::Str(encoding)) = (&args[0], &args[1]) else {
                    bail!("_codecs.encode: expected (str, str)");
                };
                if !matches!(
                    encoding.to_ascii_lowercase().as_str(),
                    "latin1" | "latin-1" | "iso-8859-1"
                ) {
                    bail!("_codecs.encode: encoding {encoding:?} is not supported (latin1 is)");
                }
                let bytes = text
                    .chars()
                    .map(|c| u8::try_from(c as u32))
                    .collect::<std::result::Result<Vec<u8>, _>>()
                    .map_err(|_| PluginError::msg("_codecs.encode: a character is not latin-1"))?;
                Ok(Value::Bytes(Rc::new(bytes)))
            }
            ("__builtin__" | "builtins", "bytes") => match &args {
                Value::Tuple(items) if items.is_empty() => Ok(Value::Bytes(Default::default())),
                _ => bail!("bytes(...) with arguments is not supported"),
            },
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                let args = tuple(&args, 3, "numpy _reconstruct")?;
                match &args[0] {
                    Value::Global(m, n) if &**m == "numpy" && &**n == "ndarray" => {}
                    _ => bail!("numpy _reconstruct of something else than numpy.ndarray"),
                }
                Ok(Value::Array(Default::default()))
            }
            ("numpy", "dtype") => {
                let args = tuple(&args, 3, "numpy.dtype")?;
                match &args[0] {
                    Value::Str(s) => Ok(Value::Dtype(s.clone())),
                    Value::Bytes(b) => Ok(Value::Dtype(String::from_utf8_lossy(b).into())),
                    other => bail!("numpy.dtype of a {}, expected a string", other.kind()),
                }
            }
            (module, name) => bail!(
                "the pickle calls {module}.{name}, which this reader does not support (it reads \
                 dicts, lists, strings, integers and numpy arrays only)"
            ),
        }
    }

    /// Sets an object's state (BUILD): numpy arrays and dtypes.
    fn build(object: &Value, state: Value) -> Result<()> {
        match object {
            // The dtype's state (byte order, ...) does not matter for one-byte types.
            Value::Dtype(_) => Ok(()),
            Value::Array(array) => {
                let Value::Tuple(items) = &state else {
                    bail!("numpy array state is a {}, expected a tuple", state.kind());
                };
                // (version, shape, dtype, is_fortran, raw data) or without the version.
                let items = match items.len() {
                    5 => &items[1..],
                    4 => &items[..],
                    n => bail!("numpy array state has {n} items, expected 4 or 5"),
                };
                let Value::Tuple(shape) = &items[0] else {
                    bail!(
                        "numpy array shape is a {}, expected a tuple",
                        items[0].kind()
                    );
                };
                let shape = shape
                    .iter()
                    .map(|d| match d {
                        Value::Int(n) if *n >= 0 => Ok(*n as usize),
                        _ => bail!("numpy array shape holds a {}", d.kind()),
                    })
                    .collect::<Result<Vec<usize>>>()?;
                let Value::Dtype(dtype) = &items[1] else {
                    bail!("numpy array dtype is a {}", items[1].kind());
                };
                let fortran_order = match &items[2] {
                    Value::Bool(b) => *b,
                    Value::Int(i) => *i != 0,
                    other => bail!("numpy array order flag is a {}", other.kind()),
                };
                let data = match &items[3] {
                    Value::Bytes(b) => b.clone(),
                    // A Python 2 `str` read as text: one byte per character.
                    Value::Str(s) if s.chars().all(|c| (c as u32) < 256) => {
                        Rc::new(s.chars().map(|c| c as u8).collect())
                    }
                    other => bail!(
                        "numpy array data is a {}, expected raw bytes (object arrays are not \
                         supported)",
                        other.kind()
                    ),
                };
                *array.borrow_mut() = super::pickle::Array {
                    shape,
                    dtype: dtype.to_string(),
                    fortran_order,
                    data,
                };
                Ok(())
            }
            other => bail!(
                "BUILD on a {}, which this reader does not support",
                other.kind()
            ),
        }
    }
}

// The tests need the writers of `testdata`: run them with `--features testdata`.
#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cifar::{self as td, CifarSplit};
    use ssl_plugin_api::Pixels;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty folder for one test.
    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ssl-cifar-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// JSON text of a string.
    fn quoted(text: &str) -> String {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }

    /// Opens with `root`, `split` and `extra` (JSON object members, e.g. `"download": false`).
    fn open(kind: Kind, root: &Path, split: &str, extra: &str) -> Result<Cifar> {
        let sep = if extra.is_empty() { "" } else { ", " };
        let text = format!(
            "{{\"root\": {}, \"split\": {}{sep}{extra}}}",
            quoted(root.to_str().unwrap()),
            quoted(split)
        );
        Cifar::open(kind, &Params::from_json(&text).unwrap())
    }

    /// `"base_url": ..., "md5": ...` for `open`.
    fn source(url: &str, md5: &str) -> String {
        format!("\"base_url\": {}, \"md5\": {}", quoted(url), quoted(md5))
    }

    fn pixels(sample: &Sample) -> Vec<u8> {
        match sample.image().pixels() {
            Pixels::U8(v) => v.to_vec(),
            other => panic!("expected 8-bit pixels, got {other:?}"),
        }
    }

    /// Every sample of `dataset` is the expected image and label.
    fn assert_matches(dataset: &Cifar, expected: &CifarSplit, split: &str) {
        assert_eq!(dataset.len(), expected.labels.len());
        let targets: Vec<Option<i64>> = expected.labels.iter().map(|&l| Some(l)).collect();
        assert_eq!(dataset.targets().unwrap(), targets);
        for (i, (image, &label)) in expected.images.iter().zip(&expected.labels).enumerate() {
            let sample = dataset.get(i).unwrap();
            let img = sample.image();
            assert_eq!((img.width(), img.height(), img.channels()), (32, 32, 3));
            assert_eq!(&pixels(&sample), image, "{split} image {i}");
            assert_eq!(sample.label(), Some(label));
            assert_eq!(sample.id(), format!("{split}/{i}"));
        }
        let err = dataset.get(expected.labels.len()).unwrap_err();
        assert!(err.message().contains("out of range"), "{err}");
    }

    #[test]
    fn reads_cifar10_binary() {
        let root = temp_dir("bin10");
        let expected = td::write_cifar10_binary(&root, 5).unwrap();
        let train = open(Kind::Cifar10, &root, "train", "").unwrap();
        assert_eq!(train.len(), 25);
        assert_eq!(train.num_classes(), Some(10));
        assert_matches(&train, &expected.train, "train");
        let test = open(Kind::Cifar10, &root, "test", r#""download": false"#);
        assert_matches(&test.unwrap(), &expected.test, "test");
        // `root` may also be the extracted folder itself.
        let folder = root.join("cifar-10-batches-bin");
        let test = open(Kind::Cifar10, &folder, "test", "").unwrap();
        assert_matches(&test, &expected.test, "test");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_cifar100_binary_fine_labels() {
        let root = temp_dir("bin100");
        let expected = td::write_cifar100_binary(&root, 7, 3).unwrap();
        // Fine labels span more than the 20 coarse classes.
        assert!(expected.train.labels.iter().any(|&l| l >= 20));
        let train = open(Kind::Cifar100, &root, "train", "").unwrap();
        assert_eq!(train.num_classes(), Some(100));
        assert_matches(&train, &expected.train, "train");
        let test = open(Kind::Cifar100, &root, "test", "").unwrap();
        assert_matches(&test, &expected.test, "test");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_torchvision_python_layouts() {
        let root = temp_dir("py");
        let expected10 = td::write_cifar10_python(&root, 4).unwrap_or_else(|e| panic!("{e}"));
        // Enough records for more than 256 memo entries (LONG_BINPUT) in the train pickle.
        let expected100 =
            td::write_cifar100_python(&root, 130, 2).unwrap_or_else(|e| panic!("{e}"));
        assert!(root.join("cifar-10-batches-py/data_batch_5").is_file());
        assert!(!root.join("cifar-10-batches-bin").exists());
        for (split, expected) in [("train", &expected10.train), ("test", &expected10.test)] {
            let dataset = open(Kind::Cifar10, &root, split, "").unwrap();
            assert_matches(&dataset, expected, split);
        }
        for (split, expected) in [("train", &expected100.train), ("test", &expected100.test)] {
            let dataset = open(Kind::Cifar100, &root, split, "").unwrap();
            assert_matches(&dataset, expected, split);
        }
        // The python layout holds the same data as the binary one.
        let binary = temp_dir("py-bin");
        assert_eq!(expected10, td::write_cifar10_binary(&binary, 4).unwrap());
        let _ = std::fs::remove_dir_all(&binary);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn binary_layout_wins_over_python() {
        let root = temp_dir("order");
        let expected = td::write_cifar10_binary(&root, 2).unwrap();
        std::fs::create_dir_all(root.join("cifar-10-batches-py")).unwrap(); // empty: unused
        let dataset = open(Kind::Cifar10, &root, "train", "").unwrap();
        assert_matches(&dataset, &expected.train, "train");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn pixel_order_is_planes_to_interleaved() {
        let root = temp_dir("pixels");
        let folder = root.join("cifar-10-batches-bin");
        std::fs::create_dir_all(&folder).unwrap();
        // Two records; the second has label 7, R(x=5, y=2) = 200, G(x=31, y=0) = 100,
        // B(x=0, y=31) = 50 and zeros elsewhere.
        let mut bytes = vec![0u8; 2 * 3073];
        let record = &mut bytes[3073..];
        record[0] = 7;
        record[1 + 2 * 32 + 5] = 200;
        record[1 + 1024 + 31] = 100;
        record[1 + 2048 + 31 * 32] = 50;
        std::fs::write(folder.join("test_batch.bin"), &bytes).unwrap();
        let dataset = open(Kind::Cifar10, &root, "test", "").unwrap();
        assert_eq!(dataset.len(), 2);
        let sample = dataset.get(1).unwrap();
        assert_eq!(sample.label(), Some(7));
        let hwc = pixels(&sample);
        let at = |x: usize, y: usize, c: usize| hwc[(y * 32 + x) * 3 + c];
        assert_eq!(at(5, 2, 0), 200);
        assert_eq!(at(31, 0, 1), 100);
        assert_eq!(at(0, 31, 2), 50);
        assert_eq!(hwc.iter().map(|&v| v as u32).sum::<u32>(), 350);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let root = temp_dir("bad");
        let folder = root.join("cifar-10-batches-bin");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("test_batch.bin"), vec![0u8; 3073 * 2 + 5]).unwrap();
        let err = open(Kind::Cifar10, &root, "test", "").unwrap_err();
        let msg = err.message();
        assert!(
            msg.contains("test_batch.bin") && msg.contains("6151 bytes"),
            "{msg}"
        );
        assert!(msg.contains("3073-byte records"), "{msg}");

        let mut bytes = vec![0u8; 3073 * 3];
        bytes[2 * 3073] = 10;
        std::fs::write(folder.join("test_batch.bin"), bytes).unwrap();
        let err = open(Kind::Cifar10, &root, "test", "").unwrap_err();
        assert!(err.message().contains("record 2: label 10"), "{err}");

        // The folder is there but a training batch is missing: no download, an error.
        let err = open(Kind::Cifar10, &root, "train", "").unwrap_err();
        assert!(
            err.message().contains("data_batch_1.bin is missing"),
            "{err}"
        );
        assert!(err.message().contains("incomplete"), "{err}");

        // A python file that is not a pickle of the expected dict.
        let py = root.join("cifar-100-python");
        std::fs::create_dir_all(&py).unwrap();
        std::fs::write(py.join("test"), b"\x80\x02}q\x00.").unwrap();
        let err = open(Kind::Cifar100, &root, "test", "").unwrap_err();
        assert!(err.message().contains("cifar-100-python/test"), "{err}");
        assert!(err.message().contains("`fine_labels`"), "{err}");
        std::fs::write(py.join("test"), b"\x80\x02}q\x00(U\x04data").unwrap();
        let err = open(Kind::Cifar100, &root, "test", "").unwrap_err();
        assert!(err.message().contains("ends inside"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn parameters_are_checked() {
        let root = temp_dir("params");
        let err = open(Kind::Cifar10, &root, "train", r#""bogus": 1"#).unwrap_err();
        assert!(err.message().contains("unknown parameter `bogus`"), "{err}");
        assert!(err.message().starts_with("CIFAR10"), "{err}");
        let err = open(Kind::Cifar10, &root, "valid", "").unwrap_err();
        assert!(err.message().contains("`split`"), "{err}");
        let err = open(Kind::Cifar10, &root, "test", r#""md5": "xyz""#).unwrap_err();
        assert!(err.message().contains("parameter `md5`"), "{err}");
        let err = Cifar::open(Kind::Cifar100, &Params::default()).unwrap_err();
        assert!(err.message().contains("missing parameter `root`"), "{err}");

        let err = open(Kind::Cifar100, &root, "test", r#""download": false"#).unwrap_err();
        let msg = err.message();
        assert!(
            msg.contains("cifar-100-binary") && msg.contains("cifar-100-python"),
            "{msg}"
        );
        assert!(msg.contains("download = true"), "{msg}");
        assert!(
            msg.contains("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn downloads_extracts_and_reuses() {
        let root = temp_dir("download").join("data"); // created by the download
        let (archive, expected) = td::cifar10_binary_archive_bytes(3);
        let md5 = td::md5_hex(&archive);
        let (url, server) =
            td::serve_http(vec![("cifar-10-binary.tar.gz".into(), archive.clone())], 1).unwrap();
        let extra = source(&url, &md5);
        let train = open(Kind::Cifar10, &root, "train", &extra).unwrap();
        assert_matches(&train, &expected.train, "train");
        assert_eq!(server.join().unwrap(), vec!["/cifar-10-binary.tar.gz"]);
        assert_eq!(
            std::fs::read(root.join("cifar-10-binary.tar.gz")).unwrap(),
            archive
        );
        // Nothing temporary is left.
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
        );
        // The test split is there now: no request (the server is gone).
        let test = open(Kind::Cifar10, &root, "test", &extra).unwrap();
        assert_matches(&test, &expected.test, "test");
        // A verified archive without its folder is extracted again, not downloaded.
        std::fs::remove_dir_all(root.join("cifar-10-batches-bin")).unwrap();
        let test = open(Kind::Cifar10, &root, "test", &extra).unwrap();
        assert_matches(&test, &expected.test, "test");
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }

    #[test]
    fn downloads_cifar100() {
        let root = temp_dir("download100");
        let (archive, expected) = td::cifar100_binary_archive_bytes(4, 3);
        let md5 = td::md5_hex(&archive);
        let (url, server) =
            td::serve_http(vec![("cifar-100-binary.tar.gz".into(), archive)], 1).unwrap();
        // `base_url` without a final slash works too.
        let extra = source(url.trim_end_matches('/'), &md5);
        let test = open(Kind::Cifar100, &root, "test", &extra).unwrap();
        assert_matches(&test, &expected.test, "test");
        assert_eq!(server.join().unwrap(), vec!["/cifar-100-binary.tar.gz"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn md5_mismatch_leaves_nothing_then_a_good_download_works() {
        let root = temp_dir("mismatch");
        let (archive, expected) = td::cifar10_binary_archive_bytes(2);
        let md5 = td::md5_hex(&archive);
        let (url, server) =
            td::serve_http(vec![("cifar-10-binary.tar.gz".into(), archive)], 2).unwrap();
        let wrong = "00112233445566778899aabbccddeeff";
        let extra = source(&url, wrong);
        let err = open(Kind::Cifar10, &root, "test", &extra).unwrap_err();
        let msg = err.message();
        assert!(msg.contains("MD5 mismatch"), "{msg}");
        assert!(msg.contains(wrong) && msg.contains(&md5), "{msg}");
        assert!(
            msg.contains(&format!("{url}cifar-10-binary.tar.gz")),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing left");

        let extra = source(&url, &md5);
        let test = open(Kind::Cifar10, &root, "test", &extra).unwrap();
        assert_matches(&test, &expected.test, "test");
        assert_eq!(server.join().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_corrupt_archive_on_disk_is_downloaded_again() {
        let root = temp_dir("corrupt");
        std::fs::write(root.join("cifar-10-binary.tar.gz"), b"not an archive").unwrap();
        let (archive, expected) = td::cifar10_binary_archive_bytes(1);
        let md5 = td::md5_hex(&archive);
        let (url, server) =
            td::serve_http(vec![("cifar-10-binary.tar.gz".into(), archive)], 1).unwrap();
        let extra = source(&url, &md5);
        let train = open(Kind::Cifar10, &root, "train", &extra).unwrap();
        assert_matches(&train, &expected.train, "train");
        assert_eq!(server.join().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn truncated_download_is_an_error() {
        let root = temp_dir("truncated");
        let (archive, _) = td::cifar10_binary_archive_bytes(2);
        let md5 = td::md5_hex(&archive);
        let total = archive.len();
        let (url, server) = td::serve_truncated(archive, total / 3).unwrap();
        let extra = source(&url, &md5);
        let err = open(Kind::Cifar10, &root, "train", &extra).unwrap_err();
        let msg = err.message();
        assert!(msg.contains("truncated"), "{msg}");
        assert!(
            msg.contains("cifar-10-binary.tar.gz") && msg.contains(&total.to_string()),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing left");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A pickle as Python 2's cPickle writes CIFAR batches (protocol 2, byte-string keys,
    /// `numpy.core.multiarray`, the array's bytes as a BINSTRING).
    fn python2_pickle(data: &[u8], labels: &[u8]) -> Vec<u8> {
        let mut p =
            b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02".to_vec();
        p.extend_from_slice(b"cnumpy\nndarray\nq\x03K\x00\x85U\x01b\x87Rq\x04(K\x01");
        let rows = (data.len() / 3072) as u8;
        p.extend_from_slice(&[b'K', rows]);
        p.extend_from_slice(b"M\x00\x0c\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87R");
        p.extend_from_slice(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T");
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        p.extend_from_slice(data);
        p.extend_from_slice(b"tbU\x06labelsq\x06]q\x07(");
        for &l in labels {
            p.extend_from_slice(&[b'K', l]);
        }
        p.extend_from_slice(b"eU\x0bbatch_labelU\x05hellou.");
        p
    }

    #[test]
    fn reads_python2_pickles() {
        let root = temp_dir("py2");
        let folder = root.join("cifar-10-batches-py");
        std::fs::create_dir_all(&folder).unwrap();
        let data: Vec<u8> = (0..2 * 3072).map(|i| (i * 31 % 256) as u8).collect();
        std::fs::write(folder.join("test_batch"), python2_pickle(&data, &[3, 9])).unwrap();
        let dataset = open(Kind::Cifar10, &root, "test", "").unwrap();
        assert_eq!(dataset.targets().unwrap(), vec![Some(3), Some(9)]);
        let hwc = pixels(&dataset.get(1).unwrap());
        // x=4, y=1: plane offset 36 of record 1, R/G/B planes 1024 apart.
        let at = |c: usize| hwc[(32 + 4) * 3 + c];
        for c in 0..3 {
            assert_eq!(at(c), data[3072 + c * 1024 + 36]);
        }

        // A label out of range, then a pickle calling something else than numpy.
        std::fs::write(folder.join("test_batch"), python2_pickle(&data, &[3, 10])).unwrap();
        let err = open(Kind::Cifar10, &root, "test", "").unwrap_err();
        assert!(err.message().contains("`labels`[1] = 10"), "{err}");
        assert!(err.message().contains("test_batch"), "{err}");
        let evil = b"\x80\x02cos\nsystem\nU\x02lsq\x00\x85R.";
        std::fs::write(folder.join("test_batch"), evil).unwrap();
        let err = open(Kind::Cifar10, &root, "test", "").unwrap_err();
        assert!(err.message().contains("os.system"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A memo index read from the file (LONG_BINPUT `r`, ~4e9) sizes no allocation: the
    /// memo is a map, so such a pickle is read (or, when the entry is missing, is a clear
    /// error naming the file) instead of aborting the process on allocation.
    #[test]
    fn huge_memo_indices_do_not_allocate() {
        // (7, 7) through LONG_BINPUT / LONG_BINGET at index 0xF000_0000, and BINPUT 0xFF.
        let tuple = b"\x80\x02(K\x07r\x00\x00\x00\xf0j\x00\x00\x00\xf0tq\xff.";
        let pickle::Value::Tuple(items) = pickle::load(tuple).unwrap() else {
            panic!("a tuple expected")
        };
        assert!(matches!(
            items.as_slice(),
            [pickle::Value::Int(7), pickle::Value::Int(7)]
        ));
        let err = pickle::load(b"\x80\x02K\x07r\xff\xff\xff\xffj\xfe\xff\xff\xff.").unwrap_err();
        assert!(
            err.message().contains("memo entry 4294967294 missing"),
            "{err}"
        );

        // A CIFAR batch whose dict is memoised at 0xF000_0000 loads; one that fetches an
        // absent huge entry is an error naming the file.
        let root = temp_dir("memo");
        let folder = root.join("cifar-10-batches-py");
        std::fs::create_dir_all(&folder).unwrap();
        let data: Vec<u8> = (0..2 * 3072).map(|i| (i * 17 % 256) as u8).collect();
        let good = python2_pickle(&data, &[1, 2]);
        let (head, rest) = good.split_at(5);
        assert_eq!(head, b"\x80\x02}q\x00");
        let mut huge = b"\x80\x02}r\x00\x00\x00\xf0".to_vec();
        huge.extend_from_slice(rest);
        std::fs::write(folder.join("test_batch"), &huge).unwrap();
        let dataset = open(Kind::Cifar10, &root, "test", "").unwrap();
        assert_eq!(dataset.targets().unwrap(), vec![Some(1), Some(2)]);
        let mut missing = b"\x80\x02}r\x00\x00\x00\xf0j\x01\x00\x00\xf0".to_vec();
        missing.extend_from_slice(rest);
        std::fs::write(folder.join("test_batch"), &missing).unwrap();
        let err = open(Kind::Cifar10, &root, "test", "").unwrap_err();
        let msg = err.message();
        assert!(msg.contains("cifar-10-batches-py/test_batch"), "{msg}");
        assert!(msg.contains("memo entry 4026531841 missing"), "{msg}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
