//! Encoders and SSL algorithms: the parts of the contract that work on libtorch tensors
//! (feature `torch`).
//!
//! Tensors cross the boundary as owned libtorch handles; host and plugins share one libtorch
//! (checked at load through the build-info record), so a tensor made on one side is used on
//! the other without copies.

use crate::collectives::Collectives;
use crate::error::{FfiError, PluginError, Result};
use crate::ffi::*;
use crate::guard::guard;
use crate::info::{AlgorithmInfo, EncoderInfo};
use crate::params::Params;
use crate::plugin::{ctx_state, leak_ctx, steps_from_ffi, steps_to_ffi, Plugin, TransformStep};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use std::ffi::c_void;
pub use tch::{Device, Kind, Tensor};

extern "C" fn free_tensor(ptr: *mut c_void) {
    // SAFETY: `ptr` was produced by `handle_from_tensor` of this same library (the handle's
    // `free` always points into the library that allocated it) and is freed exactly once.
    drop(unsafe { Tensor::from_ptr(ptr as *mut torch_sys::C_tensor) });
}

/// Moves a tensor into a handle.
pub(crate) fn handle_from_tensor(tensor: Tensor) -> TensorHandle {
    let mut tensor = tensor;
    let ptr = tensor.as_mut_ptr() as *mut c_void;
    std::mem::forget(tensor);
    TensorHandle {
        ptr,
        free: free_tensor,
    }
}

/// Takes a tensor out of a handle: a new reference to the same storage (and autograd node),
/// owned by this side; the handle is freed by the side that made it.
pub(crate) fn tensor_from_handle(handle: TensorHandle) -> Tensor {
    // SAFETY: the handle holds a live `torch::Tensor*` of the process-wide libtorch.
    let tensor = unsafe { Tensor::clone_from_ptr(handle.ptr as *mut torch_sys::C_tensor) };
    drop(handle);
    tensor
}

fn named_to_ffi(list: Vec<(String, Tensor)>) -> RVec<NamedTensor> {
    list.into_iter()
        .map(|(name, t)| NamedTensor {
            name: name.into(),
            tensor: handle_from_tensor(t),
        })
        .collect()
}

fn named_from_ffi(list: RVec<NamedTensor>) -> Vec<(String, Tensor)> {
    list.into_iter()
        .map(|n| (n.name.into_string(), tensor_from_handle(n.tensor)))
        .collect()
}

/// The device name used across the boundary: `cpu`, `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match name.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Ok(Device::Cuda(i)),
            None => Err(PluginError::msg(format!(
                "unknown device `{name}` (expected cpu, cuda or cuda:N)"
            ))),
        },
    }
}

/// An image encoder: images `[N, C, H, W]` (float) in, embeddings `[N, output_dim]` out.
///
/// `named_parameters` and `named_buffers` must return the same tensors (shallow clones) every
/// time: the host trains and checkpoints them in place.
pub trait Encoder: Send + 'static {
    /// Embeds a batch; `train` selects training behaviour (BatchNorm statistics, dropout).
    fn forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor>;
    /// Size of an embedding.
    fn output_dim(&self) -> i64;
    /// Trainable tensors, with torchvision-style names (`layer1.0.conv1.weight`).
    fn named_parameters(&self) -> Vec<(String, Tensor)>;
    /// Non-trainable state (BatchNorm running statistics).
    fn named_buffers(&self) -> Vec<(String, Tensor)>;
}

/// A trainable tensor with hints for the optimizer.
pub struct TrainableParam {
    /// Name, unique within the algorithm (`online.encoder.conv1.weight`).
    pub name: String,
    /// The tensor, trained in place.
    pub tensor: Tensor,
    /// Apply weight decay to it (false for biases and BatchNorm, as the original).
    pub weight_decay: bool,
    /// Apply LARS trust-ratio adaptation to it.
    pub lars_adaptation: bool,
    /// Whether its learning rate follows the run's schedule (warm-up, decay). `false`: it stays
    /// at the run's base learning rate (`l_rate`, scaled with the processes as the rest)
    /// throughout, as SimSiam's predictor.
    pub scheduled: bool,
}

