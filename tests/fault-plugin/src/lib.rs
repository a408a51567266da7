//! A test fixture, not an algorithm to train with: `Faulty`, an SSL algorithm plugin whose
//! faults the end-to-end tests switch on to see how the host reacts to a non-finite loss, a
//! parameter without gradient on one rank, or one rank calling a collective with another shape.
//!
//! Model: the encoder of the run (any [`EncoderSpec`]), a linear projection to `dim` (32)
//! features, and one extra trainable scalar `aux`. Loss of two views with projections `p1`,
//! `p2` (`[B, dim]`):
//!
//! `L = −mean_i cos(p1_i, p2_i) + aux · mean_i |p1_i − p2_i|²`
//!
//! so `aux` (initialised to 0) has a data-dependent gradient. Parameters
//! (`algorithm_params.*`), every fault off by default:
//!
//! - `nonfinite_at_step = N`: the N-th call of `training_loss` (1-based, counted by each
//!   process since it started) returns the loss times NaN, so the loss and every gradient are
//!   NaN, on every rank;
//! - `unused_on_rank = R`: on rank R the loss leaves the `aux` term out, so `aux` is not in its
//!   graph and its gradient stays undefined there only;
//! - `one_process_as_world = W` (1): in a one-process run, the batch stands for the global batch
//!   of W processes (rows `[r·B/W, (r+1)·B/W)` for rank r) and `unused_on_rank = R` leaves out
//!   the `aux` term of rank R's rows only, so the one-process run with the global batch has the
//!   averaged gradients a W-process run must have;
//! - `mismatch_on_rank = R`: every training step all-gathers the projections `p1` (with
//!   gradient, the result enters the loss with weight 0), and rank R gathers one row fewer,
//!   a collective whose shapes differ between ranks.
//!
//! Built by `cargo build --workspace` (a workspace member) into
//! `target/debug/libfault_plugin.so`; used as `ssl-host --plugin target/debug/libfault_plugin.so
//! --ssl_training_type=Faulty ...`.

use ssl_plugin_api::tch::{self, nn, Device, Kind, Tensor};
use ssl_plugin_api::{
    bail, Collectives, Encoder, EncoderSpec, Params, Plugin, Result, SslAlgorithm, TrainableParam,
};

const PARAMS: &[&str] = &[
    "dim",
    "nonfinite_at_step",
    "unused_on_rank",
    "one_process_as_world",
    "mismatch_on_rank",
];

/// The faults to inject, read from `algorithm_params`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Faults {
    nonfinite_at_step: Option<u64>,
    unused_on_rank: Option<usize>,
    one_process_as_world: usize,
    mismatch_on_rank: Option<usize>,
}

impl Faults {
    fn from_params(params: &Params) -> Result<(i64, Faults)> {
        let unknown: Vec<String> = params
            .as_json()
            .as_object()
            .map(|table| {
                table
                    .keys()
                    .filter(|k| !PARAMS.contains(&k.as_str()))
                    .map(|k| format!("`{k}`"))
                    .collect()
            })
            .unwrap_or_default();
        if !unknown.is_empty() {
            bail!(
                "Faulty: unknown parameter(s) {} (known: {})",
                unknown.join(", "),
                PARAMS.join(", ")
            );
        }
        let dim: i64 = params.get_or("dim", 32)?;
        if dim < 1 {
            bail!("Faulty: `dim` must be at least 1, got {dim}");
        }
        let faults = Faults {
            nonfinite_at_step: params.get("nonfinite_at_step")?,
            unused_on_rank: params.get("unused_on_rank")?,
            one_process_as_world: params.get_or("one_process_as_world", 1)?,
            mismatch_on_rank: params.get("mismatch_on_rank")?,
        };
        if faults.nonfinite_at_step == Some(0) {
            bail!("Faulty: `nonfinite_at_step` counts calls from 1, got 0");
        }
        if faults.one_process_as_world == 0 {
            bail!("Faulty: `one_process_as_world` must be at least 1, got 0");
        }
        Ok((dim, faults))
    }
}

/// Rows scaled to unit length (norms clamped at 1e-12).
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
}

/// The fixture algorithm (see the crate documentation).
struct Faulty {
    encoder: Box<dyn Encoder>,
    vs: nn::VarStore,
    projection: nn::Linear,
    aux: Tensor,
    faults: Faults,
    collectives: Collectives,
    /// Calls of `training_loss` so far.
    calls: u64,
}

