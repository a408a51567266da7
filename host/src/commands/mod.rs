//! One module per `ssl-host` command.

pub mod bench_data;
pub mod check_encoder;
pub mod dump;
pub mod embed;
pub mod export_encoder;
pub mod inspect;
pub mod join;
pub mod predict;
pub mod preview;
pub mod rsna_csv;
pub mod train;

use serde_json::Value;

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