impl TrainableParam {
    /// The usual hints: no weight decay nor LARS adaptation for names containing `bias` or `bn`
    /// (also `norm` and `downsample.1`, torchvision's BatchNorm names); every one follows the
    /// learning-rate schedule.
    pub fn with_default_hints(name: String, tensor: Tensor) -> Self {
        let excluded = ["bias", "bn", "norm", "downsample.1"]
            .iter()
            .any(|k| name.contains(k));
        TrainableParam {
            name,
            tensor,
            weight_decay: !excluded,
            lars_adaptation: !excluded,
            scheduled: true,
        }
    }
}

/// A self-supervised algorithm (BYOL, SimCLR, ...) around one or more encoders.
pub trait SslAlgorithm: Send + 'static {
    /// The loss to minimise for one batch of augmented views (two or more, any sizes).
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor>;
    /// The validation loss (evaluation mode, no gradients needed).
    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor>;
    /// Everything the host's optimizer updates.
    fn parameters(&self) -> Vec<TrainableParam>;
    /// Called before every training epoch (0-based `epoch` of `epochs`), also when a run
    /// resumes: per-epoch behaviour (DINO's frozen last layer in the first epoch, its teacher
    /// temperature warm-up) without the host knowing the algorithm.
    fn begin_epoch(&mut self, _epoch: u64, _epochs: u64) -> Result<()> {
        Ok(())
    }
    /// Called after every optimizer step (BYOL's moving average), with the step just taken
    /// (1-based) and the total number of steps of the run.
    fn after_optimizer_step(&mut self, _step: u64, _max_steps: u64) -> Result<()> {
        Ok(())
    }
    /// Embeddings for the linear head (detached by the host).
    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor>;
    /// Size of those embeddings.
    fn embedding_dim(&self) -> i64;
    /// Prefix, within [`SslAlgorithm::state`], of the encoder that [`SslAlgorithm::embed`]
    /// uses (e.g. `target.encoder.`), so a classifier can take that encoder from a checkpoint.
    fn embedding_encoder_prefix(&self) -> String;
    /// Everything to checkpoint (parameters, buffers, queues), by name; restored in place.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Scalars to log after each step, by metric name (e.g. `byol/tau`). Called every step:
    /// return values the host already has (a schedule's value, a CPU tensor); reading a GPU
    /// tensor here makes every step wait for the device.
    fn scalars(&self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// A batch transform: the augmentation of a whole batch where the model runs (`augment_on =
/// "device"`). `batch` is `[N, C, H, W]` float in [0, 1] on the training device; `seeds` has
/// one seed per sample, the seed the host would give this step for that sample's view (see
/// [`step_seed`](crate::step_seed)). Sample `i` of the output must depend only on sample `i`
/// of the input and `seeds[i]` (not on the batch size, its other samples or the device's
/// random generator), so runs do not depend on the number of workers and resume exactly.
pub trait BatchTransform: Send + Sync + 'static {
    /// Transforms the batch; the output may have another size (a crop) but keeps `N`.
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor>;
}

struct BatchTransformAdapter<T>(T);

impl<T: BatchTransform> BatchTransformFfi for BatchTransformAdapter<T> {
    fn apply(&self, batch: TensorHandle, seeds: RVec<u64>) -> RResult<TensorHandle, FfiError> {
        let batch = tensor_from_handle(batch);
        guard("BatchTransform::apply", || {
            Ok(handle_from_tensor(self.0.apply(&batch, &seeds)?))
        })
    }
}

extern "C" fn create_batch_transform<T, F>(
    ctx: FactoryCtx,
    params: RStr<'_>,
) -> RResult<BatchTransformBox, FfiError>
where
    T: BatchTransform,
    F: Fn(&Params) -> Result<T> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(
        &format!("the factory of batch transform `{}`", state.name),
        || {
            let params = Params::from_json(params.as_str())?;
            let transform = (state.make)(&params)?;
            Ok(BatchTransformFfi_TO::from_value(
                BatchTransformAdapter(transform),
                TD_Opaque,
            ))
        },
    )
}

