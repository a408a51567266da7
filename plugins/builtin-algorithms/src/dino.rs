//! DINO, "Emerging Properties in Self-Supervised Vision Transformers" (Caron et al., ICCV
//! 2021): self-distillation with no labels, written from the paper's formulas (Algorithm 1 and
//! §3.1, appendix on the head and the multi-crop schedule).
//!
//! - A student (encoder + DINO head) and a teacher of the same shape that follows it by
//!   momentum: `teacher = m · teacher + (1 − m) · student` over the parameters after every
//!   optimizer step, `m` rising from `momentum_teacher` (0.996) to 1 along a cosine over the
//!   run's steps. No gradient reaches the teacher. BatchNorm running statistics are not
//!   averaged: the teacher's evolve through its own (training-mode) forward passes.
//! - The head: `Linear(in, hidden) → GELU → Linear(hidden, hidden) → GELU →
//!   Linear(hidden, bottleneck)` (`hidden_dim` 2048, `bottleneck_dim` 256), L2-normalisation,
//!   then a weight-normalised `Linear(bottleneck, out_dim)` without bias (`out_dim` 65,536):
//!   `W = g · v / ‖v‖` row by row; with `norm_last_layer` (true) `g` stays 1 and only `v` is
//!   trained.
//! - Multi-crop: the views arrive in group order; the first two are the global views (one
//!   size), any further ones local views (any size). The teacher sees the two global views;
//!   the student sees all. Views of one size go through the encoder together (one batch, as the
//!   paper's multi-crop wrapper), so BatchNorm sees them as one batch.
//! - Loss: for every teacher view `i` and student view `j ≠ i`, the cross-entropy
//!   `−Σ softmax((t_i − c) / τ_t) · log_softmax(s_j / τ_s)`, averaged over the batch and over
//!   the pairs; `τ_s` = `student_temp` (0.1); `τ_t` rises linearly from `warmup_teacher_temp`
//!   (0.04) to `teacher_temp` (0.07) over the first `warmup_teacher_temp_epochs` (30) epochs,
//!   then stays. The centre `c` (`[1, out_dim]`, [`CENTER_STATE_NAME`] in
//!   [`state`](SslAlgorithm::state), so checkpointed) moves after every training step:
//!   `c ← μ c + (1 − μ) mean(teacher outputs)`, `μ` = `center_momentum` (0.9). On several
//!   processes (`torchrun`) the mean is over the global batch, as the paper's code: each rank's
//!   batch mean is all-reduced (average, no gradient), so every rank's centre stays the same.
//! - The last layer is frozen for the first `freeze_last_layer` (1) epochs: its weight enters
//!   the graph detached, so its gradient stays undefined and the host's optimizers skip it
//!   (weight decay included), as the paper's code drops that gradient.
//!
//! The epoch (temperature, freezing) comes from [`begin_epoch`](SslAlgorithm::begin_epoch),
//! which the host calls before every training epoch, also on resume. Before any call the
//! algorithm behaves as in epoch 0.
//!
//! Not done here: the paper's AdamW with a cosine weight-decay schedule (0.04 → 0.4) is not a
//! host optimizer; the configs use the host's Adam. The paper clips gradients at 3.0: the
//! named configs set `gradient_clip_val = 3.0` (the host's step path clips).
//!
//! Tensor names: `student.encoder.*`, `student.head.mlp.{0,2,4}.{weight,bias}` (PyTorch's
//! `nn.Sequential` indices, the GELUs between), `student.head.last_layer.weight_v`,
//! `student.head.last_layer.weight_g` (`[out_dim, 1]`, PyTorch's `weight_norm` names), the same
//! under `teacher.`, and [`CENTER_STATE_NAME`].

use crate::heads::{copy_by_name, l2_normalize, pair_by_name, prefixed, pytorch_linear};
use crate::reject_unknown_params;
use ssl_plugin_api::tch::{self, nn, Device, Kind, Tensor};
use ssl_plugin_api::{
    bail, Collectives, Encoder, EncoderSpec, Params, ReduceOp, Result, SslAlgorithm, TrainableParam,
};

