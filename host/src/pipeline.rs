//! A transform pipeline: the transforms of one list of a config (`[[ssl_augmentations]]`, ...),
//! made through the registry and applied in order, each step with its own seed
//! ([`ssl_plugin_api::step_seed`]).
//!
//! When a plugin offers a pipeline compiler that knows every step of the list, the whole list
//! runs as the one transform it returns (e.g. the geometric steps composed into one
//! resampling); the steps are still made first, so a wrong parameter is reported per step.

use crate::config::TransformSpec;
use crate::registry::Registry;
use anyhow::{Context, Result};
use ssl_plugin_api::host::TransformHandle;
use ssl_plugin_api::{step_seed, Image, Params, TransformStep};

/// A sequence of transforms applied in order, each with its own seed.
pub struct Pipeline {
    steps: Vec<(String, TransformHandle)>,
    /// The compiled form of all steps, with the compiler's description.
    compiled: Option<(TransformHandle, String)>,
}

/// The steps of `specs` as the plugin API gives them to compilers.
pub fn transform_steps(specs: &[TransformSpec]) -> Result<Vec<TransformStep>> {
    specs
        .iter()
        .map(|spec| {
            let json = serde_json::to_value(&spec.params).context("transform parameters")?;
            Ok(TransformStep {
                name: spec.name.clone(),
                params: Params::from_value(json)?,
            })
        })
        .collect()
}

impl Pipeline {
    /// Builds the transforms named in `specs`, compiled into one when a plugin can.
    pub fn build(registry: &Registry, specs: &[TransformSpec], what: &str) -> Result<Pipeline> {
        Self::build_with(registry, specs, what, true)
    }

    /// As [`Pipeline::build`]; `fuse = false` keeps the step-by-step form (the reference).
    pub fn build_with(
        registry: &Registry,
        specs: &[TransformSpec],
        what: &str,
        fuse: bool,
    ) -> Result<Pipeline> {
        let steps_in = transform_steps(specs)?;
        let mut steps = Vec::new();
        for (i, step) in steps_in.iter().enumerate() {
            let transform = registry
                .transform(&step.name)
                .and_then(|f| Ok(f.create(&step.params)?))
                .with_context(|| format!("{what}[{i}] (`{}`)", step.name))?;
            steps.push((step.name.clone(), transform));
        }
        let mut compiled = None;
        if fuse && !steps_in.is_empty() {
            for compiler in registry.pipeline_compilers() {
                if let Some(handle) = compiler
                    .compile(&steps_in)
                    .with_context(|| format!("compiling {what}"))?
                {
                    compiled = Some((handle, compiler.description().to_string()));
                    break;
                }
            }
        }
        Ok(Pipeline { steps, compiled })
    }

    /// Applies every step; `seed` is the seed of this sample view.
    pub fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        if let Some((handle, _)) = &self.compiled {
            return handle
                .apply(image, seed)
                .context("transform pipeline (compiled)");
        }
        self.apply_steps(image, seed)
    }

    /// Applies the steps one by one, even when a compiled form exists (the reference).
    pub fn apply_steps(&self, mut image: Image, seed: u64) -> Result<Image> {
        for (position, (name, step)) in self.steps.iter().enumerate() {
            image = step
                .apply(image, step_seed(seed, position))
                .with_context(|| format!("transform `{name}`"))?;
        }
        Ok(image)
    }

    /// The description of the compiled form, when the pipeline runs compiled.
    pub fn compiled(&self) -> Option<&str> {
        self.compiled.as_ref().map(|(_, d)| d.as_str())
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there is no step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}