extern "C" fn compile_batch_pipeline<T, F>(
    ctx: FactoryCtx,
    steps: RVec<StepFfi>,
) -> RResult<ROption<BatchTransformBox>, FfiError>
where
    T: BatchTransform,
    F: Fn(&[TransformStep]) -> Result<Option<T>> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(
        &format!("the batch pipeline compiler of plugin `{}`", state.name),
        || {
            let steps = steps_from_ffi(steps)?;
            Ok((state.make)(&steps)?
                .map(|t| BatchTransformFfi_TO::from_value(BatchTransformAdapter(t), TD_Opaque))
                .into())
        },
    )
}

/// A batch transform from any plugin (the host's view).
#[derive(Clone)]
pub struct BatchTransformFactory {
    pub(crate) ffi: BatchTransformFactoryFfi,
}

impl BatchTransformFactory {
    /// Registered name (the name of the per-image transform it mirrors).
    pub fn name(&self) -> &str {
        self.ffi.name.as_str()
    }
    /// Description.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// Makes the batch transform.
    pub fn create(&self, params: &Params) -> Result<BatchTransformHandle> {
        let json = params.to_json_string();
        let inner = (self.ffi.create)(self.ffi.ctx, RStr::from_str(&json))
            .into_result()
            .map_err(|e| {
                PluginError::from(e).context(format!("creating batch transform `{}`", self.name()))
            })?;
        Ok(BatchTransformHandle { inner })
    }
}

/// A batch transform made by a plugin (or a compiled batch pipeline).
pub struct BatchTransformHandle {
    inner: BatchTransformBox,
}

impl BatchTransformHandle {
    /// Applies it to `batch` with one seed per sample.
    pub fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let out = self
            .inner
            .apply(
                handle_from_tensor(batch.shallow_clone()),
                seeds.iter().copied().collect(),
            )
            .into_result()?;
        Ok(tensor_from_handle(out))
    }
}

/// A plugin's batch pipeline compiler (the host's view).
#[derive(Clone)]
pub struct BatchPipelineCompiler {
    pub(crate) ffi: BatchPipelineCompilerFfi,
}

impl BatchPipelineCompiler {
    /// What it fuses, in the plugin's words.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// One batch transform doing all of `steps`, or `None` when the plugin does not know
    /// every step.
    pub fn compile(&self, steps: &[TransformStep]) -> Result<Option<BatchTransformHandle>> {
        let out = (self.ffi.compile)(self.ffi.ctx, steps_to_ffi(steps))
            .into_result()
            .map_err(PluginError::from)?;
        Ok(out
            .into_option()
            .map(|inner| BatchTransformHandle { inner }))
    }
}

struct EncoderAdapter<E>(E);

impl<E: Encoder> EncoderFfi for EncoderAdapter<E> {
    fn forward(&mut self, input: TensorHandle, train: bool) -> RResult<TensorHandle, FfiError> {
        let input = tensor_from_handle(input);
        guard("Encoder::forward", || {
            Ok(handle_from_tensor(self.0.forward(&input, train)?))
        })
    }
    fn output_dim(&self) -> RResult<i64, FfiError> {
        guard("Encoder::output_dim", || Ok(self.0.output_dim()))
    }
    fn named_parameters(&self) -> RResult<RVec<NamedTensor>, FfiError> {
        guard("Encoder::named_parameters", || {
            Ok(named_to_ffi(self.0.named_parameters()))
        })
    }
    fn named_buffers(&self) -> RResult<RVec<NamedTensor>, FfiError> {
        guard("Encoder::named_buffers", || {
            Ok(named_to_ffi(self.0.named_buffers()))
        })
    }
}

struct AlgorithmAdapter<A>(A);

