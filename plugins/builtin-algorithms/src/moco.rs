//! MoCo v2, "Improved Baselines with Momentum Contrastive Learning" (Chen, Fan, Girshick and
//! He, 2020), on top of MoCo, "Momentum Contrast for Unsupervised Visual Representation
//! Learning" (He et al., CVPR 2020), written from the papers' formulas (Algorithm 1 of MoCo).
//!
//! - A query network (encoder + MLP head `in → 2048 → ReLU → 128`, parameter `head_dims`) and
//!   a key network of the same shape that follows it by momentum:
//!   `key = m · key + (1 − m) · query` over the parameters, `m` = `momentum` (0.999; the
//!   CIFAR-size configs use 0.99). BatchNorm running statistics are never averaged: the key
//!   network's evolve through its own forward passes (training mode, batch statistics).
//! - A queue of `queue_size` (65,536) L2-normalised keys of past batches, the negatives.
//! - Loss: InfoNCE, the cross-entropy of `[q·k⁺, q·queue] / T` with the positive at index 0,
//!   `T` = `temperature` (0.2), on L2-normalised queries and keys; no gradient reaches the keys
//!   nor the queue. Query = view 1, key = view 2. With `symmetric = true` (a common variant,
//!   not MoCo v2's) the loss is `½ (L(q1, k2) + L(q2, k1))` and both key batches are queued.
//!
//! Order within a training step, as Algorithm 1: keys from the current key network, loss,
//! backward, optimizer step of the query network, then — in
//! [`after_optimizer_step`](SslAlgorithm::after_optimizer_step) — the momentum update and the
//! enqueueing of this step's keys. The official code moves the key network at the start of
//! each forward instead; that is the same sequence of key networks (the first update there is
//! a no-op on identical networks), except that here the key network also takes the last step's
//! update and a validation forward never moves it. The queue is a ring: keys overwrite rows
//! `ptr, ptr + 1, …` (mod `queue_size`), so a batch that does not divide the queue wraps around
//! (the official code requires `queue_size % batch == 0`; for such batches both agree).
//!
//! **Several processes** (`torchrun`): as the official code, the keys of every rank enter the
//! queue: each step's keys are all-gathered (no gradient) in rank order before they are queued,
//! so every rank holds the same queue and the pointer advances by the global batch
//! (`world_size × B` keys, `× 2` with `symmetric`). There, as the official code,
//! `queue_size` must be a multiple of that global number of keys; it is only known at the first
//! training step, which checks it (an error naming `queue_size`). One process keeps the ring
//! above, for any batch.
//!
//! Not done here: shuffling BatchNorm across GPUs (the paper's "shuffle BN", which hides the
//! intra-batch statistics from the key encoder); the encoders use the host's BatchNorm (local,
//! or synchronised when the run asks for it).
//!
//! Tensor names: `query.encoder.*`, `query.head.{0,2,…}.{weight,bias}` (PyTorch's
//! `nn.Sequential` indices, the ReLUs between), `key.encoder.*`, `key.head.*`, and
//! [`QUEUE_STATE_NAME`] (`[queue_size, dim]` float) and [`QUEUE_PTR_STATE_NAME`] (0-dim int64,
//! the next row to write): all in [`state`](SslAlgorithm::state), so checkpoints and an exact
//! resume carry the queue.

use crate::heads::{copy_by_name, l2_normalize, pair_by_name, prefixed, pytorch_linear};
use crate::{reject_unknown_params, two_views};
use ssl_plugin_api::tch::{self, nn, Device, Kind, Tensor};
use ssl_plugin_api::{
    bail, Collectives, Encoder, EncoderSpec, Params, Result, SslAlgorithm, TrainableParam,
};

