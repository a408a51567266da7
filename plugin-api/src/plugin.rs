//! What a plugin author writes: ordinary Rust traits, a [`Plugin`] builder listing the
//! factories, and one export line.
//!
//! ```no_run
//! use ssl_plugin_api::{Dataset, DatasetInfo, Image, Params, Plugin, Result, Sample};
//!
//! struct Noise { len: usize }
//! impl Dataset for Noise {
//!     fn len(&self) -> usize { self.len }
//!     fn num_classes(&self) -> Option<usize> { None }
//!     fn get(&self, index: usize) -> Result<Sample> {
//!         Ok(Sample::new(Image::from_u8(1, 1, 1, vec![index as u8])?, None, index.to_string()))
//!     }
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("noise", env!("CARGO_PKG_VERSION"))
//!         .dataset("Noise", "one grey pixel per sample", |p: &Params| Ok(Noise { len: p.get_or("len", 10)? }))
//!         // What the host needs to know about "Noise" (optional; this is the default).
//!         .dataset_info(DatasetInfo::default())
//! }
//! ssl_plugin_api::export_plugin!(plugin);
//! ```

use crate::error::{FfiError, PluginError, Result};
use crate::ffi::*;
use crate::findings::Findings;
use crate::guard::guard;
use crate::image::{Image, Sample};
use crate::info::DatasetInfo;
use crate::params::Params;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec, Tuple2};

