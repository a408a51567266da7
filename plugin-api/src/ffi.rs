//! The ABI itself: what crosses a plugin boundary, laid out with abi_stable.
//!
//! Plugin authors never touch this module: they implement the ordinary traits of
//! [`crate::plugin`] (and [`crate::torch`]), and the adapters of those modules build these
//! objects. The host reaches them only through the module `host` (feature `host`).
#![allow(non_local_definitions, non_camel_case_types)]

use crate::error::FfiError;
use crate::image::{Image, Sample};
use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec, Tuple2};
use abi_stable::type_layout::TypeLayout;
use abi_stable::{
    declare_root_module_statics, package_version_strings, sabi_types::VersionStrings, StableAbi,
};
use std::ffi::c_void;

/// An owned libtorch tensor (a heap `torch::Tensor*`) crossing the boundary. The side that
/// allocated it frees it, through `free`, so no side deletes what another side's tch shim made.
#[repr(C)]
#[derive(StableAbi)]
pub struct TensorHandle {
    pub(crate) ptr: *mut c_void,
    pub(crate) free: extern "C" fn(*mut c_void),
}

// SAFETY: a libtorch tensor handle may move between threads (tch's `Tensor` is `Send`); it is
// only ever used by one thread at a time because the handle is owned.
unsafe impl Send for TensorHandle {}

impl Drop for TensorHandle {
    fn drop(&mut self) {
        (self.free)(self.ptr)
    }
}

/// A named tensor (parameter, buffer or state entry).
#[repr(C)]
#[derive(StableAbi)]
pub struct NamedTensor {
    pub name: RString,
    pub tensor: TensorHandle,
}

/// A trainable tensor with the optimizer hints of its group.
#[repr(C)]
#[derive(StableAbi)]
pub struct ParamFfi {
    pub name: RString,
    pub tensor: TensorHandle,
    pub weight_decay: bool,
    pub lars_adaptation: bool,
    /// Follows the run's learning-rate schedule (else stays at the base learning rate).
    pub scheduled: bool,
}

/// A named scalar to log.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct NamedScalar {
    pub name: RString,
    pub value: f64,
}

/// A dataset object.
#[sabi_trait]
pub trait DatasetFfi: Send + Sync {
    fn len(&self) -> RResult<u64, FfiError>;
    fn get(&self, index: u64) -> RResult<Sample, FfiError>;
    /// 0 when unlabelled.
    fn num_classes(&self) -> RResult<u64, FfiError>;
    /// One entry per sample; -1 where a sample has no label.
    fn targets(&self) -> RResult<RVec<i64>, FfiError>;
    /// One group name per sample for the train/validation split, or none.
    #[sabi(last_prefix_field)]
    fn groups(&self) -> RResult<ROption<RVec<RString>>, FfiError>;
    /// The findings of a multi-label dataset (names, values row-major), or none. Added after
    /// the prefix: a plugin built before it has no findings.
    fn findings(&self) -> RResult<ROption<FindingsFfi>, FfiError> {
        RResult::ROk(ROption::RNone)
    }
    /// The id of every sample when known without decoding, or none. Added after the prefix.
    fn ids(&self) -> RResult<ROption<RVec<RString>>, FfiError> {
        RResult::ROk(ROption::RNone)
    }
}

/// A multi-label dataset's finding names and values (`[samples × names]`, 1/0/-1).
pub type FindingsFfi = Tuple2<RVec<RString>, RVec<i8>>;

/// A transform object.
#[sabi_trait]
pub trait TransformFfi: Send + Sync {
    #[sabi(last_prefix_field)]
    fn apply(&self, image: Image, seed: u64) -> RResult<Image, FfiError>;
}

/// An encoder object.
#[sabi_trait]
pub trait EncoderFfi: Send {
    fn forward(&mut self, input: TensorHandle, train: bool) -> RResult<TensorHandle, FfiError>;
    fn output_dim(&self) -> RResult<i64, FfiError>;
    fn named_parameters(&self) -> RResult<RVec<NamedTensor>, FfiError>;
    #[sabi(last_prefix_field)]
    fn named_buffers(&self) -> RResult<RVec<NamedTensor>, FfiError>;
}

/// An SSL algorithm object.
#[sabi_trait]
pub trait AlgorithmFfi: Send {
    fn training_loss(&mut self, views: RVec<TensorHandle>) -> RResult<TensorHandle, FfiError>;
    fn validation_loss(&mut self, views: RVec<TensorHandle>) -> RResult<TensorHandle, FfiError>;
    fn parameters(&self) -> RResult<RVec<ParamFfi>, FfiError>;
    fn after_optimizer_step(&mut self, step: u64, max_steps: u64) -> RResult<(), FfiError>;
    fn embed(&mut self, images: TensorHandle, train: bool) -> RResult<TensorHandle, FfiError>;
    fn embedding_dim(&self) -> RResult<i64, FfiError>;
    fn embedding_encoder_prefix(&self) -> RResult<RString, FfiError>;
    fn state(&self) -> RResult<RVec<NamedTensor>, FfiError>;
    fn begin_epoch(&mut self, epoch: u64, epochs: u64) -> RResult<(), FfiError>;
    #[sabi(last_prefix_field)]
    fn scalars(&self) -> RResult<RVec<NamedScalar>, FfiError>;
}

