//! The host's side of the boundary (feature `host`): loading `.so` plugins and built-ins into
//! one shape, and calling their datasets and transforms. The host crate sees no abi_stable
//! type. Plugins do not compile this module.

use crate::build_info::BuildInfo;
use crate::error::{PluginError, Result};
use crate::ffi::*;
use crate::image::{Image, Sample};
use crate::info::DatasetInfo;
use crate::params::Params;
use crate::plugin::TransformStep;
use abi_stable::std_types::{RStr, Tuple2};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a plugin came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Linked into `ssl-host`.
    BuiltIn,
    /// Loaded with `--plugin PATH`.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::BuiltIn => f.write_str("built-in"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a plugin file could not be loaded. Each variant's message names the file.
#[derive(Debug)]
pub enum LoadError {
    /// No file at the path.
    Missing(PathBuf),
    /// The file is not an ELF shared library.
    NotSharedLibrary { path: PathBuf, detail: String },
    /// The dynamic linker refused it.
    DlopenFailed { path: PathBuf, detail: String },
    /// A shared library without the ssl-host entry symbols.
    NotAPlugin { path: PathBuf },
    /// Built against an incompatible plugin-api, tch, libtorch or CPU/CUDA variant.
    Incompatible {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// Its root module's layout differs from the host's.
    LayoutMismatch { path: PathBuf, detail: String },
    /// Its build-info record could not be read.
    BadBuildInfo { path: PathBuf, detail: String },
    /// Its contents function failed or panicked (the error is the cause).
    ContentsFailed { source: Source, error: PluginError },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Missing(p) => write!(f, "plugin file {} does not exist", p.display()),
            LoadError::NotSharedLibrary { path, detail } => {
                write!(f, "plugin file {} is not a shared library ({detail}); --plugin expects a .so built as a cdylib", path.display())
            }
            LoadError::DlopenFailed { path, detail } => {
                write!(f, "plugin file {} could not be loaded by the dynamic linker:\n  {detail}", path.display())
            }
            LoadError::NotAPlugin { path } => write!(
                f,
                "{} is a shared library but not an ssl-host plugin: it exports no `ssl_host_plugin_build_info`/`ssl_host_plugin_entry` \
                 (a plugin crate ends with `ssl_plugin_api::export_plugin!(...)`)",
                path.display()
            ),
            LoadError::Incompatible { path, problems, .. } => {
                write!(f, "plugin {} was built for another ssl-host:", path.display())?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                write!(f, "\n  rebuild it against this ssl-host's plugin-api (`ssl-host list` shows the host's versions)")
            }
            LoadError::LayoutMismatch { path, detail } => write!(
                f,
                "plugin {} declares a compatible version, but the layout of its plugin-api types differs from the host's; rebuild it:\n{}",
                path.display(),
                detail.lines().take(12).collect::<Vec<_>>().join("\n")
            ),
            LoadError::BadBuildInfo { path, detail } => {
                write!(f, "plugin {} has an unreadable build-info record: {detail}", path.display())
            }
            LoadError::ContentsFailed { source, .. } => write!(f, "plugin {source} failed to list its contents"),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::ContentsFailed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A dataset factory from any plugin.
#[derive(Clone)]
pub struct DatasetFactory {
    ffi: DatasetFactoryFfi,
}

impl DatasetFactory {
    /// Registered name.
    pub fn name(&self) -> &str {
        self.ffi.name.as_str()
    }
    /// Description.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// What its plugin declares about it (read without making the dataset).
    pub fn info(&self) -> DatasetInfo {
        DatasetInfo::from_ffi(&self.ffi.info)
    }
    /// What the dataset made from `params` would declare: the plugin's answer when it reads
    /// its declaration from the data (`Plugin::dataset_info_from`), else [`info`](Self::info).
    pub fn info_for(&self, params: &Params) -> Result<DatasetInfo> {
        let Some(describe) = self.ffi.describe.as_ref().into_option() else {
            return Ok(self.info());
        };
        let json = params.to_json_string();
        let info = (describe.call)(describe.ctx, RStr::from_str(&json))
            .into_result()
            .map_err(|e| {
                PluginError::from(e)
                    .context(format!("reading what dataset `{}` declares", self.name()))
            })?;
        Ok(DatasetInfo::from_ffi(&info))
    }
    /// Makes the dataset.
    pub fn create(&self, params: &Params) -> Result<DatasetHandle> {
        let json = params.to_json_string();
        let inner = (self.ffi.create)(self.ffi.ctx, RStr::from_str(&json))
            .into_result()
            .map_err(|e| {
                PluginError::from(e).context(format!("creating dataset `{}`", self.name()))
            })?;
        let len = inner.len().into_result()? as usize;
        let classes = inner.num_classes().into_result()? as usize;
        Ok(DatasetHandle {
            inner,
            len,
            num_classes: (classes > 0).then_some(classes),
        })
    }
}

/// A dataset made by a plugin; safe to share between worker threads.
pub struct DatasetHandle {
    inner: DatasetBox,
    len: usize,
    num_classes: Option<usize>,
}

impl DatasetHandle {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it has no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Number of classes, `None` when unlabelled.
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    /// The sample at `index`.
    pub fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(PluginError::msg(format!(
                "sample index {index} out of range (dataset has {})",
                self.len
            )));
        }
        Ok(self.inner.get(index as u64).into_result()?)
    }
    /// All labels.
    pub fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(self
            .inner
            .targets()
            .into_result()?
            .into_iter()
            .map(|t| (t >= 0).then_some(t))
            .collect())
    }
    /// The findings of every sample of a multi-label dataset; `None` for single-label and
    /// unlabelled datasets (and for plugins built before multi-label datasets existed).
    pub fn findings(&self) -> Result<Option<crate::Findings>> {
        let Some(Tuple2(names, values)) = self.inner.findings().into_result()?.into_option() else {
            return Ok(None);
        };
        let findings = crate::Findings::new(
            names.into_iter().map(|s| s.into_string()).collect(),
            values.into_vec(),
        )?;
        if findings.len() != self.len {
            return Err(PluginError::msg(format!(
                "the dataset gave findings for {} samples but has {}",
                findings.len(),
                self.len
            )));
        }
        Ok(Some(findings))
    }
    /// The id of every sample: from the plugin when it knows them without decoding, else by
    /// reading every sample.
    pub fn ids(&self) -> Result<Vec<String>> {
        if let Some(ids) = self.inner.ids().into_result()?.into_option() {
            if ids.len() != self.len {
                return Err(PluginError::msg(format!(
                    "the dataset gave {} ids but has {} samples",
                    ids.len(),
                    self.len
                )));
            }
            return Ok(ids.into_iter().map(|s| s.into_string()).collect());
        }
        (0..self.len)
            .map(|i| Ok(self.get(i)?.id().to_string()))
            .collect()
    }
    /// The split groups (one name per sample), if the dataset has them.
    pub fn groups(&self) -> Result<Option<Vec<String>>> {
        Ok(self
            .inner
            .groups()
            .into_result()?
            .into_option()
            .map(|g| g.into_iter().map(|s| s.into_string()).collect()))
    }
}

