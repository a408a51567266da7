//! The error type plugin code returns, and its ABI-stable twin.

use abi_stable::std_types::RString;
use abi_stable::StableAbi;
use std::fmt;

/// An error raised by plugin code (or by the host while talking to a plugin).
///
/// Any `std::error::Error` converts into it with `?`, so plugin code can use I/O, parsing and
/// tch errors directly. Add context with [`PluginError::context`].
pub struct PluginError {
    message: String,
}

impl PluginError {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        PluginError {
            message: message.to_string(),
        }
    }

    /// Prefixes the message with `context: `.
    pub fn context(self, context: impl fmt::Display) -> Self {
        PluginError {
            message: format!("{context}: {}", self.message),
        }
    }

    /// The full message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for PluginError {
    fn from(error: E) -> Self {
        // Keep the chain of causes readable in one line.
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        PluginError { message }
    }
}

/// `Result` with [`PluginError`].
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

/// Returns early with a [`PluginError`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::PluginError::msg(::std::format!($($arg)*)))
    };
}

/// The error as it crosses the plugin boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
#[doc(hidden)]
pub struct FfiError {
    pub message: RString,
    /// True when the error is a caught panic of plugin code.
    pub panicked: bool,
}

impl From<PluginError> for FfiError {
    fn from(e: PluginError) -> Self {
        FfiError {
            message: e.message.into(),
            panicked: false,
        }
    }
}

impl From<FfiError> for PluginError {
    fn from(e: FfiError) -> Self {
        PluginError {
            message: e.message.into_string(),
        }
    }
}