impl Faulty {
    fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        let (dim, faults) = Faults::from_params(params)?;
        let collectives = spec.collectives();
        for (name, rank) in [
            ("unused_on_rank", faults.unused_on_rank),
            ("mismatch_on_rank", faults.mismatch_on_rank),
        ] {
            let world = collectives.world_size().max(faults.one_process_as_world);
            if let Some(rank) = rank.filter(|&r| r >= world) {
                bail!("Faulty: `{name}` = {rank} is not a rank of a world of {world}");
            }
        }
        let encoder: Box<dyn Encoder> = Box::new(spec.build(device)?);
        let vs = nn::VarStore::new(device);
        let projection = nn::linear(
            vs.root() / "projection",
            encoder.output_dim(),
            dim,
            Default::default(),
        );
        let aux = vs.root().f_zeros("aux", &[1])?;
        Ok(Faulty {
            encoder,
            vs,
            projection,
            aux,
            faults,
            collectives,
            calls: 0,
        })
    }

    fn project(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?.f_flatten(1, -1)?;
        Ok(features.f_linear(&self.projection.ws, self.projection.bs.as_ref())?)
    }

    /// The two views' projections, `[B, dim]` each.
    fn projections(&mut self, views: &[Tensor], train: bool) -> Result<(Tensor, Tensor)> {
        let [v1, v2] = views else {
            bail!(
                "Faulty needs exactly 2 views per batch, got {}",
                views.len()
            );
        };
        Ok((self.project(v1, train)?, self.project(v2, train)?))
    }

    /// `−mean_i cos(p1_i, p2_i)`.
    fn negative_cosine(p1: &Tensor, p2: &Tensor) -> Result<Tensor> {
        let cos = l2_normalize(p1)?
            .f_mul(&l2_normalize(p2)?)?
            .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;
        Ok(cos.f_mean(None::<Kind>)?.f_neg()?)
    }

    /// `aux · mean_i |p1_i − p2_i|²` over the rows that use `aux`; `None` on the rank where it
    /// is unused (`aux` then stays out of the graph).
    fn aux_term(&self, p1: &Tensor, p2: &Tensor, train: bool) -> Result<Option<Tensor>> {
        let per_row =
            p1.f_sub(p2)?
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;
        let rows = per_row.size()[0];
        let per_row = match self.faults.unused_on_rank {
            Some(rank) if train && self.collectives.world_size() > 1 => {
                if rank == self.collectives.rank() {
                    return Ok(None);
                }
                per_row
            }
            Some(rank) if train => {
                // One process standing for `one_process_as_world` ranks: rank R's rows count 0.
                let world = self.faults.one_process_as_world as i64;
                if rows % world != 0 {
                    bail!(
                        "Faulty: a batch of {rows} rows does not split into \
                         `one_process_as_world` = {world} equal parts"
                    );
                }
                let part = rows / world;
                let mask = Tensor::f_ones([rows], (per_row.kind(), per_row.device()))?;
                let _ = mask.f_narrow(0, rank as i64 * part, part)?.f_fill_(0.0)?;
                per_row.f_mul(&mask)?
            }
            _ => per_row,
        };
        // Mean over every row of the batch, the left-out rows counting 0.
        let mean = per_row.f_sum(None::<Kind>)?.f_div_scalar(rows as f64)?;
        Ok(Some(self.aux.f_squeeze()?.f_mul(&mean)?))
    }

    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (p1, p2) = self.projections(views, train)?;
        let mut loss = Self::negative_cosine(&p1, &p2)?;
        if let Some(term) = self.aux_term(&p1, &p2, train)? {
            loss = loss.f_add(&term)?;
        }
        if train {
            if let Some(rank) = self.faults.mismatch_on_rank {
                let mine = if rank == self.collectives.rank() {
                    let rows = p1.size()[0];
                    p1.f_narrow(0, 0, (rows - 1).max(0))?
                } else {
                    p1.shallow_clone()
                };
                let gathered = self.collectives.all_gather_with_grad(&mine)?;
                loss = loss.f_add(&gathered.f_sum(None::<Kind>)?.f_mul_scalar(0.0)?)?;
            }
        }
        Ok(loss)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list: Vec<(String, Tensor)> = self
            .encoder
            .named_parameters()
            .into_iter()
            .map(|(name, t)| (format!("encoder.{name}"), t))
            .collect();
        let mut own: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        own.sort_by(|a, b| a.0.cmp(&b.0));
        list.extend(own);
        list
    }
}

impl SslAlgorithm for Faulty {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.calls += 1;
        let loss = self.loss(views, true)?;
        if self.faults.nonfinite_at_step == Some(self.calls) {
            return Ok(loss.f_mul_scalar(f64::NAN)?);
        }
        Ok(loss)
    }

    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    fn parameters(&self) -> Vec<TrainableParam> {
        self.named_parameters()
            .into_iter()
            .map(|(name, tensor)| TrainableParam::with_default_hints(name, tensor))
            .collect()
    }

    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        tch::no_grad(|| self.encoder.forward(images, train))
    }

    fn embedding_dim(&self) -> i64 {
        self.encoder.output_dim()
    }

    fn embedding_encoder_prefix(&self) -> String {
        "encoder.".into()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut list = self.named_parameters();
        list.extend(
            self.encoder
                .named_buffers()
                .into_iter()
                .map(|(name, t)| (format!("encoder.{name}"), t)),
        );
        list
    }
}

fn plugin() -> Plugin {
    Plugin::new("fault-plugin", env!("CARGO_PKG_VERSION")).algorithm(
        "Faulty",
        "test fixture: negative cosine of two views' projections plus a scalar `aux`; faults \
         nonfinite_at_step, unused_on_rank (with one_process_as_world), mismatch_on_rank; \
         dim (32)",
        Faulty::new,
    )
}

ssl_plugin_api::export_plugin!(plugin);
