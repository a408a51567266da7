//! One module per `ssl-host` command.

pub mod bench_data;
pub mod check_encoder;
pub mod dump;
pub mod embed;
pub mod export_encoder;
pub mod inspect;
pub mod join;
pub mod pack;
pub mod predict;
pub mod preview;
pub mod rsna_csv;
pub mod train;

use crate::cli::Cli;
use crate::registry::Registry;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::Params;

/// A command-line value as JSON: numbers, booleans and JSON literals keep their type,
/// anything else is a string.
pub fn option_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The remaining `--name=value` options as a JSON object of plugin parameters.
pub fn params_from_options(options: &[(String, String)]) -> serde_json::Map<String, Value> {
    options
        .iter()
        .map(|(n, v)| (n.clone(), option_value(v)))
        .collect()
}

/// The dataset a command reads (`dump`, `pack`): `--dataset=NAME`, `--local_dataset=DIR` (its
/// `root`), `--split` (`train` when absent) and every option left as a dataset parameter.
pub struct DatasetArgs {
    /// The registered name.
    pub name: String,
    /// The plugin's parameters (`root`, `split`, the rest).
    pub params: serde_json::Map<String, Value>,
}

impl DatasetArgs {
    /// Takes `--dataset` and then every option left out of `cli` (take the command's own
    /// options first); `command` names the command in errors.
    pub fn take(cli: &mut Cli, command: &str) -> Result<DatasetArgs> {
        let name = cli
            .take("dataset")
            .with_context(|| format!("{command} needs --dataset=NAME (see `ssl-host list`)"))?;
        let mut params = params_from_options(&cli.options);
        cli.options.clear();
        if let Some(root) = params.remove("local_dataset") {
            params.insert("root".into(), root);
        }
        params
            .entry("split")
            .or_insert(Value::String("train".into()));
        Ok(DatasetArgs { name, params })
    }

    /// The parameters as the plugin receives them.
    pub fn plugin_params(&self) -> Result<Params> {
        Ok(Params::from_value(Value::Object(self.params.clone()))?)
    }

    /// Opens the dataset; with `require_samples`, an empty one is an error naming it.
    pub fn open(&self, registry: &Registry, require_samples: bool) -> Result<DatasetHandle> {
        let dataset = registry
            .dataset(&self.name)?
            .create(&self.plugin_params()?)?;
        if require_samples && dataset.is_empty() {
            let root = self
                .params
                .get("root")
                .and_then(Value::as_str)
                .map(|r| format!(" at {r}"))
                .unwrap_or_default();
            let split = self.params["split"].as_str().unwrap_or("train");
            bail!(
                "dataset `{}`{root} (split {split}) has no samples",
                self.name
            );
        }
        Ok(dataset)
    }
}