/// A transform factory from any plugin.
#[derive(Clone)]
pub struct TransformFactory {
    ffi: TransformFactoryFfi,
}

impl TransformFactory {
    /// Registered name.
    pub fn name(&self) -> &str {
        self.ffi.name.as_str()
    }
    /// Description.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// Makes the transform.
    pub fn create(&self, params: &Params) -> Result<TransformHandle> {
        let json = params.to_json_string();
        let inner = (self.ffi.create)(self.ffi.ctx, RStr::from_str(&json))
            .into_result()
            .map_err(|e| {
                PluginError::from(e).context(format!("creating transform `{}`", self.name()))
            })?;
        Ok(TransformHandle { inner })
    }
}

/// A transform made by a plugin; safe to share between worker threads.
pub struct TransformHandle {
    inner: TransformBox,
}

impl TransformHandle {
    /// Applies it.
    pub fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        Ok(self.inner.apply(image, seed).into_result()?)
    }
}

/// A plugin's pipeline compiler (see `Plugin::pipeline_compiler`).
#[derive(Clone)]
pub struct PipelineCompiler {
    ffi: PipelineCompilerFfi,
}

impl PipelineCompiler {
    /// What it fuses, in the plugin's words.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// One transform doing all of `steps`, or `None` when the plugin does not know every step.
    pub fn compile(&self, steps: &[TransformStep]) -> Result<Option<TransformHandle>> {
        let out = (self.ffi.compile)(self.ffi.ctx, crate::plugin::steps_to_ffi(steps))
            .into_result()
            .map_err(PluginError::from)?;
        Ok(out.into_option().map(|inner| TransformHandle { inner }))
    }
}

/// A model config shipped by a plugin.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// `--model` name.
    pub name: String,
    /// Description.
    pub description: String,
    /// TOML text.
    pub toml: String,
}