/// Output size of the head when `out_dim` is absent (the paper's 65,536).
pub const DEFAULT_OUT_DIM: i64 = 65_536;
/// Hidden size of the head's MLP when `hidden_dim` is absent.
pub const DEFAULT_HIDDEN_DIM: i64 = 2048;
/// Bottleneck size of the head when `bottleneck_dim` is absent.
pub const DEFAULT_BOTTLENECK_DIM: i64 = 256;
/// Starting momentum of the teacher when `momentum_teacher` is absent.
pub const DEFAULT_MOMENTUM_TEACHER: f64 = 0.996;
/// Student temperature when `student_temp` is absent.
pub const DEFAULT_STUDENT_TEMP: f64 = 0.1;
/// Teacher temperature at epoch 0 when `warmup_teacher_temp` is absent.
pub const DEFAULT_WARMUP_TEACHER_TEMP: f64 = 0.04;
/// Teacher temperature after the warm-up when `teacher_temp` is absent.
pub const DEFAULT_TEACHER_TEMP: f64 = 0.07;
/// Epochs of teacher-temperature warm-up when `warmup_teacher_temp_epochs` is absent.
pub const DEFAULT_WARMUP_TEACHER_TEMP_EPOCHS: u64 = 30;
/// Momentum of the centre when `center_momentum` is absent.
pub const DEFAULT_CENTER_MOMENTUM: f64 = 0.9;
/// Epochs with a frozen last layer when `freeze_last_layer` is absent.
pub const DEFAULT_FREEZE_LAST_LAYER: u64 = 1;
/// Name, within [`Dino::state`](SslAlgorithm::state), of the centre `[1, out_dim]`.
pub const CENTER_STATE_NAME: &str = "dino.center";

/// The tunable parameters of DINO (the paper's values by default).
#[derive(Clone, Debug, PartialEq)]
struct DinoParams {
    out_dim: i64,
    hidden_dim: i64,
    bottleneck_dim: i64,
    norm_last_layer: bool,
    momentum_teacher: f64,
    student_temp: f64,
    warmup_teacher_temp: f64,
    teacher_temp: f64,
    warmup_teacher_temp_epochs: u64,
    center_momentum: f64,
    freeze_last_layer: u64,
}

impl DinoParams {
    const NAMES: [&'static str; 11] = [
        "out_dim",
        "hidden_dim",
        "bottleneck_dim",
        "norm_last_layer",
        "momentum_teacher",
        "student_temp",
        "warmup_teacher_temp",
        "teacher_temp",
        "warmup_teacher_temp_epochs",
        "center_momentum",
        "freeze_last_layer",
    ];

    fn from_params(params: &Params) -> Result<Self> {
        reject_unknown_params("DINO", params, &Self::NAMES)?;
        let size = |name: &str, default: i64| -> Result<i64> {
            let v: i64 = params.get_or(name, default)?;
            if v < 1 {
                bail!("DINO: `{name}` must be at least 1, got {v}");
            }
            Ok(v)
        };
        let unit = |name: &str, default: f64| -> Result<f64> {
            let v: f64 = params.get_or(name, default)?;
            if !(0.0..=1.0).contains(&v) {
                bail!("DINO: `{name}` must be in [0, 1], got {v}");
            }
            Ok(v)
        };
        let positive = |name: &str, default: f64| -> Result<f64> {
            let v: f64 = params.get_or(name, default)?;
            if !(v.is_finite() && v > 0.0) {
                bail!("DINO: `{name}` must be positive, got {v}");
            }
            Ok(v)
        };
        Ok(DinoParams {
            out_dim: size("out_dim", DEFAULT_OUT_DIM)?,
            hidden_dim: size("hidden_dim", DEFAULT_HIDDEN_DIM)?,
            bottleneck_dim: size("bottleneck_dim", DEFAULT_BOTTLENECK_DIM)?,
            norm_last_layer: params.get_or("norm_last_layer", true)?,
            momentum_teacher: unit("momentum_teacher", DEFAULT_MOMENTUM_TEACHER)?,
            student_temp: positive("student_temp", DEFAULT_STUDENT_TEMP)?,
            warmup_teacher_temp: positive("warmup_teacher_temp", DEFAULT_WARMUP_TEACHER_TEMP)?,
            teacher_temp: positive("teacher_temp", DEFAULT_TEACHER_TEMP)?,
            warmup_teacher_temp_epochs: params.get_or(
                "warmup_teacher_temp_epochs",
                DEFAULT_WARMUP_TEACHER_TEMP_EPOCHS,
            )?,
            center_momentum: unit("center_momentum", DEFAULT_CENTER_MOMENTUM)?,
            freeze_last_layer: params.get_or("freeze_last_layer", DEFAULT_FREEZE_LAST_LAYER)?,
        })
    }