/// A batch transform object (feature `torch` on both sides): `[N, C, H, W]` float tensor and
/// one seed per sample in, a tensor out.
#[sabi_trait]
pub trait BatchTransformFfi: Send + Sync {
    #[sabi(last_prefix_field)]
    fn apply(&self, batch: TensorHandle, seeds: RVec<u64>) -> RResult<TensorHandle, FfiError>;
}

pub type DatasetBox = DatasetFfi_TO<'static, abi_stable::std_types::RBox<()>>;
pub type TransformBox = TransformFfi_TO<'static, abi_stable::std_types::RBox<()>>;
pub type BatchTransformBox = BatchTransformFfi_TO<'static, abi_stable::std_types::RBox<()>>;
pub type EncoderBox = EncoderFfi_TO<'static, abi_stable::std_types::RBox<()>>;
pub type AlgorithmBox = AlgorithmFfi_TO<'static, abi_stable::std_types::RBox<()>>;

/// An opaque, leaked, `'static` factory context (the author's closure).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy)]
pub struct FactoryCtx(pub(crate) *const c_void);
// SAFETY: the context is a leaked `Send + Sync` closure, never freed.
unsafe impl Send for FactoryCtx {}
// SAFETY: as above.
unsafe impl Sync for FactoryCtx {}

/// [`crate::ImageKind`] across the boundary.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKindFfi {
    Rgb,
    Grey,
}

/// [`crate::DatasetInfo`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct DatasetInfoFfi {
    pub image_kind: ImageKindFfi,
    pub small_images: bool,
    pub varying_sizes: bool,
    /// (transform name, JSON parameters)
    pub eval_transforms: RVec<Tuple2<RString, RString>>,
}

/// [`crate::EncoderInfo`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct EncoderInfoFfi {
    pub small_image_param: ROption<RString>,
}

/// [`crate::AlgorithmInfo`] across the boundary (metric prefix already resolved).
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct AlgorithmInfoFfi {
    pub lr_schedule: RString,
    pub metric_prefix: RString,
    pub scale_lr_with_processes: bool,
}

/// Makes datasets from a JSON parameter blob.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct DatasetFactoryFfi {
    pub name: RString,
    pub description: RString,
    pub info: DatasetInfoFfi,
    pub ctx: FactoryCtx,
    pub create: extern "C" fn(FactoryCtx, RStr<'_>) -> RResult<DatasetBox, FfiError>,
    /// What the dataset made from given parameters declares, when it depends on its data
    /// (`None`: always `info`).
    pub describe: ROption<DatasetDescribeFfi>,
}

/// Reads a dataset's declaration from its parameters (e.g. from an index in its folder).
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct DatasetDescribeFfi {
    pub ctx: FactoryCtx,
    pub call: extern "C" fn(FactoryCtx, RStr<'_>) -> RResult<DatasetInfoFfi, FfiError>,
}

/// Makes transforms from a JSON parameter blob.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct TransformFactoryFfi {
    pub name: RString,
    pub description: RString,
    pub ctx: FactoryCtx,
    pub create: extern "C" fn(FactoryCtx, RStr<'_>) -> RResult<TransformBox, FfiError>,
}

/// A pipeline step as the host gives it to a compiler: (transform name, JSON parameters).
pub type StepFfi = Tuple2<RString, RString>;

/// Offers to run a whole list of transforms as one (a fused, faster form); `None` when it
/// does not know every step.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct PipelineCompilerFfi {
    pub description: RString,
    pub ctx: FactoryCtx,
    pub compile:
        extern "C" fn(FactoryCtx, RVec<StepFfi>) -> RResult<ROption<TransformBox>, FfiError>,
}

/// Makes batch transforms from a JSON parameter blob.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct BatchTransformFactoryFfi {
    pub name: RString,
    pub description: RString,
    pub ctx: FactoryCtx,
    pub create: extern "C" fn(FactoryCtx, RStr<'_>) -> RResult<BatchTransformBox, FfiError>,
}

/// Offers to run a whole list of transforms on batches as one batch transform.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct BatchPipelineCompilerFfi {
    pub description: RString,
    pub ctx: FactoryCtx,
    pub compile:
        extern "C" fn(FactoryCtx, RVec<StepFfi>) -> RResult<ROption<BatchTransformBox>, FfiError>,
}