/// Momentum of the key network when `momentum` is absent (MoCo's ImageNet value).
pub const DEFAULT_MOMENTUM: f64 = 0.999;
/// Number of queued negatives when `queue_size` is absent (MoCo's ImageNet value).
pub const DEFAULT_QUEUE_SIZE: i64 = 65_536;
/// Temperature of the InfoNCE loss when `temperature` is absent (MoCo v2's 0.2).
pub const DEFAULT_TEMPERATURE: f64 = 0.2;
/// Sizes of the MLP head's layers after the encoder when `head_dims` is absent.
pub const DEFAULT_HEAD_DIMS: [i64; 2] = [2048, 128];
/// Name, within [`Moco::state`](SslAlgorithm::state), of the queue `[queue_size, dim]`.
pub const QUEUE_STATE_NAME: &str = "moco.queue";
/// Name, within [`Moco::state`](SslAlgorithm::state), of the queue pointer (0-dim int64).
pub const QUEUE_PTR_STATE_NAME: &str = "moco.queue_ptr";

/// The tunable parameters of MoCo v2 (the paper's values by default).
#[derive(Clone, Debug, PartialEq)]
struct MocoParams {
    momentum: f64,
    queue_size: i64,
    temperature: f64,
    head_dims: Vec<i64>,
    symmetric: bool,
}

impl MocoParams {
    const NAMES: [&'static str; 5] = [
        "momentum",
        "queue_size",
        "temperature",
        "head_dims",
        "symmetric",
    ];

    fn from_params(params: &Params) -> Result<Self> {
        reject_unknown_params("MoCo", params, &Self::NAMES)?;
        let momentum: f64 = params.get_or("momentum", DEFAULT_MOMENTUM)?;
        if !(0.0..=1.0).contains(&momentum) {
            bail!("MoCo: `momentum` must be in [0, 1], got {momentum}");
        }
        let queue_size: i64 = params.get_or("queue_size", DEFAULT_QUEUE_SIZE)?;
        if queue_size < 1 {
            bail!("MoCo: `queue_size` must be at least 1, got {queue_size}");
        }
        let temperature: f64 = params.get_or("temperature", DEFAULT_TEMPERATURE)?;
        if !(temperature.is_finite() && temperature > 0.0) {
            bail!("MoCo: `temperature` must be positive, got {temperature}");
        }
        let head_dims: Vec<i64> = params.get_or("head_dims", DEFAULT_HEAD_DIMS.to_vec())?;
        if head_dims.is_empty() || head_dims.iter().any(|&d| d < 1) {
            bail!(
                "MoCo: `head_dims` must be a non-empty list of positive sizes, got {head_dims:?}"
            );
        }
        Ok(MocoParams {
            momentum,
            queue_size,
            temperature,
            head_dims,
            symmetric: params.get_or("symmetric", false)?,
        })
    }
}

/// MoCo's MLP head: `Linear → ReLU → Linear → …` (biases on, no BatchNorm, no ReLU after the
/// last layer), with PyTorch's initialisation.
struct Head {
    layers: Vec<nn::Linear>,
}

impl Head {
    fn new(input_dim: i64, dims: &[i64], device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let mut layers = Vec::with_capacity(dims.len());
        let mut input = input_dim;
        for (i, &dim) in dims.iter().enumerate() {
            layers.push(pytorch_linear(
                vs.root() / (2 * i).to_string(),
                input,
                dim,
                true,
            ));
            input = dim;
        }
        Head { layers }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut out = xs.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                out = out.f_relu()?;
            }
            out = out.f_linear(&layer.ws, layer.bs.as_ref())?;
        }
        Ok(out)
    }

    fn output_dim(&self) -> i64 {
        self.layers.last().map_or(0, |l| l.ws.size()[0])
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            list.push((format!("{}.weight", 2 * i), layer.ws.shallow_clone()));
            if let Some(b) = &layer.bs {
                list.push((format!("{}.bias", 2 * i), b.shallow_clone()));
            }
        }
        list
    }
}

/// An encoder with the MLP head.
struct Arm {
    encoder: Box<dyn Encoder>,
    head: Head,
}

