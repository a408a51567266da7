//! The `split` parameter every built-in dataset takes: `train` (the default) or `test`.

use ssl_plugin_api::{PluginError, Result};

/// Which part of a dataset a plugin instance serves (its `split` parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training stream (parameter value `"train"`).
    Train,
    /// The test stream (parameter value `"test"`), independent of the training one.
    Test,
}

impl Split {
    /// The parameter value naming this split.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// Parses `"train"` or `"test"`; anything else is an error naming the parameter `split`.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(PluginError::msg(format!(
                "parameter `split` = {other:?}: expected \"train\" or \"test\""
            ))),
        }
    }
}