impl<A: SslAlgorithm> AlgorithmFfi for AlgorithmAdapter<A> {
    fn training_loss(&mut self, views: RVec<TensorHandle>) -> RResult<TensorHandle, FfiError> {
        let views: Vec<Tensor> = views.into_iter().map(tensor_from_handle).collect();
        guard("SslAlgorithm::training_loss", || {
            Ok(handle_from_tensor(self.0.training_loss(&views)?))
        })
    }
    fn validation_loss(&mut self, views: RVec<TensorHandle>) -> RResult<TensorHandle, FfiError> {
        let views: Vec<Tensor> = views.into_iter().map(tensor_from_handle).collect();
        guard("SslAlgorithm::validation_loss", || {
            Ok(handle_from_tensor(self.0.validation_loss(&views)?))
        })
    }
    fn parameters(&self) -> RResult<RVec<ParamFfi>, FfiError> {
        guard("SslAlgorithm::parameters", || {
            Ok(self
                .0
                .parameters()
                .into_iter()
                .map(|p| ParamFfi {
                    name: p.name.into(),
                    tensor: handle_from_tensor(p.tensor),
                    weight_decay: p.weight_decay,
                    lars_adaptation: p.lars_adaptation,
                    scheduled: p.scheduled,
                })
                .collect())
        })
    }
    fn begin_epoch(&mut self, epoch: u64, epochs: u64) -> RResult<(), FfiError> {
        guard("SslAlgorithm::begin_epoch", || {
            self.0.begin_epoch(epoch, epochs)
        })
    }
    fn after_optimizer_step(&mut self, step: u64, max_steps: u64) -> RResult<(), FfiError> {
        guard("SslAlgorithm::after_optimizer_step", || {
            self.0.after_optimizer_step(step, max_steps)
        })
    }
    fn embed(&mut self, images: TensorHandle, train: bool) -> RResult<TensorHandle, FfiError> {
        let images = tensor_from_handle(images);
        guard("SslAlgorithm::embed", || {
            Ok(handle_from_tensor(self.0.embed(&images, train)?))
        })
    }
    fn embedding_dim(&self) -> RResult<i64, FfiError> {
        guard("SslAlgorithm::embedding_dim", || Ok(self.0.embedding_dim()))
    }
    fn embedding_encoder_prefix(&self) -> RResult<RString, FfiError> {
        guard("SslAlgorithm::embedding_encoder_prefix", || {
            Ok(self.0.embedding_encoder_prefix().into())
        })
    }
    fn state(&self) -> RResult<RVec<NamedTensor>, FfiError> {
        guard("SslAlgorithm::state", || Ok(named_to_ffi(self.0.state())))
    }
    fn scalars(&self) -> RResult<RVec<NamedScalar>, FfiError> {
        guard("SslAlgorithm::scalars", || {
            Ok(self
                .0
                .scalars()?
                .into_iter()
                .map(|(name, value)| NamedScalar {
                    name: name.into(),
                    value,
                })
                .collect())
        })
    }
}

/// An encoder living behind the ABI (in a `.so` plugin or a built-in), usable as an
/// ordinary [`Encoder`]. Its output size and tensors are read once, when it is made.
pub struct ForeignEncoder {
    inner: EncoderBox,
    output_dim: i64,
    parameters: Vec<(String, Tensor)>,
    buffers: Vec<(String, Tensor)>,
}

impl ForeignEncoder {
    fn new(inner: EncoderBox) -> Result<Self> {
        let output_dim = inner.output_dim().into_result()?;
        let parameters = named_from_ffi(inner.named_parameters().into_result()?);
        let buffers = named_from_ffi(inner.named_buffers().into_result()?);
        Ok(ForeignEncoder {
            inner,
            output_dim,
            parameters,
            buffers,
        })
    }
}

fn shallow(list: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    list.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

impl Encoder for ForeignEncoder {
    fn forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let out = self
            .inner
            .forward(handle_from_tensor(images.shallow_clone()), train)
            .into_result()?;
        Ok(tensor_from_handle(out))
    }
    fn output_dim(&self) -> i64 {
        self.output_dim
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        shallow(&self.parameters)
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        shallow(&self.buffers)
    }
}

/// An encoder factory as an algorithm (or the host) sees it: makes encoders by name from any
/// plugin.
#[derive(Clone)]
pub struct EncoderFactory {
    pub(crate) ffi: EncoderFactoryFfi,
}

impl EncoderFactory {
    /// The encoder's registered name.
    pub fn name(&self) -> &str {
        self.ffi.name.as_str()
    }
    /// Its description.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// What its plugin declares about it (read without making an encoder).
    pub fn info(&self) -> EncoderInfo {
        EncoderInfo::from_ffi(&self.ffi.info)
    }
    /// Makes an encoder on `device`; it sees this process's [`Collectives::current`].
    pub fn create(&self, params: &Params, device: Device) -> Result<ForeignEncoder> {
        let json = params.to_json_string();
        let dev = device_name(device);
        let collectives = Collectives::current().to_ffi();
        let inner = (self.ffi.create)(
            self.ffi.ctx,
            RStr::from_str(&json),
            RStr::from_str(&dev),
            &collectives,
        )
        .into_result()
        .map_err(|e| PluginError::from(e).context(format!("creating encoder `{}`", self.name())))?;
        ForeignEncoder::new(inner)
    }
}

