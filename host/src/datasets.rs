//! Opening a dataset plugin for a run: its registered name, root folder, split and the
//! config's parameter table become the plugin's parameters. The root may also be a URL of a
//! packed dataset in object storage or a catalogue name ([`crate::shards`]).

use crate::registry::Registry;
use crate::shards::{self, StoreSettings};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::Params;
use std::sync::Arc;

/// Plugin parameters: the dataset path and split plus the config's table.
pub fn dataset_params(root: Option<&str>, split: &str, extra: &toml::Table) -> Result<Params> {
    let mut map = serde_json::to_value(extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(root) = root {
        map.insert("root".into(), Value::String(root.to_string()));
    }
    map.entry("split").or_insert(Value::String(split.into()));
    Ok(Params::from_value(Value::Object(map))?)
}

/// Opens split `split` of dataset `name` at `root` with the config's extra parameters, which
/// may be empty (e.g. a test split the dataset does not have). A URL or catalogue name as
/// `root` is resolved with `store` first.
pub fn open_split(
    registry: &Registry,
    name: &str,
    root: Option<&str>,
    split: &str,
    extra: &toml::Table,
    store: &StoreSettings,
) -> Result<Arc<DatasetHandle>> {
    let factory = registry.dataset(name)?;
    let context = || {
        format!(
            "opening dataset `{name}`{} (split {split})",
            root.map(|r| format!(" at {r}")).unwrap_or_default()
        )
    };
    let resolved = shards::resolve(root, store).with_context(context)?;
    let params = dataset_params(resolved.root.as_deref(), split, extra)?;
    let dataset = Arc::new(factory.create(&params).with_context(context)?);
    if let Some(map) = resolved.shards {
        shards::register(&dataset, map);
    }
    Ok(dataset)
}

/// As [`open_split`], but an empty dataset is an error naming it.
pub fn open_dataset(
    registry: &Registry,
    name: &str,
    root: Option<&str>,
    split: &str,
    extra: &toml::Table,
    store: &StoreSettings,
) -> Result<Arc<DatasetHandle>> {
    let dataset = open_split(registry, name, root, split, extra, store)?;
    if dataset.is_empty() {
        bail!(
            "dataset `{name}`{} has no samples",
            root.map(|r| format!(" at {r}")).unwrap_or_default()
        );
    }
    Ok(dataset)
}
