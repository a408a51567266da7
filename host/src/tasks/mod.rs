//! The kinds of training runs the engine drives ([`crate::engine::Task`]): SSL pretraining
//! with an online linear head ([`ssl`]) and classifier training on a pretrained encoder
//! ([`classifier`]). Tasks never import each other; what they share lives here, in
//! [`linear_head`] and in [`knn`] (the kNN monitor).

pub mod classifier;
pub mod knn;
pub mod linear_head;
pub mod ssl;

use crate::config::RunConfig;
use crate::loader::{Batch, BatchStream, Source};
use crate::registry::Registry;
use crate::sampler::{Order, Sampler};
use crate::world::Reduce;
use anyhow::Result;
use linear_head::{record_rows, HeadLabels, LinearHead};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::DatasetInfo;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A loader's source and the sampler of its split.
#[derive(Clone)]
pub(crate) struct Data {
    pub source: Arc<Source>,
    pub sampler: Sampler,
}

impl Data {
    /// Runs `f` on every batch of `plan` (this process's share of the split, read for `epoch`
    /// by `workers` threads) with the number of its rows that are real samples (the others
    /// repeat samples to fill a distributed run's last global batch, see
    /// [`Sampler::real_samples`]). The one evaluation loop of every task.
    pub fn for_each_batch(
        &self,
        epoch: usize,
        plan: Vec<Vec<usize>>,
        workers: usize,
        mut f: impl FnMut(Batch, usize) -> Result<()>,
    ) -> Result<()> {
        let stream = BatchStream::new(Arc::clone(&self.source), epoch as u64, plan, workers);
        for (k, batch) in stream.enumerate() {
            let batch = batch?;
            let real = self.sampler.real_samples(k, batch.len());
            f(batch, real)?;
        }
        Ok(())
    }

    /// The loss and metrics of `head` over `plan` (see [`Data::for_each_batch`]) in evaluation
    /// mode without gradients, every process's predictions together; `labels` are those of
    /// this data's dataset (the head's own, or another split's with the same outputs);
    /// `features` turns a batch's images (on `device`) into the head's input.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_head(
        &self,
        epoch: usize,
        plan: Vec<Vec<usize>>,
        workers: usize,
        device: Device,
        head: &LinearHead,
        labels: &HeadLabels,
        mut features: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Vec<(String, f64)>> {
        let _guard = tch::no_grad_guard();
        let mut metrics = labels.metrics();
        self.for_each_batch(epoch, plan, workers, |batch, real| {
            let x = batch.images(device)?;
            let y = labels.tensor(&batch, device)?;
            let logits = head.forward(&features(&x)?.to_kind(Kind::Float), false);
            let loss = head.loss(&logits, &y);
            record_rows(&mut metrics, labels, &logits, &batch, &loss, real)
        })?;
        Ok(metrics.gathered(crate::world::current())?.compute())
    }
}

/// The order of a shuffled training pass over `dataset` with `stream`: uniform, or shard-grouped
/// (`sample_order = shards`) over a packed dataset's shards, else an error saying what it needs.
pub fn shuffled_order(
    config: &RunConfig,
    dataset: &Arc<ssl_plugin_api::host::DatasetHandle>,
    seed: u64,
    stream: u64,
) -> Result<Order> {
    match config.sample_order {
        crate::config::SampleOrder::Uniform => Ok(Order::Shuffled { seed, stream }),
        crate::config::SampleOrder::Shards => match crate::shards::of(dataset) {
            Some(shards) => Ok(Order::Shards {
                seed,
                stream,
                shard_of: shards.shard_of(),
                partitions: config.shard_partitions,
            }),
            None => anyhow::bail!(
                "sample_order = shards needs a packed dataset (written by `ssl-host pack`, read with the Packed dataset), whose index.json lists its shards; use sample_order = uniform for other datasets"
            ),
        },
    }
}