impl Arm {
    /// `normalize(head(encoder(x)))`.
    fn embed_normalized(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?;
        l2_normalize(&self.head.forward(&features)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("head.", self.head.named_parameters()));
        list
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        prefixed("encoder.", self.encoder.named_buffers())
    }
}

/// InfoNCE of MoCo: `mean_i −log softmax([q_i·k_i, q_i·queue_1, …, q_i·queue_K] / T)[0]`, for
/// unit rows `q`, `k` (`[N, d]`) and a queue `[K, d]` of unit rows. `k` and `queue` should carry
/// no gradient (MoCo's stop-gradient); this function does not detach them.
pub fn info_nce_loss(q: &Tensor, k: &Tensor, queue: &Tensor, temperature: f64) -> Result<Tensor> {
    if q.size() != k.size() || q.dim() != 2 || queue.dim() != 2 || queue.size()[1] != q.size()[1] {
        bail!(
            "MoCo's InfoNCE needs queries and keys [N, d] of one shape and a queue [K, d], got \
             {:?}, {:?} and {:?}",
            q.size(),
            k.size(),
            queue.size()
        );
    }
    let positive = q
        .f_mul(k)?
        .f_sum_dim_intlist([1i64].as_slice(), true, None::<Kind>)?;
    let negatives = q.f_mm(&queue.f_tr()?.f_to_kind(q.kind())?)?;
    let logits = Tensor::f_cat(&[&positive, &negatives], 1)?.f_div_scalar(temperature)?;
    // Cross-entropy with label 0 for every row.
    let log_p = logits.f_log_softmax(1, Kind::Float)?;
    Ok(log_p.f_select(1, 0)?.f_mean(None::<Kind>)?.f_neg()?)
}

/// MoCo v2: a query network trained to pick, by InfoNCE, the momentum key of its own image among
/// a queue of keys of earlier batches.
pub struct Moco {
    query: Arm,
    key: Arm,
    /// (key, query) parameter pairs of the momentum update.
    momentum_pairs: Vec<(Tensor, Tensor)>,
    momentum: f64,
    temperature: f64,
    symmetric: bool,
    /// `[queue_size, dim]`, unit rows, on the training device.
    queue: Tensor,
    /// The next row of `queue` to write: a 0-dim int64 CPU tensor, restored in place.
    queue_ptr: Tensor,
    /// Keys of the last training batch (every rank's), queued by `after_optimizer_step`.
    pending_keys: Option<Tensor>,
    /// The process group whose keys enter the queue.
    collectives: Collectives,
    /// Whether the number of keys per step has been checked against `queue_size` (first
    /// training step).
    checked_keys_per_step: bool,
}