/// A loaded plugin: what it offers and where it came from.
pub struct LoadedPlugin {
    /// Where it came from.
    pub source: Source,
    /// What it was built against.
    pub build_info: BuildInfo,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Dataset factories.
    pub datasets: Vec<DatasetFactory>,
    /// Transform factories.
    pub transforms: Vec<TransformFactory>,
    /// Pipeline compilers (zero or more).
    pub pipeline_compilers: Vec<PipelineCompiler>,
    /// Batch transform factories.
    #[cfg(feature = "torch")]
    pub batch_transforms: Vec<crate::torch::BatchTransformFactory>,
    /// Batch pipeline compilers.
    #[cfg(feature = "torch")]
    pub batch_pipeline_compilers: Vec<crate::torch::BatchPipelineCompiler>,
    /// Names of its batch transforms (also without the `torch` feature).
    pub batch_transform_names: Vec<(String, String)>,
    /// Encoder factories.
    #[cfg(feature = "torch")]
    pub encoders: Vec<crate::torch::EncoderFactory>,
    /// Algorithm factories.
    #[cfg(feature = "torch")]
    pub algorithms: Vec<crate::torch::AlgorithmFactory>,
    /// Names of its encoders (also without the `torch` feature).
    pub encoder_names: Vec<(String, String)>,
    /// Names of its algorithms (also without the `torch` feature).
    pub algorithm_names: Vec<(String, String)>,
    /// Model configs.
    pub model_configs: Vec<ModelConfig>,
}

fn from_header(
    header: &PluginHeader,
    source: Source,
    build_info: BuildInfo,
) -> std::result::Result<LoadedPlugin, LoadError> {
    let path_for = |source: &Source| match source {
        Source::File(p) => p.clone(),
        Source::BuiltIn => PathBuf::from("<built-in>"),
    };
    if let Err(errors) = abi_stable::abi_stability::abi_checking::check_layout_compatibility(
        expected_layout(),
        header.layout,
    ) {
        return Err(LoadError::LayoutMismatch {
            path: path_for(&source),
            detail: errors.to_string(),
        });
    }
    let module = (header.module)();
    let contents = (module.contents())()
        .into_result()
        .map_err(|e| LoadError::ContentsFailed {
            source: source.clone(),
            error: e.into(),
        })?;
    let names = |list: Vec<(String, String)>| list;
    Ok(LoadedPlugin {
        source,
        build_info,
        name: contents.name.into_string(),
        version: contents.version.into_string(),
        encoder_names: names(
            contents
                .encoders
                .iter()
                .map(|f| (f.name.to_string(), f.description.to_string()))
                .collect(),
        ),
        algorithm_names: names(
            contents
                .algorithms
                .iter()
                .map(|f| (f.name.to_string(), f.description.to_string()))
                .collect(),
        ),
        batch_transform_names: contents
            .batch_transforms
            .iter()
            .map(|f| (f.name.to_string(), f.description.to_string()))
            .collect(),
        pipeline_compilers: contents
            .pipeline_compilers
            .into_iter()
            .map(|ffi| PipelineCompiler { ffi })
            .collect(),
        #[cfg(feature = "torch")]
        batch_transforms: contents
            .batch_transforms
            .into_iter()
            .map(|ffi| crate::torch::BatchTransformFactory { ffi })
            .collect(),
        #[cfg(feature = "torch")]
        batch_pipeline_compilers: contents
            .batch_pipeline_compilers
            .into_iter()
            .map(|ffi| crate::torch::BatchPipelineCompiler { ffi })
            .collect(),
        datasets: contents
            .datasets
            .into_iter()
            .map(|ffi| DatasetFactory { ffi })
            .collect(),
        transforms: contents
            .transforms
            .into_iter()
            .map(|ffi| TransformFactory { ffi })
            .collect(),
        #[cfg(feature = "torch")]
        encoders: contents
            .encoders
            .into_iter()
            .map(|ffi| crate::torch::EncoderFactory { ffi })
            .collect(),
        #[cfg(feature = "torch")]
        algorithms: contents
            .algorithms
            .into_iter()
            .map(|ffi| crate::torch::AlgorithmFactory { ffi })
            .collect(),
        model_configs: contents
            .model_configs
            .into_iter()
            .map(|m| ModelConfig {
                name: m.name.into_string(),
                description: m.description.into_string(),
                toml: m.toml.into_string(),
            })
            .collect(),
    })
}