/// Scalars summed over an epoch's steps (`sums`), averaged over the processes, under the names
/// rank 0 has: every process reduces the same list whatever it holds itself (a name it lacks
/// counts as NaN, so the metric shows the disagreement instead of the run hanging).
pub fn reduce_named(sums: &BTreeMap<String, f64>) -> Result<Vec<(String, f64)>> {
    let world = crate::world::current();
    let names = world.broadcast_text(&sums.keys().cloned().collect::<Vec<_>>().join("\n"))?;
    let names: Vec<String> = names
        .split('\n')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    let values: Vec<f64> = names
        .iter()
        .map(|n| sums.get(n).copied().unwrap_or(f64::NAN))
        .collect();
    let values = world.all_reduce_f64(&values, Reduce::Average)?;
    Ok(names.into_iter().zip(values).collect())
}

/// A warning when a validation split of `samples` gives no batch of `batch_size` with
/// `drop_last` (as the original, a smaller last batch is dropped): its metrics are then NaN
/// every epoch. Returns the warning, printed once at the start of a run.
pub fn warn_if_no_val_batch(
    what: &str,
    samples: usize,
    batch_size: usize,
    batch_param: &str,
    drop_last: bool,
) -> Option<String> {
    if !drop_last || samples >= batch_size {
        return None;
    }
    let warning = format!(
        "warning: the {what} validation split has {samples} samples, fewer than \
         {batch_param}={batch_size}, and drop_last=true drops that one partial batch: its \
         validation metrics will be NaN. Lower {batch_param}, raise val_split, or set \
         drop_last=false."
    );
    eprintln!("{warning}");
    Some(warning)
}

/// The plugins a run uses with their provenance (source and version), for `config.toml` and
/// the checkpoint record: `kind name` -> provenance, plus ssl-host's own version.
pub fn plugins_used(registry: &Registry, used: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut plugins = BTreeMap::new();
    plugins.insert(
        "ssl-host".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    for (kind, name) in used {
        if let Some(p) = registry.provenance(kind, name) {
            plugins.insert(format!("{kind} {name}"), p);
        }
    }
    plugins
}

/// The transforms a run's config names, for [`plugins_used`]: the linear head's, and with
/// `ssl` those of the SSL view groups.
pub fn transforms_used(config: &RunConfig, ssl: bool) -> Vec<(&'static str, String)> {
    let groups = if ssl {
        config.view_groups()
    } else {
        Vec::new()
    };
    let ssl = groups.iter().flat_map(|g| g.pipeline.iter());
    let linear_head = config
        .linear_head_augmentations
        .iter()
        .chain(config.linear_head_val_augmentations.iter().flatten());
    ssl.chain(linear_head)
        .map(|t| ("transform", t.name.clone()))
        .collect()
}

/// The encoder parameters of a run on a dataset that declares `dataset`: the config's, plus
/// the encoder's declared small-image option (ResNet's `cifar_stem`) set to whether the
/// dataset declares small images, unless the config sets it (the original: `use_7x7_first_conv_in_resnet = not
/// dataset.startswith("CIFAR")`).
pub fn encoder_params(
    registry: &Registry,
    config: &RunConfig,
    dataset: &DatasetInfo,
) -> Result<toml::Table> {
    let mut params = config.encoder_params.clone();
    if let Some(param) = registry
        .encoder(&config.ssl_encoder)?
        .info()
        .small_image_param
    {
        if !params.contains_key(&param) {
            params.insert(param, toml::Value::Boolean(dataset.small_images));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::warn_if_no_val_batch;

    #[test]
    fn a_validation_split_smaller_than_a_batch_is_warned_about_with_drop_last_only() {
        let warning = warn_if_no_val_batch("SSL", 3, 8, "ssl_training_batch_size", true)
            .expect("3 samples, batches of 8, drop_last: no batch");
        assert!(warning.contains("3 samples"), "{warning}");
        assert!(warning.contains("ssl_training_batch_size=8"), "{warning}");
        assert_eq!(
            warn_if_no_val_batch("SSL", 3, 8, "ssl_training_batch_size", false),
            None
        );
        assert_eq!(
            warn_if_no_val_batch("SSL", 8, 8, "ssl_training_batch_size", true),
            None
        );
    }
}