impl Moco {
    /// The registered factory: builds the query and the key encoder from `spec`.
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        MocoParams::from_params(params)?;
        let query = spec.build(device)?;
        let key = spec.build(device)?;
        Self::from_encoders(params, Box::new(query), Box::new(key), device)
    }

    /// MoCo around two encoders of the same architecture: the key network starts as a copy of
    /// the query network (parameters and buffers). The queue starts as random unit vectors
    /// drawn from libtorch's global generator (which the host seeds before building the model,
    /// alike on every rank). The keys of every rank of [`Collectives::current`] enter the queue.
    pub fn from_encoders(
        params: &Params,
        query: Box<dyn Encoder>,
        key: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        let settings = MocoParams::from_params(params)?;
        let dim = query.output_dim();
        if key.output_dim() != dim {
            bail!(
                "MoCo: the query and key encoders differ in output size ({dim} versus {})",
                key.output_dim()
            );
        }
        let query = Arm {
            encoder: query,
            head: Head::new(dim, &settings.head_dims, device),
        };
        let key = Arm {
            encoder: key,
            head: Head::new(dim, &settings.head_dims, device),
        };
        copy_by_name(&key.named_parameters(), &query.named_parameters())?;
        copy_by_name(&key.named_buffers(), &query.named_buffers())?;
        let momentum_pairs = pair_by_name(&key.named_parameters(), &query.named_parameters())?;
        let out_dim = query.head.output_dim();
        let queue = tch::no_grad(|| -> Result<Tensor> {
            let random = Tensor::f_randn([settings.queue_size, out_dim], (Kind::Float, device))?;
            l2_normalize(&random)
        })?;
        Ok(Moco {
            query,
            key,
            momentum_pairs,
            momentum: settings.momentum,
            temperature: settings.temperature,
            symmetric: settings.symmetric,
            queue,
            queue_ptr: Tensor::f_zeros([0i64; 0].as_slice(), (Kind::Int64, Device::Cpu))?,
            pending_keys: None,
            collectives: Collectives::current(),
            checked_keys_per_step: false,
        })
    }

    /// The loss; in training, also keeps the keys for the queue.
    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (v1, v2) = two_views("MoCo", views)?;
        let q1 = self.query.embed_normalized(v1, train)?;
        let key = &mut self.key;
        let k2 = tch::no_grad(|| key.embed_normalized(v2, train))?.f_detach()?;
        let queue = self.queue.f_detach()?;
        let (loss, keys) =
            if self.symmetric {
                let q2 = self.query.embed_normalized(v2, train)?;
                let key = &mut self.key;
                let k1 = tch::no_grad(|| key.embed_normalized(v1, train))?.f_detach()?;
                let sum = info_nce_loss(&q1, &k2, &queue, self.temperature)?
                    .f_add(&info_nce_loss(&q2, &k1, &queue, self.temperature)?)?;
                (sum.f_mul_scalar(0.5)?, Tensor::f_cat(&[&k2, &k1], 0)?)
            } else {
                (info_nce_loss(&q1, &k2, &queue, self.temperature)?, k2)
            };
        if train {
            // Every rank's keys, in rank order (the identity on one process).
            let keys = self.collectives.all_gather(&keys)?;
            self.check_keys_per_step(keys.size()[0])?;
            self.pending_keys = Some(keys);
        }
        Ok(loss)
    }

    /// The queue must hold a step's keys; on several processes, at the first training step, it
    /// must also be a multiple of the global number of keys per step (the official code's rule).
    fn check_keys_per_step(&mut self, rows: i64) -> Result<()> {
        let size = self.queue.size()[0];
        let world = self.collectives.world_size();
        let keys_per_step = || {
            let symmetric = if self.symmetric {
                " × 2 views (`symmetric`)"
            } else {
                ""
            };
            if world > 1 {
                format!(
                    "{rows}: {world} processes × the batch of {}{symmetric}",
                    rows / world as i64 / if self.symmetric { 2 } else { 1 }
                )
            } else {
                format!("{rows}: the batch size{symmetric}")
            }
        };
        if rows > size {
            bail!(
                "MoCo: `queue_size` ({size}) must be at least the number of keys per step ({})",
                keys_per_step()
            );
        }
        if world > 1 && !self.checked_keys_per_step && size % rows != 0 {
            bail!(
                "MoCo: on {world} processes, parameter `queue_size` ({size}) must be a multiple of \
                 the number of keys queued per step ({}); for example {}",
                keys_per_step(),
                (size / rows).max(1) * rows
            );
        }
        self.checked_keys_per_step = true;
        Ok(())
    }

    /// Writes `keys` into the queue at the pointer (wrapping around) and moves the pointer.
    fn enqueue(&mut self, keys: &Tensor) -> Result<()> {
        let size = self.queue.size()[0];
        let rows = keys.size()[0];
        let ptr = self.queue_ptr.f_int64_value(&[])?;
        let device = self.queue.device();
        let index = Tensor::f_arange(rows, (Kind::Int64, device))?
            .f_add_scalar(ptr)?
            .f_remainder(size)?;
        tch::no_grad(|| -> Result<()> {
            let keys = keys.f_to_kind(self.queue.kind())?;
            let _ = self.queue.f_index_copy_(0, &index, &keys)?;
            let _ = self.queue_ptr.f_fill_((ptr + rows) % size)?;
            Ok(())
        })
    }

    /// The queue `[queue_size, dim]` (shares storage).
    pub fn queue(&self) -> Tensor {
        self.queue.shallow_clone()
    }
}