    /// The teacher temperature of `epoch`: `linspace(warmup, final, warmup_epochs)[epoch]`
    /// during the warm-up, then `final`.
    fn teacher_temp_at(&self, epoch: u64) -> f64 {
        let warmup = self.warmup_teacher_temp_epochs;
        if epoch >= warmup {
            return self.teacher_temp;
        }
        if warmup <= 1 {
            return self.warmup_teacher_temp;
        }
        let t = epoch as f64 / (warmup - 1) as f64;
        self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * t
    }
}

/// The teacher momentum after optimizer step `step` (1-based) of `max_steps`: the cosine from
/// `base` (at the first step) towards 1, `1 − (1 − base) (1 + cos(π (step − 1) / max_steps)) / 2`.
pub fn teacher_momentum(base: f64, step: u64, max_steps: u64) -> f64 {
    if max_steps == 0 {
        return base;
    }
    let progress = (step.saturating_sub(1) as f64 / max_steps as f64).min(1.0);
    1.0 - (1.0 - base) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
}

/// DINO's projection head (see the module documentation).
pub struct DinoHead {
    mlp: Vec<nn::Linear>,
    /// `weight_v` of the weight-normalised last layer, `[out_dim, bottleneck]`.
    last_v: Tensor,
    /// `weight_g`, `[out_dim, 1]`; trainable unless `norm_last_layer`.
    last_g: Tensor,
    norm_last_layer: bool,
}

impl DinoHead {
    /// A freshly initialised head: the MLP's weights from N(0, 0.02²) truncated to [−2, 2],
    /// biases 0 (the paper's code); the last layer PyTorch's default `Linear` initialisation,
    /// `g` = 1.
    fn new(input_dim: i64, settings: &DinoParams, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let dims = [
            (input_dim, settings.hidden_dim),
            (settings.hidden_dim, settings.hidden_dim),
            (settings.hidden_dim, settings.bottleneck_dim),
        ];
        let mut mlp = Vec::with_capacity(dims.len());
        for (i, &(inp, out)) in dims.iter().enumerate() {
            let layer = nn::linear(
                vs.root() / (2 * i).to_string(),
                inp,
                out,
                nn::LinearConfig {
                    ws_init: nn::Init::Const(0.0),
                    bs_init: Some(nn::Init::Const(0.0)),
                    bias: true,
                },
            );
            tch::no_grad(|| -> Result<()> {
                let init = Tensor::f_randn([out, inp], (Kind::Float, device))?
                    .f_mul_scalar(0.02)?
                    .f_clamp(-2.0, 2.0)?;
                layer.ws.shallow_clone().f_copy_(&init)?;
                Ok(())
            })?;
            mlp.push(layer);
        }
        let last = pytorch_linear(
            vs.root() / "last",
            settings.bottleneck_dim,
            settings.out_dim,
            false,
        );
        let last_g = Tensor::f_ones([settings.out_dim, 1], (Kind::Float, device))?
            .set_requires_grad(!settings.norm_last_layer);
        Ok(DinoHead {
            mlp,
            last_v: last.ws,
            last_g,
            norm_last_layer: settings.norm_last_layer,
        })
    }

    /// `[N, in] → [N, out_dim]`; with `freeze_last_layer` the last layer's weight enters the
    /// graph detached (no gradient reaches `v` nor `g`).
    pub fn forward(&self, xs: &Tensor, freeze_last_layer: bool) -> Result<Tensor> {
        let mut out = xs.shallow_clone();
        for (i, layer) in self.mlp.iter().enumerate() {
            if i > 0 {
                out = out.f_gelu("none")?;
            }
            out = out.f_linear(&layer.ws, layer.bs.as_ref())?;
        }
        let out = l2_normalize(&out)?;
        let (v, g) = if freeze_last_layer {
            (self.last_v.f_detach()?, self.last_g.f_detach()?)
        } else {
            (self.last_v.shallow_clone(), self.last_g.shallow_clone())
        };
        // torch's weight_norm (dim 0): each row of v scaled to norm g, no epsilon.
        let norm = v.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?;
        let weight = v.f_mul(&g.f_div(&norm)?)?;
        Ok(out.f_linear(&weight, None::<&Tensor>)?)
    }

