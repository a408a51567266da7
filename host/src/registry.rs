//! Every dataset, transform, encoder, algorithm and model config the host can use, from the
//! built-in plugins and the `--plugin` files, reached through the same ABI objects.

use anyhow::{anyhow, bail, Result};
use ssl_plugin_api::host::{
    self, DatasetFactory, LoadedPlugin, ModelConfig, PipelineCompiler, Source, TransformFactory,
};
use ssl_plugin_api::torch::{AlgorithmFactory, BatchPipelineCompiler, BatchTransformFactory};
use ssl_plugin_api::{EncoderFactory, ImageKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The loaded plugins and an index of their entries by kind and name.
pub struct Registry {
    plugins: Vec<LoadedPlugin>,
    /// kind -> name -> (plugin index, entry index)
    index: BTreeMap<&'static str, BTreeMap<String, (usize, usize)>>,
}

const KINDS: [&str; 6] = [
    "dataset",
    "transform",
    "batch transform",
    "encoder",
    "algorithm",
    "model config",
];

fn entry_names(p: &LoadedPlugin, kind: &str) -> Vec<String> {
    match kind {
        "dataset" => p.datasets.iter().map(|f| f.name().to_string()).collect(),
        "transform" => p.transforms.iter().map(|f| f.name().to_string()).collect(),
        "batch transform" => p
            .batch_transforms
            .iter()
            .map(|f| f.name().to_string())
            .collect(),
        "encoder" => p.encoders.iter().map(|f| f.name().to_string()).collect(),
        "algorithm" => p.algorithms.iter().map(|f| f.name().to_string()).collect(),
        _ => p.model_configs.iter().map(|m| m.name.clone()).collect(),
    }
}

/// What a plugin declares about an entry, for `ssl-host list` (empty when only defaults).
fn declarations(p: &LoadedPlugin, kind: &str, entry: usize) -> Vec<String> {
    let mut out = Vec::new();
    match kind {
        "dataset" => {
            let info = p.datasets[entry].info();
            if info.image_kind == ImageKind::Grey {
                out.push("grey images".to_string());
            }
            if info.small_images {
                out.push("small images".to_string());
            }
            if info.varying_sizes {
                out.push("images of varying sizes".to_string());
            }
            if !info.eval_transforms.is_empty() {
                let steps: Vec<String> = info
                    .eval_transforms
                    .iter()
                    .map(|(name, params)| match params.as_str() {
                        "{}" => name.clone(),
                        _ => format!("{name} {params}"),
                    })
                    .collect();
                out.push(format!("evaluation pipeline: {}", steps.join(", ")));
            }
        }
        "encoder" => {
            if let Some(param) = p.encoders[entry].info().small_image_param {
                out.push(format!("small-image parameter `{param}`"));
            }
        }
        "algorithm" => {
            let info = p.algorithms[entry].info();
            out.push(format!("lr_schedule auto = {}", info.lr_schedule));
            out.push(format!("metrics {}/...", info.metric_prefix));
            if !info.scale_lr_with_processes {
                out.push("l_rate not scaled with the number of processes".to_string());
            }
        }
        _ => {}
    }
    out
}

fn describe(p: &LoadedPlugin) -> String {
    format!("{} ({} {})", p.source, p.name, p.version)
}

impl Registry {
    /// Built-ins plus the given plugin files, in order. A name offered twice within a kind is
    /// an error naming both sources.
    pub fn load(plugin_files: &[PathBuf]) -> Result<Registry> {
        let mut plugins = host::builtin_plugins()?;
        let mut seen: Vec<PathBuf> = Vec::new();
        for path in plugin_files {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if seen.contains(&canonical) {
                eprintln!(
                    "warning: plugin {} given twice; loading it once",
                    path.display()
                );
                continue;
            }
            seen.push(canonical);
            plugins.push(host::load_plugin_file(path)?);
        }
        let mut index: BTreeMap<&'static str, BTreeMap<String, (usize, usize)>> = BTreeMap::new();
        for kind in KINDS {
            let names = index.entry(kind).or_default();
            for (pi, plugin) in plugins.iter().enumerate() {
                for (ei, name) in entry_names(plugin, kind).into_iter().enumerate() {
                    if let Some(&(other, _)) = names.get(&name) {
                        bail!(
                            "{kind} `{name}` is offered by two plugins:\n  - {}\n  - {}\nremove one of them or rename the {kind} in your plugin",
                            describe(&plugins[other]),
                            describe(plugin)
                        );
                    }
                    names.insert(name, (pi, ei));
                }
            }
        }
        Ok(Registry { plugins, index })
    }

    fn find(&self, kind: &'static str, name: &str) -> Result<(usize, usize)> {
        let names = &self.index[kind];
        names.get(name).copied().ok_or_else(|| {
            let hint = match closest(name, names.keys().map(String::as_str)) {
                Some(c) => format!(" (did you mean `{c}`?)"),
                None => String::new(),
            };
            let known: Vec<&str> = names.keys().map(String::as_str).collect();
            anyhow!(
                "unknown {kind} `{name}`{hint}; known: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    /// The dataset factory called `name`.
    pub fn dataset(&self, name: &str) -> Result<&DatasetFactory> {
        let (p, e) = self.find("dataset", name)?;
        Ok(&self.plugins[p].datasets[e])
    }

    /// The transform factory called `name`.
    #[allow(dead_code)] // used by the training engine
    pub fn transform(&self, name: &str) -> Result<&TransformFactory> {
        let (p, e) = self.find("transform", name)?;
        Ok(&self.plugins[p].transforms[e])
    }

    /// The batch transform factory called `name` (`augment_on = "device"`).
    pub fn batch_transform(&self, name: &str) -> Result<&BatchTransformFactory> {
        let (p, e) = self.find("batch transform", name)?;
        Ok(&self.plugins[p].batch_transforms[e])
    }

    /// Every plugin's pipeline compilers, in plugin order.
    pub fn pipeline_compilers(&self) -> impl Iterator<Item = &PipelineCompiler> {
        self.plugins
            .iter()
            .flat_map(|p| p.pipeline_compilers.iter())
    }

    /// Every plugin's batch pipeline compilers, in plugin order.
    pub fn batch_pipeline_compilers(&self) -> impl Iterator<Item = &BatchPipelineCompiler> {
        self.plugins
            .iter()
            .flat_map(|p| p.batch_pipeline_compilers.iter())
    }

    /// The encoder factory called `name`.
    pub fn encoder(&self, name: &str) -> Result<&EncoderFactory> {
        let (p, e) = self.find("encoder", name)?;
        Ok(&self.plugins[p].encoders[e])
    }

    /// The algorithm factory called `name`.
    #[allow(dead_code)] // used by the training engine
    pub fn algorithm(&self, name: &str) -> Result<&AlgorithmFactory> {
        let (p, e) = self.find("algorithm", name)?;
        Ok(&self.plugins[p].algorithms[e])
    }

    /// The model config called `name`.
    pub fn model_config(&self, name: &str) -> Result<&ModelConfig> {
        let (p, e) = self.find("model config", name)?;
        Ok(&self.plugins[p].model_configs[e])
    }

    /// `plugin version (source)` of the plugin offering `name` of `kind` (`dataset`,
    /// `transform`, `encoder`, `algorithm`).
    pub fn provenance(&self, kind: &str, name: &str) -> Option<String> {
        let (_, names) = self.index.iter().find(|(k, _)| **k == kind)?;
        let &(pi, _) = names.get(name)?;
        let p = &self.plugins[pi];
        Some(format!("{} {} ({})", p.name, p.version, p.source))
    }

    /// Names of the model configs plugins ship.
    pub fn model_config_names(&self) -> Vec<String> {
        self.index["model config"].keys().cloned().collect()
    }

    /// The `ssl-host list` table: every entry with its source and version; `builtin_configs`
    /// (name, description) are the host's own named configs, listed with those of plugins.
    pub fn listing(&self, builtin_configs: &[(String, String)]) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "ssl-host {} ({})\n",
            env!("CARGO_PKG_VERSION"),
            ssl_plugin_api::BuildInfo::current().summary()
        ));
        out.push_str("\nplugins:\n");
        for p in &self.plugins {
            out.push_str(&format!(
                "  {:<24} {:<10} {:<44} {}\n",
                p.name,
                p.version,
                p.source.to_string(),
                p.build_info.summary()
            ));
        }
        let sections: [(&str, &str); 6] = [
            ("datasets", "dataset"),
            ("transforms", "transform"),
            (
                "batch transforms (augment_on = \"device\")",
                "batch transform",
            ),
            ("encoders", "encoder"),
            ("algorithms", "algorithm"),
            ("model configs", "model config"),
        ];
        for (title, kind) in sections {
            out.push_str(&format!("\n{title}:\n"));
            let names = &self.index[kind];
            if kind == "model config" {
                for (name, description) in builtin_configs {
                    out.push_str(&format!(
                        "  {name:<24} {:<10} built-in  {description}\n",
                        env!("CARGO_PKG_VERSION")
                    ));
                }
            }
            if names.is_empty() && (kind != "model config" || builtin_configs.is_empty()) {
                out.push_str("  (none)\n");
            }
            for (name, &(pi, ei)) in names {
                let p = &self.plugins[pi];
                let description = match kind {
                    "dataset" => p.datasets[ei].description().to_string(),
                    "transform" => p.transforms[ei].description().to_string(),
                    "batch transform" => p.batch_transforms[ei].description().to_string(),
                    "encoder" => p.encoders[ei].description().to_string(),
                    "algorithm" => p.algorithms[ei].description().to_string(),
                    _ => p.model_configs[ei].description.clone(),
                };
                let source = match &p.source {
                    Source::BuiltIn => "built-in".to_string(),
                    Source::File(path) => path.display().to_string(),
                };
                out.push_str(&format!(
                    "  {name:<24} {:<10} {source}  {description}\n",
                    p.version
                ));
                let declared = declarations(p, kind, ei);
                if !declared.is_empty() {
                    out.push_str(&format!("  {:<24} declares: {}\n", "", declared.join("; ")));
                }
            }
        }
        out
    }
}

/// The candidate closest to `name` by edit distance, if reasonably close.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names() {
        let known = ["Shapes", "CIFAR10", "RSNAKaggleCXR"];
        assert_eq!(closest("shapes", known.iter().copied()), Some("Shapes"));
        assert_eq!(closest("CIFAR1O", known.iter().copied()), Some("CIFAR10"));
        assert_eq!(closest("zzzzzzzzzzzz", known.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn builtins_are_registered_once() {
        let registry = Registry::load(&[]).unwrap();
        assert!(registry.dataset("Shapes").is_ok());
        let err = registry.dataset("Shapez").err().unwrap().to_string();
        assert!(err.contains("did you mean `Shapes`"), "{err}");
        assert!(registry.listing(&[]).contains("Shapes"));
        // The host's named configs are listed with their descriptions.
        let listing = registry.listing(&crate::config::builtin_config_descriptions());
        let configs = listing.split("model configs:").nth(1).unwrap();
        assert!(!configs.contains("(none)"), "{configs}");
        for name in ["ShapesBYOL", "NIH_RSNA_BYOL", "SSLClassifierCIFAR"] {
            assert!(configs.contains(name), "{name} not in {configs}");
        }
        assert!(
            configs.contains("BYOL, ResNet18 on 32×32 Shapes"),
            "{configs}"
        );
    }

    /// What the host used to infer from built-in names, the built-ins now declare.
    #[test]
    fn builtins_declare_what_the_host_needs() {
        let registry = Registry::load(&[]).unwrap();
        for name in ["CIFAR10", "CIFAR100"] {
            let info = registry.dataset(name).unwrap().info();
            assert!(info.small_images, "{name}");
            assert_eq!(info.image_kind, ImageKind::Rgb, "{name}");
        }
        for name in ["RSNAKaggleCXR", "NIHCXR", "CheXpert", "CovidDataset"] {
            let info = registry.dataset(name).unwrap().info();
            assert_eq!(info.image_kind, ImageKind::Grey, "{name}");
            assert!(info.varying_sizes && !info.small_images, "{name}");
            let steps: Vec<(&str, serde_json::Value)> = info
                .eval_transforms
                .iter()
                .map(|(n, p)| (n.as_str(), serde_json::from_str(p).unwrap()))
                .collect();
            assert_eq!(
                steps,
                [
                    ("ExpandChannels", serde_json::json!({})),
                    ("Resize", serde_json::json!({"size": 256})),
                    ("CenterCrop", serde_json::json!({"size": 224})),
                ],
                "{name}"
            );
        }
        let shapes = registry.dataset("Shapes").unwrap().info();
        assert!(!shapes.small_images && !shapes.varying_sizes && shapes.eval_transforms.is_empty());
        for name in ["resnet18", "resnet50", "resnet101"] {
            let info = registry.encoder(name).unwrap().info();
            assert_eq!(
                info.small_image_param.as_deref(),
                Some("cifar_stem"),
                "{name}"
            );
        }
        assert_eq!(
            registry
                .encoder("densenet121")
                .unwrap()
                .info()
                .small_image_param,
            None
        );
        let byol = registry.algorithm("BYOL").unwrap().info();
        let simclr = registry.algorithm("SimCLR").unwrap().info();
        assert_eq!(
            (byol.lr_schedule.as_str(), byol.metric_prefix.as_str()),
            ("warmup_cosine_epoch", "byol")
        );
        assert_eq!(
            (simclr.lr_schedule.as_str(), simclr.metric_prefix.as_str()),
            ("warmup_cosine_step", "simclr")
        );
        assert!(byol.scale_lr_with_processes && simclr.scale_lr_with_processes);
        // Every declared schedule is one the host knows.
        for info in [byol, simclr] {
            info.lr_schedule
                .parse::<crate::schedule::LrSchedule>()
                .unwrap();
        }

        let listing = registry.listing(&[]);
        let after = |entry: &str| {
            let mut lines = listing
                .lines()
                .skip_while(|l| !l.trim_start().starts_with(entry));
            lines.nth(1).unwrap_or_default().to_string()
        };
        assert!(
            after("CIFAR10 ").contains("declares: small images"),
            "{listing}"
        );
        assert!(after("NIHCXR").contains("grey images"), "{listing}");
        assert!(after("resnet18").contains("`cifar_stem`"), "{listing}");
        assert!(after("SimCLR").contains("warmup_cosine_step"), "{listing}");
        assert!(!after("Shapes ").contains("declares"), "{listing}");
    }
}