/// The encoder an algorithm is built around: a factory and its parameters.
pub struct EncoderSpec {
    /// The factory.
    pub factory: EncoderFactory,
    /// Its parameters.
    pub params: Params,
}

impl EncoderSpec {
    /// Makes one encoder (call it twice for an online and a target network).
    pub fn build(&self, device: Device) -> Result<ForeignEncoder> {
        self.factory.create(&self.params, device)
    }

    /// The process group the algorithm and its encoders run in (the host's handle, also
    /// [`Collectives::current`]): rank, world size, all-gather for negatives from every rank.
    pub fn collectives(&self) -> Collectives {
        Collectives::current()
    }
}

/// An SSL algorithm living behind the ABI, usable as an ordinary [`SslAlgorithm`]. Its
/// parameters, state and embedding size are read once, when it is made.
pub struct ForeignAlgorithm {
    inner: AlgorithmBox,
    parameters: Vec<TrainableParam>,
    state: Vec<(String, Tensor)>,
    embedding_dim: i64,
    prefix: String,
}

impl ForeignAlgorithm {
    fn new(inner: AlgorithmBox) -> Result<Self> {
        let parameters = inner
            .parameters()
            .into_result()?
            .into_iter()
            .map(|p| TrainableParam {
                name: p.name.into_string(),
                tensor: tensor_from_handle(p.tensor),
                weight_decay: p.weight_decay,
                lars_adaptation: p.lars_adaptation,
                scheduled: p.scheduled,
            })
            .collect();
        let state = named_from_ffi(inner.state().into_result()?);
        let embedding_dim = inner.embedding_dim().into_result()?;
        let prefix = inner
            .embedding_encoder_prefix()
            .into_result()?
            .into_string();
        Ok(ForeignAlgorithm {
            inner,
            parameters,
            state,
            embedding_dim,
            prefix,
        })
    }
}

fn views_to_ffi(views: &[Tensor]) -> RVec<TensorHandle> {
    views
        .iter()
        .map(|v| handle_from_tensor(v.shallow_clone()))
        .collect()
}

impl SslAlgorithm for ForeignAlgorithm {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        Ok(tensor_from_handle(
            self.inner
                .training_loss(views_to_ffi(views))
                .into_result()?,
        ))
    }
    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        Ok(tensor_from_handle(
            self.inner
                .validation_loss(views_to_ffi(views))
                .into_result()?,
        ))
    }
    fn parameters(&self) -> Vec<TrainableParam> {
        self.parameters
            .iter()
            .map(|p| TrainableParam {
                name: p.name.clone(),
                tensor: p.tensor.shallow_clone(),
                weight_decay: p.weight_decay,
                lars_adaptation: p.lars_adaptation,
                scheduled: p.scheduled,
            })
            .collect()
    }
    fn begin_epoch(&mut self, epoch: u64, epochs: u64) -> Result<()> {
        Ok(self.inner.begin_epoch(epoch, epochs).into_result()?)
    }
    fn after_optimizer_step(&mut self, step: u64, max_steps: u64) -> Result<()> {
        Ok(self
            .inner
            .after_optimizer_step(step, max_steps)
            .into_result()?)
    }
    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        Ok(tensor_from_handle(
            self.inner
                .embed(handle_from_tensor(images.shallow_clone()), train)
                .into_result()?,
        ))
    }
    fn embedding_dim(&self) -> i64 {
        self.embedding_dim
    }
    fn embedding_encoder_prefix(&self) -> String {
        self.prefix.clone()
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        shallow(&self.state)
    }
    fn scalars(&self) -> Result<Vec<(String, f64)>> {
        Ok(self
            .inner
            .scalars()
            .into_result()?
            .into_iter()
            .map(|s| (s.name.into_string(), s.value))
            .collect())
    }
}

/// An algorithm factory as the host sees it.
#[derive(Clone)]
pub struct AlgorithmFactory {
    pub(crate) ffi: AlgorithmFactoryFfi,
}