    /// Every tensor of the head, by PyTorch's names (`g` included, trainable or not).
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut list = Vec::new();
        for (i, layer) in self.mlp.iter().enumerate() {
            list.push((format!("mlp.{}.weight", 2 * i), layer.ws.shallow_clone()));
            if let Some(b) = &layer.bs {
                list.push((format!("mlp.{}.bias", 2 * i), b.shallow_clone()));
            }
        }
        list.push(("last_layer.weight_g".into(), self.last_g.shallow_clone()));
        list.push(("last_layer.weight_v".into(), self.last_v.shallow_clone()));
        list
    }

    /// The tensors an optimizer trains (`g` only without `norm_last_layer`).
    fn trainable(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
            .into_iter()
            .filter(|(n, _)| !(self.norm_last_layer && n == "last_layer.weight_g"))
            .collect()
    }
}

/// An encoder with the DINO head.
struct Net {
    encoder: Box<dyn Encoder>,
    head: DinoHead,
}

impl Net {
    /// `head(encoder(views))`, the views of one size through the encoder as one batch, the
    /// outputs in view order: `[views.len() · N, out_dim]`.
    fn forward(
        &mut self,
        views: &[Tensor],
        train: bool,
        freeze_last_layer: bool,
    ) -> Result<Tensor> {
        let mut features = Vec::new();
        let mut start = 0;
        while start < views.len() {
            let size = views[start].size();
            let mut end = start + 1;
            while end < views.len() && views[end].size() == size {
                end += 1;
            }
            let batch = Tensor::f_cat(&views[start..end], 0)?;
            features.push(self.encoder.forward(&batch, train)?);
            start = end;
        }
        let features = Tensor::f_cat(&features, 0)?;
        self.head.forward(&features, freeze_last_layer)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("head.", self.head.named_tensors()));
        list
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        prefixed("encoder.", self.encoder.named_buffers())
    }
}

/// DINO's loss for teacher outputs `[2 · N, K]` (the two global views, in order) and student
/// outputs `[V · N, K]` (all `V` views, the global ones first): the mean over pairs `(i, j)`,
/// `i ≠ j`, of `mean_n −Σ_k softmax((t_i − center) / τ_t) log_softmax(s_j / τ_s)`. The teacher
/// outputs are detached here.
pub fn dino_loss(
    teacher: &Tensor,
    student: &Tensor,
    center: &Tensor,
    teacher_temp: f64,
    student_temp: f64,
) -> Result<Tensor> {
    let (ts, ss) = (teacher.size(), student.size());
    if ts.len() != 2 || ss.len() != 2 || ts[1] != ss[1] || ts[0] % 2 != 0 || ts[0] == 0 {
        bail!("DINO's loss needs teacher outputs [2N, K] and student outputs [VN, K], got {ts:?} and {ss:?}");
    }
    let n = ts[0] / 2;
    if ss[0] % n != 0 || ss[0] / n < 2 {
        bail!("DINO's loss: student outputs {ss:?} are not at least 2 views of {n} images");
    }
    let views = ss[0] / n;
    let targets = teacher
        .f_detach()?
        .f_sub(center)?
        .f_div_scalar(teacher_temp)?
        .f_softmax(-1, Kind::Float)?;
    let log_p = student
        .f_div_scalar(student_temp)?
        .f_log_softmax(-1, Kind::Float)?;
    let mut total: Option<Tensor> = None;
    let mut terms = 0;
    for i in 0..2 {
        let q = targets.f_narrow(0, i * n, n)?;
        for j in 0..views {
            if j == i {
                continue;
            }
            let term = q
                .f_mul(&log_p.f_narrow(0, j * n, n)?)?
                .f_sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)?
                .f_mean(None::<Kind>)?
                .f_neg()?;
            total = Some(match total {
                Some(t) => t.f_add(&term)?,
                None => term,
            });
            terms += 1;
        }
    }
    let total = total.expect("at least one pair");
    Ok(total.f_div_scalar(terms as f64)?)
}

/// DINO: a student trained to match, across crops, the sharpened and centred outputs of a
/// momentum teacher.
pub struct Dino {
    student: Net,
    teacher: Net,
    /// (teacher, student) pairs of the momentum update (every head tensor, `g` included).
    momentum_pairs: Vec<(Tensor, Tensor)>,
    settings: DinoParams,
    /// `[1, out_dim]`, on the training device.
    center: Tensor,
    /// Mean teacher output of the last training batch (over every rank's), folded into the
    /// centre after the step.
    pending_center: Option<Tensor>,
    /// The process group whose teacher outputs the centre follows.
    collectives: Collectives,
    epoch: u64,
    /// Momentum of the last teacher update (for logging).
    last_momentum: f64,
}