impl SslAlgorithm for Moco {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    /// The loss in evaluation mode; neither the queue nor the key network changes.
    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// The query network (encoder and head); the key network is never optimised.
    fn parameters(&self) -> Vec<TrainableParam> {
        prefixed("query.", self.query.named_parameters())
            .into_iter()
            .map(|(name, tensor)| TrainableParam::with_default_hints(name, tensor))
            .collect()
    }

    /// The momentum update of the key network, then the keys of the step just taken go into
    /// the queue.
    fn after_optimizer_step(&mut self, _step: u64, _max_steps: u64) -> Result<()> {
        let m = self.momentum;
        tch::no_grad(|| -> Result<()> {
            for (key, query) in &mut self.momentum_pairs {
                let mixed = key.f_mul_scalar(m)?.f_add(&query.f_mul_scalar(1.0 - m)?)?;
                key.f_copy_(&mixed)?;
            }
            Ok(())
        })?;
        if let Some(keys) = self.pending_keys.take() {
            self.enqueue(&keys)?;
        }
        Ok(())
    }

    /// The query encoder's features (no gradients).
    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        tch::no_grad(|| self.query.encoder.forward(images, train))
    }

    fn embedding_dim(&self) -> i64 {
        self.query.encoder.output_dim()
    }

    fn embedding_encoder_prefix(&self) -> String {
        "query.encoder.".into()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("query.", self.query.named_parameters());
        list.extend(prefixed("query.", self.query.named_buffers()));
        list.extend(prefixed("key.", self.key.named_parameters()));
        list.extend(prefixed("key.", self.key.named_buffers()));
        list.push((QUEUE_STATE_NAME.into(), self.queue.shallow_clone()));
        list.push((QUEUE_PTR_STATE_NAME.into(), self.queue_ptr.shallow_clone()));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_nce_of_a_perfect_match_is_small() {
        let q = l2_normalize(&Tensor::randn([4, 8], (Kind::Float, Device::Cpu))).unwrap();
        let queue = l2_normalize(&Tensor::randn([16, 8], (Kind::Float, Device::Cpu))).unwrap();
        let same = info_nce_loss(&q, &q, &queue, 0.05)
            .unwrap()
            .double_value(&[]);
        let other = info_nce_loss(&q, &q.flip([0]), &queue, 0.05)
            .unwrap()
            .double_value(&[]);
        assert!(same < other, "{same} vs {other}");
        assert!(same >= 0.0);
        // Queue of K: a uniform guess costs log(K + 1).
        let zeros = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let queue0 = Tensor::zeros([16, 8], (Kind::Float, Device::Cpu));
        let uniform = info_nce_loss(&zeros, &zeros, &queue0, 0.2)
            .unwrap()
            .double_value(&[]);
        assert!((uniform - 17f64.ln()).abs() < 1e-6, "{uniform}");
    }

    #[test]
    fn params_are_checked_by_name() {
        let bad = |json: &str| {
            MocoParams::from_params(&Params::from_json(json).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"queue_size": 0}"#).contains("`queue_size`"));
        assert!(bad(r#"{"momentum": 1.5}"#).contains("`momentum`"));
        assert!(bad(r#"{"temperature": 0}"#).contains("`temperature`"));
        assert!(bad(r#"{"head_dims": []}"#).contains("`head_dims`"));
        assert!(bad(r#"{"tau": 1}"#).contains("`tau`"));
        let p = MocoParams::from_params(&Params::default()).unwrap();
        assert_eq!(p.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(p.head_dims, DEFAULT_HEAD_DIMS);
        assert!(!p.symmetric);
    }
}