impl AlgorithmFactory {
    /// The algorithm's registered name.
    pub fn name(&self) -> &str {
        self.ffi.name.as_str()
    }
    /// Its description.
    pub fn description(&self) -> &str {
        self.ffi.description.as_str()
    }
    /// What its plugin declares about it (read without making an algorithm); the metric
    /// prefix is filled in.
    pub fn info(&self) -> AlgorithmInfo {
        AlgorithmInfo::from_ffi(&self.ffi.info)
    }
    /// Makes the algorithm around `encoder` on `device`; it sees this process's
    /// [`Collectives::current`].
    pub fn create(
        &self,
        params: &Params,
        encoder: &EncoderSpec,
        device: Device,
    ) -> Result<ForeignAlgorithm> {
        let json = params.to_json_string();
        let encoder_json = encoder.params.to_json_string();
        let dev = device_name(device);
        let collectives = Collectives::current().to_ffi();
        let inner = (self.ffi.create)(
            self.ffi.ctx,
            RStr::from_str(&json),
            &encoder.factory.ffi,
            RStr::from_str(&encoder_json),
            RStr::from_str(&dev),
            &collectives,
        )
        .into_result()
        .map_err(|e| {
            PluginError::from(e).context(format!("creating algorithm `{}`", self.name()))
        })?;
        ForeignAlgorithm::new(inner)
    }
}

extern "C" fn create_encoder<E, F>(
    ctx: FactoryCtx,
    params: RStr<'_>,
    device: RStr<'_>,
    collectives: &CollectivesFfi,
) -> RResult<EncoderBox, FfiError>
where
    E: Encoder,
    F: Fn(&Params, Device) -> Result<E> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(&format!("the factory of encoder `{}`", state.name), || {
        Collectives::adopt(collectives);
        let params = Params::from_json(params.as_str())?;
        let device = parse_device(device.as_str())?;
        let encoder = (state.make)(&params, device)?;
        Ok(EncoderFfi_TO::from_value(
            EncoderAdapter(encoder),
            TD_Opaque,
        ))
    })
}

extern "C" fn create_algorithm<A, F>(
    ctx: FactoryCtx,
    params: RStr<'_>,
    encoder: &EncoderFactoryFfi,
    encoder_params: RStr<'_>,
    device: RStr<'_>,
    collectives: &CollectivesFfi,
) -> RResult<AlgorithmBox, FfiError>
where
    A: SslAlgorithm,
    F: Fn(&Params, &EncoderSpec, Device) -> Result<A> + Send + Sync + 'static,
{
    // SAFETY: this shim is only ever paired with a ctx made by `leak_ctx::<F>`.
    let state = unsafe { ctx_state::<F>(ctx) };
    guard(
        &format!("the factory of algorithm `{}`", state.name),
        || {
            Collectives::adopt(collectives);
            let params = Params::from_json(params.as_str())?;
            let spec = EncoderSpec {
                factory: EncoderFactory {
                    ffi: encoder.clone(),
                },
                params: Params::from_json(encoder_params.as_str())?,
            };
            let device = parse_device(device.as_str())?;
            let algorithm = (state.make)(&params, &spec, device)?;
            Ok(AlgorithmFfi_TO::from_value(
                AlgorithmAdapter(algorithm),
                TD_Opaque,
            ))
        },
    )
}

impl Plugin {
    /// Offers an encoder called `name`, made by `make` from its parameters on a device.
    pub fn encoder<E, F>(mut self, name: &str, description: &str, make: F) -> Self
    where
        E: Encoder,
        F: Fn(&Params, Device) -> Result<E> + Send + Sync + 'static,
    {
        self.encoders.push(EncoderFactoryFfi {
            name: name.into(),
            description: description.into(),
            info: EncoderInfo::default().to_ffi(),
            ctx: leak_ctx(name, make),
            create: create_encoder::<E, F>,
        });
        self
    }

    /// Offers an SSL algorithm called `name`, made by `make` from its parameters and the
    /// encoder it is built around.
    pub fn algorithm<A, F>(mut self, name: &str, description: &str, make: F) -> Self
    where
        A: SslAlgorithm,
        F: Fn(&Params, &EncoderSpec, Device) -> Result<A> + Send + Sync + 'static,
    {
        let info = AlgorithmInfo::default().for_name(name);
        self.algorithms.push(AlgorithmFactoryFfi {
            name: name.into(),
            description: description.into(),
            info: info.to_ffi(),
            ctx: leak_ctx(name, make),
            create: create_algorithm::<A, F>,
        });
        self
    }