/// Every built-in plugin linked into this binary.
pub fn builtin_plugins() -> std::result::Result<Vec<LoadedPlugin>, LoadError> {
    let mut plugins = Vec::new();
    for builtin in inventory::iter::<crate::plugin::__private::BuiltinPlugin> {
        plugins.push(from_header(
            (builtin.entry)(),
            Source::BuiltIn,
            BuildInfo::current(),
        )?);
    }
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(plugins)
}

/// Checks that `path` is a complete 64-bit little-endian ELF shared object before `dlopen`
/// sees it: the dynamic linker maps a truncated file and then crashes on the missing part.
fn check_elf(path: &Path) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    let mut header = [0u8; 64];
    if file.read_exact(&mut header).is_err() || &header[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    if u16_at(&header, 16) != 3 {
        return Err("an ELF file, but not a shared object (ET_DYN)".into());
    }
    let truncated = |what: &str| {
        format!("truncated ELF file: its {what} lies beyond the end of the file ({len} bytes)")
    };
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    );
    let (shoff, shentsize, shnum) = (
        u64_at(&header, 40),
        u16_at(&header, 58),
        u16_at(&header, 60),
    );
    if phentsize < 56 || phoff.saturating_add(phentsize * phnum) > len {
        return Err(truncated("program header table"));
    }
    if shnum > 0 && shoff.saturating_add(shentsize * shnum) > len {
        return Err(truncated("section header table"));
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|_| truncated("program header table"))?;
    for entry in table.chunks_exact(phentsize as usize) {
        let (offset, size) = (u64_at(entry, 8), u64_at(entry, 32));
        if size > 0 && offset.saturating_add(size) > len {
            return Err(truncated("segment data"));
        }
    }
    Ok(())
}

/// Loads a plugin `.so`: checks the file, its build-info record against this host, the layout
/// of its ABI types, then lists its contents. The library stays loaded for the life of the
/// process.
pub fn load_plugin_file(path: &Path) -> std::result::Result<LoadedPlugin, LoadError> {
    let path = path.to_path_buf();
    if !path.exists() {
        return Err(LoadError::Missing(path));
    }
    if let Err(detail) = check_elf(&path) {
        return Err(LoadError::NotSharedLibrary { path, detail });
    }
    // dlopen needs a path with a slash to avoid searching the library path.
    let open_path = if path.is_absolute() {
        path.clone()
    } else {
        Path::new(".").join(&path)
    };
    // SAFETY: loading a library runs its initialisers; plugins are trusted code, as any
    // native plugin system assumes. The library is never unloaded (tensors and factories
    // handed out point into it).
    let library =
        unsafe { libloading::Library::new(&open_path) }.map_err(|e| LoadError::DlopenFailed {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    let library: &'static libloading::Library = Box::leak(Box::new(library));

    // SAFETY: the symbol, when present, is `extern "C" fn() -> *const c_char` in every version
    // of the plugin API; it is the first thing a host may call.
    let info_fn = unsafe {
        library
            .get::<extern "C" fn() -> *const std::os::raw::c_char>(b"ssl_host_plugin_build_info\0")
    };
    // SAFETY: as above, `extern "C" fn() -> &'static PluginHeader`, whose layout never changes.
    let entry_fn = unsafe {
        library.get::<extern "C" fn() -> *const PluginHeader>(b"ssl_host_plugin_entry\0")
    };
    let (info_fn, entry_fn) = match (info_fn, entry_fn) {
        (Ok(i), Ok(e)) => (*i, *e),
        _ => return Err(LoadError::NotAPlugin { path }),
    };
    let raw = info_fn();
    if raw.is_null() {
        return Err(LoadError::BadBuildInfo {
            path,
            detail: "null record".into(),
        });
    }
    // SAFETY: the plugin returns a NUL-terminated string that lives as long as the library.
    let text = unsafe { std::ffi::CStr::from_ptr(raw) }
        .to_string_lossy()
        .into_owned();
    let plugin_info: BuildInfo =
        serde_json::from_str(&text).map_err(|e| LoadError::BadBuildInfo {
            path: path.clone(),
            detail: format!("{e} in {text}"),
        })?;
    let host_info = BuildInfo::current();
    let problems = host_info.incompatibilities(&plugin_info);
    if !problems.is_empty() {
        return Err(LoadError::Incompatible { path, problems });
    }
    // SAFETY: versions match, so the header has the layout this host knows.
    let header: &'static PluginHeader = unsafe { &*entry_fn() };
    from_header(header, Source::File(path), plugin_info)
}