/// A dataset: a fixed number of samples, read by index from any thread.
pub trait Dataset: Send + Sync + 'static {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether the dataset is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes, `None` for unlabelled data.
    fn num_classes(&self) -> Option<usize>;

    /// The sample at `index` (`0..len()`), decoded.
    fn get(&self, index: usize) -> Result<Sample>;

    /// The label of every sample, in order (used for class weights). The default reads every
    /// sample; override it when labels are known without decoding images.
    fn targets(&self) -> Result<Vec<Option<i64>>> {
        (0..self.len()).map(|i| Ok(self.get(i)?.label())).collect()
    }

    /// Optional groups for the train/validation split: one name per sample (e.g. the patient),
    /// so that all samples of a group land on the same side, split by group as the original's
    /// `CovidDataset` does. `None` (the default) splits by sample.
    fn groups(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// The binary findings of every sample, for a multi-label dataset (a sample may carry
    /// several labels, as NIH's 14 chest X-ray findings). `None` (the default): single-label
    /// or unlabelled, described by [`num_classes`](Dataset::num_classes) and
    /// [`targets`](Dataset::targets) alone. A multi-label dataset returns `None` from
    /// `num_classes` and no label in its samples.
    fn findings(&self) -> Result<Option<Findings>> {
        Ok(None)
    }

    /// The id of every sample, in order, as [`Sample::id`] gives it, when known without
    /// decoding images (used to compare datasets, e.g. by `evaluate`'s leakage check). `None`
    /// (the default): the host reads the samples when it needs their ids.
    fn ids(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// A transform: image and seed in, image out. The same seed must give the same output.
pub trait Transform: Send + Sync + 'static {
    /// Applies the transform, drawing any randomness from `seed` alone.
    fn apply(&self, image: Image, seed: u64) -> Result<Image>;
}

/// One step of a pipeline, as a pipeline compiler receives it: a transform name and its
/// parameters. Step `i` of a view with seed `s` is given the seed
/// [`step_seed(s, i)`](crate::step_seed).
#[derive(Clone, Debug)]
pub struct TransformStep {
    /// The transform's registered name.
    pub name: String,
    /// Its parameters.
    pub params: Params,
}

pub(crate) fn steps_from_ffi(steps: RVec<StepFfi>) -> Result<Vec<TransformStep>> {
    steps
        .into_iter()
        .map(|t| {
            Ok(TransformStep {
                name: t.0.into_string(),
                params: Params::from_json(t.1.as_str())?,
            })
        })
        .collect()
}

#[cfg_attr(not(any(feature = "host", feature = "torch")), allow(dead_code))]
pub(crate) fn steps_to_ffi(steps: &[TransformStep]) -> RVec<StepFfi> {
    steps
        .iter()
        .map(|s| {
            Tuple2(
                RString::from(s.name.as_str()),
                s.params.to_json_string().into(),
            )
        })
        .collect()
}

struct DatasetAdapter<D>(D);

impl<D: Dataset> DatasetFfi for DatasetAdapter<D> {
    fn len(&self) -> RResult<u64, FfiError> {
        guard("Dataset::len", || Ok(self.0.len() as u64))
    }
    fn get(&self, index: u64) -> RResult<Sample, FfiError> {
        guard("Dataset::get", || self.0.get(index as usize))
    }
    fn num_classes(&self) -> RResult<u64, FfiError> {
        guard("Dataset::num_classes", || {
            Ok(self.0.num_classes().unwrap_or(0) as u64)
        })
    }
    fn targets(&self) -> RResult<RVec<i64>, FfiError> {
        guard("Dataset::targets", || {
            Ok(self
                .0
                .targets()?
                .into_iter()
                .map(|t| t.unwrap_or(-1))
                .collect())
        })
    }
    fn groups(&self) -> RResult<abi_stable::std_types::ROption<RVec<RString>>, FfiError> {
        guard("Dataset::groups", || {
            let groups = self.0.groups()?;
            if let Some(g) = &groups {
                if g.len() != self.0.len() {
                    return Err(crate::error::PluginError::msg(format!(
                        "Dataset::groups gave {} names for {} samples",
                        g.len(),
                        self.0.len()
                    )));
                }
            }
            Ok(groups
                .map(|g| g.into_iter().map(RString::from).collect::<RVec<RString>>())
                .into())
        })
    }
    fn findings(&self) -> RResult<ROption<FindingsFfi>, FfiError> {
        guard("Dataset::findings", || {
            let Some(findings) = self.0.findings()? else {
                return Ok(ROption::RNone);
            };
            if findings.len() != self.0.len() {
                return Err(crate::error::PluginError::msg(format!(
                    "Dataset::findings gave {} rows for {} samples",
                    findings.len(),
                    self.0.len()
                )));
            }
            let (names, values) = findings.into_parts();
            Ok(ROption::RSome(Tuple2(
                names.into_iter().map(RString::from).collect(),
                values.into(),
            )))
        })
    }
    fn ids(&self) -> RResult<ROption<RVec<RString>>, FfiError> {
        guard("Dataset::ids", || {
            let ids = self.0.ids()?;
            if let Some(ids) = &ids {
                if ids.len() != self.0.len() {
                    return Err(crate::error::PluginError::msg(format!(
                        "Dataset::ids gave {} ids for {} samples",
                        ids.len(),
                        self.0.len()
                    )));
                }
            }
            Ok(ids
                .map(|v| v.into_iter().map(RString::from).collect::<RVec<RString>>())
                .into())
        })
    }
}

struct TransformAdapter<T>(T);

impl<T: Transform> TransformFfi for TransformAdapter<T> {
    fn apply(&self, image: Image, seed: u64) -> RResult<Image, FfiError> {
        guard("Transform::apply", || self.0.apply(image, seed))
    }
}

/// A factory closure with its name, leaked for the life of the process (plugins are never
/// unloaded).
pub(crate) struct FactoryState<F> {
    pub(crate) name: String,
    pub(crate) make: F,
}

pub(crate) fn leak_ctx<F>(name: &str, make: F) -> FactoryCtx {
    let state = Box::new(FactoryState {
        name: name.to_string(),
        make,
    });
    FactoryCtx(Box::into_raw(state) as *const std::ffi::c_void)
}

/// # Safety
/// `ctx` must come from [`leak_ctx`] with the same `F`.
pub(crate) unsafe fn ctx_state<'a, F>(ctx: FactoryCtx) -> &'a FactoryState<F> {
    // SAFETY: guaranteed by the caller; the state is leaked, so it lives forever.
    unsafe { &*(ctx.0 as *const FactoryState<F>) }
}

extern "C" fn create_dataset<D, F>(
    ctx: FactoryCtx,
    params: RStr<'_>,
) -> RResult<DatasetBox, FfiError>
where
    D: Dataset,
    F: Fn(&Params) -> Result<D> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(&format!("the factory of dataset `{}`", state.name), || {
        let params = Params::from_json(params.as_str())?;
        let dataset = (state.make)(&params)?;
        Ok(DatasetFfi_TO::from_value(
            DatasetAdapter(dataset),
            TD_Opaque,
        ))
    })
}

