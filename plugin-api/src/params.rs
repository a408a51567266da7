//! The parameter blob a factory receives.

use crate::error::{PluginError, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parameters for a factory, parsed from the JSON (or TOML, converted by the host) blob the
/// host sends. Lookups name the parameter in their errors.
#[derive(Clone, Debug)]
pub struct Params {
    value: Value,
}

impl Default for Params {
    /// No parameters (an empty table).
    fn default() -> Self {
        Params {
            value: Value::Object(Default::default()),
        }
    }
}

impl Params {
    /// Parses a JSON text; an empty text is an empty table.
    pub fn from_json(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Params {
                value: Value::Object(Default::default()),
            });
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| PluginError::msg(format!("parameters are not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(PluginError::msg("parameters must be a JSON object"));
        }
        Ok(Params { value })
    }

    /// Wraps a JSON value (must be an object).
    pub fn from_value(value: Value) -> Result<Self> {
        if !value.is_object() {
            return Err(PluginError::msg("parameters must be a JSON object"));
        }
        Ok(Params { value })
    }

    /// The raw JSON.
    pub fn as_json(&self) -> &Value {
        &self.value
    }

    /// The parameters as JSON text.
    pub fn to_json_string(&self) -> String {
        self.value.to_string()
    }

    /// The parameter `name`, or `None` when absent or null.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.value.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| PluginError::msg(format!("parameter `{name}` = {v}: {e}"))),
        }
    }

    /// The parameter `name`, or `default` when absent.
    pub fn get_or<T: DeserializeOwned>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.get(name)?.unwrap_or(default))
    }

    /// The parameter `name`; an error naming it when absent.
    pub fn require<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.get(name)?
            .ok_or_else(|| PluginError::msg(format!("missing parameter `{name}`")))
    }

    /// An error naming the first parameter that is neither in `known` nor one the host adds
    /// to a dataset's parameters (`root` from `--local_dataset`, `split`), listing the
    /// accepted names: so that a misspelt `--ssl_dataset_params.num_sample=` is not silently
    /// ignored.
    pub fn check_known(&self, known: &[&str]) -> Result<()> {
        let Some(table) = self.value.as_object() else {
            return Ok(());
        };
        for name in table.keys() {
            if name != "root" && name != "split" && !known.contains(&name.as_str()) {
                let mut accepted = vec!["root", "split"];
                accepted.extend_from_slice(known);
                return Err(PluginError::msg(format!(
                    "unknown parameter `{name}` (accepted: {})",
                    accepted.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// All parameters deserialized into a struct (use `#[serde(deny_unknown_fields)]` to reject
    /// unknown names, `#[serde(default)]` for defaults).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.value.clone())
            .map_err(|e| PluginError::msg(format!("invalid parameters: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_errors_host_added_ones_are_not() {
        let p = Params::from_json(r#"{"root": "/d", "split": "train", "size": 3}"#).unwrap();
        assert!(p.check_known(&["size", "seed"]).is_ok());
        let e = p.check_known(&["sizes"]).unwrap_err();
        assert_eq!(
            e.message(),
            "unknown parameter `size` (accepted: root, split, sizes)"
        );
    }

    #[test]
    fn lookups_name_the_parameter() {
        let p = Params::from_json(r#"{"size": 32, "name": "x"}"#).unwrap();
        assert_eq!(p.require::<u32>("size").unwrap(), 32);
        assert_eq!(p.get_or::<u32>("seed", 7).unwrap(), 7);
        let e = p.require::<u32>("name").unwrap_err();
        assert!(e.message().contains("parameter `name`"), "{e}");
        let e = p.require::<u32>("missing").unwrap_err();
        assert!(e.message().contains("missing parameter `missing`"), "{e}");
        assert!(Params::from_json("[1]").is_err());
        assert!(Params::from_json("").unwrap().as_json().is_object());
        assert!(Params::default().as_json().is_object());
    }
}