    /// Offers a batch transform (`augment_on = "device"`) called `name`: the batched form of
    /// the per-image transform of the same name, which configs list.
    pub fn batch_transform<T, F>(mut self, name: &str, description: &str, make: F) -> Self
    where
        T: BatchTransform,
        F: Fn(&Params) -> Result<T> + Send + Sync + 'static,
    {
        self.batch_transforms.push(BatchTransformFactoryFfi {
            name: name.into(),
            description: description.into(),
            ctx: leak_ctx(name, make),
            create: create_batch_transform::<T, F>,
        });
        self
    }

    /// Offers a batch pipeline compiler: as [`Plugin::pipeline_compiler`], for batches (e.g.
    /// one sampling grid for a chain of geometric steps). `Ok(None)` for a list it does not
    /// fully know; the host then chains the batch transforms step by step.
    pub fn batch_pipeline_compiler<T, F>(mut self, description: &str, make: F) -> Self
    where
        T: BatchTransform,
        F: Fn(&[TransformStep]) -> Result<Option<T>> + Send + Sync + 'static,
    {
        let name = self.plugin_name().to_string();
        self.batch_pipeline_compilers
            .push(BatchPipelineCompilerFfi {
                description: description.into(),
                ctx: leak_ctx(&name, make),
                compile: compile_batch_pipeline::<T, F>,
            });
        self
    }

    /// Declares what the host needs to know about the encoder added just before (its
    /// small-image parameter); without it, the encoder gets [`EncoderInfo::default()`]. A
    /// mistake (no encoder added yet, an empty parameter name) makes the plugin fail to load
    /// with an error naming it.
    ///
    /// ```ignore
    /// Plugin::new("my-encoders", env!("CARGO_PKG_VERSION"))
    ///     .encoder("mynet", "a small convnet", |p: &Params, device| MyNet::new(p, device))
    ///     // The host sets `small_stem` to the dataset's `small_images` unless the run gives it.
    ///     .encoder_info(EncoderInfo { small_image_param: Some("small_stem".into()) })
    /// ```
    pub fn encoder_info(mut self, info: EncoderInfo) -> Self {
        match (self.encoders.last_mut(), info.check()) {
            (None, _) => self.problems.push(
                "encoder_info() comes before any encoder(); call it right after the encoder() it describes"
                    .into(),
            ),
            (Some(last), Err(problem)) => {
                self.problems.push(format!("encoder `{}`: {problem}", last.name))
            }
            (Some(last), Ok(())) => last.info = info.to_ffi(),
        }
        self
    }

    /// Declares what the host needs to know about the algorithm added just before (preferred
    /// learning-rate schedule, metric prefix, learning-rate scaling); without it, the algorithm
    /// gets [`AlgorithmInfo::default()`]. An empty `metric_prefix` means the registered name,
    /// lower-cased. A mistake (no algorithm added yet, an empty schedule) makes the plugin fail
    /// to load with an error naming it.
    ///
    /// ```ignore
    /// Plugin::new("my-ssl", env!("CARGO_PKG_VERSION"))
    ///     .algorithm("VICReg", "variance-invariance-covariance", VicReg::new)
    ///     // Metrics `vicreg/...`; with `lr_schedule = "auto"`, a per-step cosine schedule.
    ///     .algorithm_info(AlgorithmInfo {
    ///         lr_schedule: "warmup_cosine_step".into(),
    ///         ..AlgorithmInfo::default()
    ///     })
    /// ```
    pub fn algorithm_info(mut self, info: AlgorithmInfo) -> Self {
        let Some(last) = self.algorithms.last_mut() else {
            self.problems.push(
                "algorithm_info() comes before any algorithm(); call it right after the algorithm() it describes"
                    .into(),
            );
            return self;
        };
        match info.check() {
            Ok(()) => last.info = info.for_name(last.name.as_str()).to_ffi(),
            Err(problem) => self
                .problems
                .push(format!("algorithm `{}`: {problem}", last.name)),
        }
        self
    }
}