extern "C" fn describe_dataset<F>(
    ctx: FactoryCtx,
    params: RStr<'_>,
) -> RResult<crate::ffi::DatasetInfoFfi, FfiError>
where
    F: Fn(&Params) -> Result<DatasetInfo> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(
        &format!("the description of dataset `{}`", state.name),
        || {
            let params = Params::from_json(params.as_str())?;
            let info = (state.make)(&params)?;
            info.check().map_err(PluginError::msg)?;
            Ok(info.to_ffi())
        },
    )
}

extern "C" fn create_transform<T, F>(
    ctx: FactoryCtx,
    params: RStr<'_>,
) -> RResult<TransformBox, FfiError>
where
    T: Transform,
    F: Fn(&Params) -> Result<T> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(
        &format!("the factory of transform `{}`", state.name),
        || {
            let params = Params::from_json(params.as_str())?;
            let transform = (state.make)(&params)?;
            Ok(TransformFfi_TO::from_value(
                TransformAdapter(transform),
                TD_Opaque,
            ))
        },
    )
}

extern "C" fn compile_pipeline<T, F>(
    ctx: FactoryCtx,
    steps: RVec<StepFfi>,
) -> RResult<ROption<TransformBox>, FfiError>
where
    T: Transform,
    F: Fn(&[TransformStep]) -> Result<Option<T>> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(
        &format!("the pipeline compiler of plugin `{}`", state.name),
        || {
            let steps = steps_from_ffi(steps)?;
            Ok((state.make)(&steps)?
                .map(|t| TransformFfi_TO::from_value(TransformAdapter(t), TD_Opaque))
                .into())
        },
    )
}

/// The list of what a plugin offers. Build it in a function and pass that function to
/// [`export_plugin!`](crate::export_plugin).
pub struct Plugin {
    name: String,
    version: String,
    datasets: Vec<DatasetFactoryFfi>,
    transforms: Vec<TransformFactoryFfi>,
    pipeline_compilers: Vec<PipelineCompilerFfi>,
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(crate) batch_transforms: Vec<BatchTransformFactoryFfi>,
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(crate) batch_pipeline_compilers: Vec<BatchPipelineCompilerFfi>,
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(crate) encoders: Vec<EncoderFactoryFfi>,
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(crate) algorithms: Vec<AlgorithmFactoryFfi>,
    model_configs: Vec<ModelConfigFfi>,
    /// Mistakes in the declarations, reported when the host lists the plugin's contents.
    pub(crate) problems: Vec<String>,
}

