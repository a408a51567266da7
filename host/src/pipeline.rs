//! A transform pipeline: the transforms of one list of a config (`[[ssl_augmentations]]`, ...),
//! made through the registry and applied in order, each step with its own seed.

use crate::config::TransformSpec;
use crate::registry::Registry;
use crate::seeds::mix;
use anyhow::{Context, Result};
use ssl_plugin_api::host::TransformHandle;
use ssl_plugin_api::{Image, Params};

/// A sequence of transforms applied in order, each with its own seed.
pub struct Pipeline {
    steps: Vec<(String, TransformHandle)>,
}

impl Pipeline {
    /// Builds the transforms named in `specs`.
    pub fn build(registry: &Registry, specs: &[TransformSpec], what: &str) -> Result<Pipeline> {
        let mut steps = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let json = serde_json::to_value(&spec.params).context("transform parameters")?;
            let params = Params::from_value(json)?;
            let transform = registry
                .transform(&spec.name)
                .and_then(|f| Ok(f.create(&params)?))
                .with_context(|| format!("{what}[{i}] (`{}`)", spec.name))?;
            steps.push((spec.name.clone(), transform));
        }
        Ok(Pipeline { steps })
    }

    /// Applies every step; `seed` is the seed of this sample view.
    pub fn apply(&self, mut image: Image, seed: u64) -> Result<Image> {
        for (position, (name, step)) in self.steps.iter().enumerate() {
            image = step
                .apply(image, mix(seed, position as u64))
                .with_context(|| format!("transform `{name}`"))?;
        }
        Ok(image)
    }
}