/// The host's process group as encoders and algorithms see it (`Collectives` on the Rust
/// side): rank, world size, whether BatchNorm synchronises its statistics, and the two
/// collective operations on tensors. `ctx` is the host's reference-counted handle: `retain`
/// and `release` count the copies (this struct's `Clone` and `Drop`), so a plugin may keep a
/// copy for as long as it likes.
#[repr(C)]
#[derive(StableAbi)]
pub struct CollectivesFfi {
    pub rank: u64,
    pub world_size: u64,
    pub sync_batchnorm: bool,
    pub ctx: *const c_void,
    /// Sum (or average when `op_average`) over all ranks; `with_grad`: differentiable (the
    /// gradient of a sum is the sum of the gradients).
    pub all_reduce:
        extern "C" fn(*const c_void, TensorHandle, bool, bool) -> RResult<TensorHandle, FfiError>,
    /// Concatenation along dimension 0 in rank order; `with_grad`: each rank gets its slice of
    /// the summed gradient (`torch.distributed.nn.all_gather`).
    pub all_gather:
        extern "C" fn(*const c_void, TensorHandle, bool) -> RResult<TensorHandle, FfiError>,
    pub retain: extern "C" fn(*const c_void),
    pub release: extern "C" fn(*const c_void),
}

// SAFETY: `ctx` is the host's `Arc` of a `Send + Sync` handle; the functions may be called
// from any thread.
unsafe impl Send for CollectivesFfi {}
// SAFETY: as above.
unsafe impl Sync for CollectivesFfi {}

impl Clone for CollectivesFfi {
    fn clone(&self) -> Self {
        (self.retain)(self.ctx);
        CollectivesFfi {
            rank: self.rank,
            world_size: self.world_size,
            sync_batchnorm: self.sync_batchnorm,
            ctx: self.ctx,
            all_reduce: self.all_reduce,
            all_gather: self.all_gather,
            retain: self.retain,
            release: self.release,
        }
    }
}

impl Drop for CollectivesFfi {
    fn drop(&mut self) {
        (self.release)(self.ctx)
    }
}

/// Makes encoders from a JSON parameter blob, a device name (`cpu`, `cuda:0`) and the host's
/// collectives.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct EncoderFactoryFfi {
    pub name: RString,
    pub description: RString,
    pub info: EncoderInfoFfi,
    pub ctx: FactoryCtx,
    pub create: extern "C" fn(
        FactoryCtx,
        RStr<'_>,
        RStr<'_>,
        &CollectivesFfi,
    ) -> RResult<EncoderBox, FfiError>,
}

/// Makes SSL algorithms from their parameters, an encoder factory with the encoder's
/// parameters, a device name and the host's collectives.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct AlgorithmFactoryFfi {
    pub name: RString,
    pub description: RString,
    pub info: AlgorithmInfoFfi,
    pub ctx: FactoryCtx,
    pub create: extern "C" fn(
        FactoryCtx,
        RStr<'_>,
        &EncoderFactoryFfi,
        RStr<'_>,
        RStr<'_>,
        &CollectivesFfi,
    ) -> RResult<AlgorithmBox, FfiError>,
}

/// A named model config (TOML text) a plugin ships, usable as `--model=NAME`.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct ModelConfigFfi {
    pub name: RString,
    pub description: RString,
    pub toml: RString,
}

/// Everything a plugin offers.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginContents {
    pub name: RString,
    pub version: RString,
    pub datasets: RVec<DatasetFactoryFfi>,
    pub transforms: RVec<TransformFactoryFfi>,
    pub pipeline_compilers: RVec<PipelineCompilerFfi>,
    pub batch_transforms: RVec<BatchTransformFactoryFfi>,
    pub batch_pipeline_compilers: RVec<BatchPipelineCompilerFfi>,
    pub encoders: RVec<EncoderFactoryFfi>,
    pub algorithms: RVec<AlgorithmFactoryFfi>,
    pub model_configs: RVec<ModelConfigFfi>,
}

/// The root module of a plugin: a prefix type, so later API versions can append fields.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    #[sabi(last_prefix_field)]
    pub contents: extern "C" fn() -> RResult<PluginContents, FfiError>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "ssl_host_plugin";
    const NAME: &'static str = "ssl-host plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What `ssl_host_plugin_entry` returns: plain pointers whose layout never changes, so the
/// host can read it from any plugin before trusting anything else.
#[repr(C)]
pub struct PluginHeader {
    /// The type layout of the plugin's root module, compared with the host's before use.
    pub layout: &'static TypeLayout,
    /// Builds the root module.
    pub module: extern "C" fn() -> PluginModule_Ref,
}

/// The layout the host expects.
pub fn expected_layout() -> &'static TypeLayout {
    <PluginModule_Ref as StableAbi>::LAYOUT
}