impl Dino {
    /// The registered factory: builds the student and the teacher encoder from `spec`.
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        DinoParams::from_params(params)?;
        let student = spec.build(device)?;
        let teacher = spec.build(device)?;
        Self::from_encoders(params, Box::new(student), Box::new(teacher), device)
    }

    /// DINO around two encoders of one architecture: the teacher starts as a copy of the
    /// student (parameters and buffers); the centre starts at 0 and follows the teacher
    /// outputs of every rank of [`Collectives::current`].
    pub fn from_encoders(
        params: &Params,
        student: Box<dyn Encoder>,
        teacher: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        let settings = DinoParams::from_params(params)?;
        let dim = student.output_dim();
        if teacher.output_dim() != dim {
            bail!(
                "DINO: the student and teacher encoders differ in output size ({dim} versus {})",
                teacher.output_dim()
            );
        }
        let student = Net {
            encoder: student,
            head: DinoHead::new(dim, &settings, device)?,
        };
        let teacher = Net {
            encoder: teacher,
            head: DinoHead::new(dim, &settings, device)?,
        };
        copy_by_name(&teacher.named_parameters(), &student.named_parameters())?;
        copy_by_name(&teacher.named_buffers(), &student.named_buffers())?;
        let momentum_pairs =
            pair_by_name(&teacher.named_parameters(), &student.named_parameters())?;
        let center = Tensor::f_zeros([1, settings.out_dim], (Kind::Float, device))?;
        let last_momentum = settings.momentum_teacher;
        Ok(Dino {
            student,
            teacher,
            momentum_pairs,
            settings,
            center,
            pending_center: None,
            collectives: Collectives::current(),
            epoch: 0,
            last_momentum,
        })
    }

    /// The teacher temperature of the current epoch.
    pub fn teacher_temp(&self) -> f64 {
        self.settings.teacher_temp_at(self.epoch)
    }

    /// Whether the last layer is frozen in the current epoch.
    pub fn last_layer_frozen(&self) -> bool {
        self.epoch < self.settings.freeze_last_layer
    }

    /// The centre `[1, out_dim]` (shares storage).
    pub fn center(&self) -> Tensor {
        self.center.shallow_clone()
    }

    fn check_views(views: &[Tensor]) -> Result<()> {
        if views.len() < 2 {
            bail!(
                "DINO needs at least 2 views per batch (2 global, then any local ones), got {}",
                views.len()
            );
        }
        if views[0].size() != views[1].size() {
            bail!(
                "DINO: the first two views are the global ones and must have one shape, got {:?} and {:?}",
                views[0].size(),
                views[1].size()
            );
        }
        let n = views[0].size().first().copied();
        if let Some(v) = views.iter().find(|v| v.size().first().copied() != n) {
            bail!(
                "DINO: every view must hold the same number of images, got shapes {:?} and {:?}",
                views[0].size(),
                v.size()
            );
        }
        Ok(())
    }

    /// The loss; in training, also keeps the teacher's batch mean for the centre.
    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        Self::check_views(views)?;
        let teacher = &mut self.teacher;
        let t = tch::no_grad(|| teacher.forward(&views[..2], train, false))?.f_detach()?;
        let s = self
            .student
            .forward(views, train, train && self.last_layer_frozen())?;
        let loss = dino_loss(
            &t,
            &s,
            &self.center,
            self.teacher_temp(),
            self.settings.student_temp,
        )?;
        if train {
            let batch_mean = t.f_mean_dim([0i64].as_slice(), true, Kind::Float)?;
            // The mean over every rank's batch (the identity on one process).
            let global_mean = self
                .collectives
                .all_reduce(&batch_mean, ReduceOp::Average)?;
            self.pending_center = Some(global_mean);
        }
        Ok(loss)
    }
}

impl SslAlgorithm for Dino {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    /// The loss in evaluation mode; neither the centre nor the teacher changes.
    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// The student (encoder and head; the last layer's `g` only without `norm_last_layer`).
    fn parameters(&self) -> Vec<TrainableParam> {
        let mut list = prefixed("student.encoder.", self.student.encoder.named_parameters());
        list.extend(prefixed("student.head.", self.student.head.trainable()));
        list.into_iter()
            .map(|(name, tensor)| TrainableParam::with_default_hints(name, tensor))
            .collect()
    }

