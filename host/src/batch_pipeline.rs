//! A transform list run on batches where the model runs (`augment_on = "device"`): the batch
//! transforms of the same names (or one compiled batch pipeline when a plugin offers it),
//! applied to a `[N, C, H, W]` batch with one view seed per sample. Step `i` of a sample view
//! gets [`step_seed`] of the view's seed, as on the workers, so the result of a sample depends
//! only on its image and seed: not on the batch, the worker count, or the device.

use crate::config::TransformSpec;
use crate::pipeline::transform_steps;
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::step_seed;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::torch::BatchTransformHandle;

/// A list of batch transforms, possibly compiled into one.
pub struct BatchPipeline {
    steps: Vec<(String, BatchTransformHandle)>,
    compiled: Option<(BatchTransformHandle, String)>,
}

impl BatchPipeline {
    /// The batch forms of the transforms of `specs` (`what` names the list in errors).
    pub fn build(
        registry: &Registry,
        specs: &[TransformSpec],
        what: &str,
        fuse: bool,
    ) -> Result<BatchPipeline> {
        let steps_in = transform_steps(specs)?;
        let mut steps = Vec::new();
        for (i, step) in steps_in.iter().enumerate() {
            // The per-image transform must exist (a typo gets the usual suggestion).
            registry
                .transform(&step.name)
                .with_context(|| format!("{what}[{i}]"))?;
            let factory = registry.batch_transform(&step.name).map_err(|_| {
                anyhow!(
                    "{what}[{i}]: transform `{}` has no batch form, so it cannot run with \
                     augment_on = \"device\" (`ssl-host list` shows the batch transforms); use \
                     augment_on = \"workers\"",
                    step.name
                )
            })?;
            let handle = factory
                .create(&step.params)
                .with_context(|| format!("{what}[{i}] (`{}`)", step.name))?;
            steps.push((step.name.clone(), handle));
        }
        let mut compiled = None;
        if fuse && !steps_in.is_empty() {
            for compiler in registry.batch_pipeline_compilers() {
                if let Some(handle) = compiler
                    .compile(&steps_in)
                    .with_context(|| format!("compiling {what} for the device"))?
                {
                    compiled = Some((handle, compiler.description().to_string()));
                    break;
                }
            }
        }
        Ok(BatchPipeline { steps, compiled })
    }

    /// Augments `batch` (`[N, C, H, W]` float in [0, 1]); `view_seeds[n]` is the seed of the
    /// view sample `n` becomes.
    pub fn apply(&self, batch: &Tensor, view_seeds: &[u64]) -> Result<Tensor> {
        if batch.size().first().copied() != Some(view_seeds.len() as i64) {
            bail!(
                "batch of {:?} with {} seeds: one seed per sample expected",
                batch.size(),
                view_seeds.len()
            );
        }
        if batch.kind() != Kind::Float {
            bail!(
                "batch augmentation expects float images, got {:?}",
                batch.kind()
            );
        }
        if let Some((handle, _)) = &self.compiled {
            return handle
                .apply(batch, view_seeds)
                .context("batch augmentation (compiled)");
        }
        let mut x = batch.shallow_clone();
        for (position, (name, step)) in self.steps.iter().enumerate() {
            let seeds: Vec<u64> = view_seeds.iter().map(|&s| step_seed(s, position)).collect();
            x = step
                .apply(&x, &seeds)
                .with_context(|| format!("batch transform `{name}`"))?;
        }
        Ok(x)
    }

    /// The description of the compiled form, when it runs compiled.
    pub fn compiled(&self) -> Option<&str> {
        self.compiled.as_ref().map(|(_, d)| d.as_str())
    }
}