impl Plugin {
    /// A plugin called `name` at `version` (use `env!("CARGO_PKG_VERSION")`).
    pub fn new(name: &str, version: &str) -> Self {
        Plugin {
            name: name.into(),
            version: version.into(),
            datasets: Vec::new(),
            transforms: Vec::new(),
            pipeline_compilers: Vec::new(),
            batch_transforms: Vec::new(),
            batch_pipeline_compilers: Vec::new(),
            encoders: Vec::new(),
            algorithms: Vec::new(),
            model_configs: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The plugin's name.
    pub(crate) fn plugin_name(&self) -> &str {
        &self.name
    }

    /// Offers a dataset called `name`, made by `make` from its parameters.
    pub fn dataset<D, F>(mut self, name: &str, description: &str, make: F) -> Self
    where
        D: Dataset,
        F: Fn(&Params) -> Result<D> + Send + Sync + 'static,
    {
        self.datasets.push(DatasetFactoryFfi {
            name: name.into(),
            description: description.into(),
            info: DatasetInfo::default().to_ffi(),
            ctx: leak_ctx(name, make),
            create: create_dataset::<D, F>,
            describe: ROption::RNone,
        });
        self
    }

    /// Declares what the host needs to know about the dataset added just before (image kind,
    /// small images, varying sizes, default evaluation pipeline); without it, the dataset gets
    /// [`DatasetInfo::default()`]. A mistake (no dataset added yet, evaluation parameters that
    /// are not a JSON object) makes the plugin fail to load with an error naming it.
    ///
    /// ```no_run
    /// # use ssl_plugin_api::{Dataset, Params, Plugin, Result, Sample};
    /// # struct Tiny;
    /// # impl Dataset for Tiny {
    /// #     fn len(&self) -> usize { 0 }
    /// #     fn num_classes(&self) -> Option<usize> { Some(10) }
    /// #     fn get(&self, _: usize) -> Result<Sample> { unreachable!() }
    /// # }
    /// use ssl_plugin_api::DatasetInfo;
    ///
    /// // 32 px images: encoders use their small-image stem on it, as on CIFAR.
    /// let plugin = Plugin::new("tiny", "0.1.0")
    ///     .dataset("TinyImages", "32 px photos", |_: &Params| Ok(Tiny))
    ///     .dataset_info(DatasetInfo { small_images: true, ..DatasetInfo::default() });
    /// # let _ = plugin;
    /// ```
    pub fn dataset_info(mut self, info: DatasetInfo) -> Self {
        let checked = info.check();
        match (self.datasets.last_mut(), checked) {
            (None, _) => self
                .problems
                .push("dataset_info() comes before any dataset(); call it right after the dataset() it describes".into()),
            (Some(last), Err(problem)) => self
                .problems
                .push(format!("dataset `{}`: {problem}", last.name)),
            (Some(last), Ok(())) => last.info = info.to_ffi(),
        }
        self
    }

    /// Declares that what the dataset added just before declares depends on its data: the host
    /// calls `describe` with the parameters the dataset would be made from (its folder
    /// included) and uses its answer instead of the static [`dataset_info`](Self::dataset_info)
    /// (still used when the parameters are not known, e.g. in `ssl-host list`). For datasets
    /// whose folder records what they hold, such as packed copies of another dataset.
    pub fn dataset_info_from<F>(mut self, describe: F) -> Self
    where
        F: Fn(&Params) -> Result<DatasetInfo> + Send + Sync + 'static,
    {
        match self.datasets.last_mut() {
            None => self.problems.push(
                "dataset_info_from() comes before any dataset(); call it right after the dataset() it describes".into(),
            ),
            Some(last) => {
                last.describe = ROption::RSome(DatasetDescribeFfi {
                    ctx: leak_ctx(last.name.as_str(), describe),
                    call: describe_dataset::<F>,
                })
            }
        }
        self
    }

    /// Offers a transform called `name`, made by `make` from its parameters.
    pub fn transform<T, F>(mut self, name: &str, description: &str, make: F) -> Self
    where
        T: Transform,
        F: Fn(&Params) -> Result<T> + Send + Sync + 'static,
    {
        self.transforms.push(TransformFactoryFfi {
            name: name.into(),
            description: description.into(),
            ctx: leak_ctx(name, make),
            create: create_transform::<T, F>,
        });
        self
    }

    /// Offers a pipeline compiler: when the host builds a pipeline (a list of transforms of
    /// a config), it first asks each plugin's compiler for one transform doing the whole list;
    /// `make` returns `Ok(None)` for a list it does not fully know, and the host then applies
    /// the steps one by one. The compiled transform must draw what the steps would draw from
    /// their seeds ([`step_seed`](crate::step_seed)) so results keep their distribution; it may
    /// differ pixel-wise (e.g. one resampling instead of two), which `description` states.
    pub fn pipeline_compiler<T, F>(mut self, description: &str, make: F) -> Self
    where
        T: Transform,
        F: Fn(&[TransformStep]) -> Result<Option<T>> + Send + Sync + 'static,
    {
        let name = self.plugin_name().to_string();
        self.pipeline_compilers.push(PipelineCompilerFfi {
            description: description.into(),
            ctx: leak_ctx(&name, make),
            compile: compile_pipeline::<T, F>,
        });
        self
    }

    /// Offers a named model config (`--model=NAME`), given as TOML text.
    pub fn model_config(mut self, name: &str, description: &str, toml: &str) -> Self {
        self.model_configs.push(ModelConfigFfi {
            name: name.into(),
            description: description.into(),
            toml: toml.into(),
        });
        self
    }

    /// The ABI form of the list; an error listing every mistake in the declarations.
    #[doc(hidden)]
    pub fn into_contents(self) -> Result<PluginContents> {
        if !self.problems.is_empty() {
            return Err(PluginError::msg(format!(
                "plugin `{}` declares its contents wrongly: {}",
                self.name,
                self.problems.join("; ")
            )));
        }
        Ok(PluginContents {
            name: self.name.into(),
            version: self.version.into(),
            datasets: self.datasets.into(),
            transforms: self.transforms.into(),
            pipeline_compilers: self.pipeline_compilers.into(),
            batch_transforms: self.batch_transforms.into(),
            batch_pipeline_compilers: self.batch_pipeline_compilers.into(),
            encoders: self.encoders.into(),
            algorithms: self.algorithms.into(),
            model_configs: self.model_configs.into(),
        })
    }
}

/// Everything the export macros need, out of the way of plugin authors.
#[doc(hidden)]
pub mod __private {
    use crate::error::FfiError;
    pub use crate::ffi::{PluginContents, PluginHeader, PluginModule, PluginModule_Ref};
    use crate::guard::guard;
    pub use abi_stable::std_types::RResult;
    pub use inventory;

    /// Runs the author's builder under the panic guard.
    pub fn contents_of(build: fn() -> super::Plugin) -> RResult<PluginContents, FfiError> {
        guard("the plugin's contents function", || build().into_contents())
    }

    /// The root module around a contents function.
    pub fn module_of(
        contents: extern "C" fn() -> RResult<PluginContents, FfiError>,
    ) -> PluginModule_Ref {
        use abi_stable::prefix_type::PrefixTypeTrait;
        PluginModule { contents }.leak_into_prefix()
    }

    /// The header of a plugin.
    pub const fn header_of(module: extern "C" fn() -> PluginModule_Ref) -> PluginHeader {
        PluginHeader {
            layout: <PluginModule_Ref as abi_stable::StableAbi>::LAYOUT,
            module,
        }
    }

    /// The build-info JSON of this build, NUL-terminated, alive for the whole process.
    pub fn build_info_c_json() -> *const std::os::raw::c_char {
        static JSON: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
        JSON.get_or_init(|| crate::BuildInfo::current().to_c_json())
            .as_ptr()
    }

    /// A built-in plugin, linked into the host and registered with `inventory`.
    pub struct BuiltinPlugin {
        pub entry: extern "C" fn() -> &'static PluginHeader,
    }
    inventory::collect!(BuiltinPlugin);
}

/// Exports a plugin from a `cdylib` crate: `ssl_plugin_api::export_plugin!(my_plugin);` where
/// `fn my_plugin() -> Plugin`. It defines the two symbols the host reads:
/// `ssl_host_plugin_build_info` (checked first) and `ssl_host_plugin_entry`.
#[macro_export]
macro_rules! export_plugin {
    ($build:path) => {
        #[no_mangle]
        pub extern "C" fn ssl_host_plugin_build_info() -> *const ::std::os::raw::c_char {
            $crate::__private::build_info_c_json()
        }

        #[no_mangle]
        pub extern "C" fn ssl_host_plugin_entry() -> &'static $crate::__private::PluginHeader {
            extern "C" fn contents(
            ) -> $crate::__private::RResult<$crate::__private::PluginContents, $crate::FfiError>
            {
                $crate::__private::contents_of($build)
            }
            extern "C" fn module() -> $crate::__private::PluginModule_Ref {
                $crate::__private::module_of(contents)
            }
            static HEADER: $crate::__private::PluginHeader = $crate::__private::header_of(module);
            &HEADER
        }
    };
}

/// Registers a built-in plugin (a crate linked into `ssl-host`): the host reaches it through
/// the same header and ABI objects as a `.so` plugin.
#[macro_export]
macro_rules! register_builtin {
    ($build:path) => {
        const _: () = {
            extern "C" fn contents(
            ) -> $crate::__private::RResult<$crate::__private::PluginContents, $crate::FfiError>
            {
                $crate::__private::contents_of($build)
            }
            extern "C" fn module() -> $crate::__private::PluginModule_Ref {
                $crate::__private::module_of(contents)
            }
            extern "C" fn entry() -> &'static $crate::__private::PluginHeader {
                static HEADER: $crate::__private::PluginHeader =
                    $crate::__private::header_of(module);
                &HEADER
            }
            $crate::__private::inventory::submit! {
                $crate::__private::BuiltinPlugin { entry }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::ImageKind;

    struct Empty;
    impl Dataset for Empty {
        fn len(&self) -> usize {
            0
        }
        fn num_classes(&self) -> Option<usize> {
            None
        }
        fn get(&self, index: usize) -> Result<Sample> {
            Err(PluginError::msg(format!("no sample {index}")))
        }
    }

    fn empty(_: &Params) -> Result<Empty> {
        Ok(Empty)
    }

    #[test]
    fn a_declaration_describes_the_entry_added_just_before() {
        let contents = Plugin::new("p", "1")
            .dataset("Plain", "", empty)
            .dataset("Small", "", empty)
            .dataset_info(DatasetInfo {
                small_images: true,
                image_kind: ImageKind::Grey,
                ..DatasetInfo::default()
            })
            .into_contents()
            .unwrap();
        let plain = DatasetInfo::from_ffi(&contents.datasets[0].info);
        let small = DatasetInfo::from_ffi(&contents.datasets[1].info);
        assert_eq!(plain, DatasetInfo::default());
        assert!(small.small_images);
        assert_eq!(small.image_kind, ImageKind::Grey);
    }

    #[test]
    fn misplaced_or_wrong_declarations_fail_the_plugin_naming_them() {
        let e = Plugin::new("p", "1")
            .dataset_info(DatasetInfo::default())
            .dataset("D", "", empty)
            .dataset_info(DatasetInfo {
                eval_transforms: vec![("Resize".into(), "size=3".into())],
                ..DatasetInfo::default()
            })
            .into_contents()
            .err()
            .unwrap()
            .message();
        assert!(e.contains("plugin `p`"), "{e}");
        assert!(
            e.contains("dataset_info() comes before any dataset()"),
            "{e}"
        );
        assert!(e.contains("dataset `D`") && e.contains("`Resize`"), "{e}");
    }

    struct TwoFindings(usize, Vec<i8>);
    impl Dataset for TwoFindings {
        fn len(&self) -> usize {
            self.0
        }
        fn num_classes(&self) -> Option<usize> {
            None
        }
        fn get(&self, index: usize) -> Result<Sample> {
            Err(PluginError::msg(format!("no sample {index}")))
        }
        fn findings(&self) -> Result<Option<Findings>> {
            Findings::new(vec!["A".into(), "B".into()], self.1.clone()).map(Some)
        }
    }

    #[test]
    fn findings_cross_the_abi_whole_and_a_wrong_row_count_is_named() {
        use abi_stable::std_types::Tuple2;
        let ok = DatasetAdapter(TwoFindings(2, vec![1, 0, -1, 1]));
        let Tuple2(names, values) = ok.findings().unwrap().unwrap();
        assert_eq!(names.as_slice(), &[RString::from("A"), RString::from("B")]);
        assert_eq!(values.as_slice(), &[1, 0, -1, 1]);
        let short = DatasetAdapter(TwoFindings(3, vec![1, 0, -1, 1]));
        let e = short.findings().unwrap_err().chain_text();
        assert!(e.contains("gave 2 rows for 3 samples"), "{e}");
        // A single-label dataset has none.
        assert!(DatasetAdapter(Empty).findings().unwrap().is_none());
    }
}