    /// Sets the epoch: the teacher temperature and whether the last layer is frozen.
    fn begin_epoch(&mut self, epoch: u64, _epochs: u64) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }

    /// The momentum update of the teacher (cosine schedule over the run's steps), then the
    /// centre update with the step's teacher outputs.
    fn after_optimizer_step(&mut self, step: u64, max_steps: u64) -> Result<()> {
        let m = teacher_momentum(self.settings.momentum_teacher, step, max_steps);
        self.last_momentum = m;
        tch::no_grad(|| -> Result<()> {
            for (teacher, student) in &mut self.momentum_pairs {
                let mixed = teacher
                    .f_mul_scalar(m)?
                    .f_add(&student.f_mul_scalar(1.0 - m)?)?;
                teacher.f_copy_(&mixed)?;
            }
            if let Some(batch_center) = self.pending_center.take() {
                let mu = self.settings.center_momentum;
                let mixed = self
                    .center
                    .f_mul_scalar(mu)?
                    .f_add(&batch_center.f_mul_scalar(1.0 - mu)?)?;
                self.center.f_copy_(&mixed)?;
            }
            Ok(())
        })
    }

    /// The teacher encoder's features (the network the paper evaluates; no gradients).
    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        tch::no_grad(|| self.teacher.encoder.forward(images, train))
    }

    fn embedding_dim(&self) -> i64 {
        self.teacher.encoder.output_dim()
    }

    fn embedding_encoder_prefix(&self) -> String {
        "teacher.encoder.".into()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("student.", self.student.named_parameters());
        list.extend(prefixed("student.", self.student.named_buffers()));
        list.extend(prefixed("teacher.", self.teacher.named_parameters()));
        list.extend(prefixed("teacher.", self.teacher.named_buffers()));
        list.push((CENTER_STATE_NAME.into(), self.center.shallow_clone()));
        list
    }

    fn scalars(&self) -> Result<Vec<(String, f64)>> {
        Ok(vec![
            ("dino/teacher_temp".into(), self.teacher_temp()),
            ("dino/teacher_momentum".into(), self.last_momentum),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_paper() {
        let p = DinoParams::from_params(
            &Params::from_json(r#"{"warmup_teacher_temp_epochs": 4}"#).unwrap(),
        )
        .unwrap();
        assert!((p.teacher_temp_at(0) - 0.04).abs() < 1e-12);
        assert!((p.teacher_temp_at(3) - 0.07).abs() < 1e-12);
        assert!((p.teacher_temp_at(1) - 0.05).abs() < 1e-12);
        assert!((p.teacher_temp_at(100) - 0.07).abs() < 1e-12);
        assert!((teacher_momentum(0.996, 1, 100) - 0.996).abs() < 1e-12);
        assert!((teacher_momentum(0.996, 51, 100) - 0.998).abs() < 1e-12);
        assert!(teacher_momentum(0.996, 100, 100) > 0.99999);
    }

    #[test]
    fn loss_of_uniform_outputs_is_log_k() {
        let t = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let s = Tensor::zeros([8, 8], (Kind::Float, Device::Cpu));
        let c = Tensor::zeros([1, 8], (Kind::Float, Device::Cpu));
        let l = dino_loss(&t, &s, &c, 0.04, 0.1).unwrap().double_value(&[]);
        assert!((l - 8f64.ln()).abs() < 1e-6, "{l}");
        // Bad shapes are errors.
        assert!(dino_loss(&t, &s.narrow(1, 0, 4), &c, 0.04, 0.1).is_err());
    }

    #[test]
    fn params_are_checked_by_name() {
        let bad = |json: &str| {
            DinoParams::from_params(&Params::from_json(json).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"out_dim": 0}"#).contains("`out_dim`"));
        assert!(bad(r#"{"momentum_teacher": 1.5}"#).contains("`momentum_teacher`"));
        assert!(bad(r#"{"teacher_temp": 0}"#).contains("`teacher_temp`"));
        assert!(bad(r#"{"center_momentum": -1}"#).contains("`center_momentum`"));
        assert!(bad(r#"{"tau": 1}"#).contains("`tau`"));
        let p = DinoParams::from_params(&Params::default()).unwrap();
        assert_eq!(p.out_dim, DEFAULT_OUT_DIM);
        assert!(p.norm_last_layer);
        assert_eq!(p.freeze_last_layer, 1);
    }
}
