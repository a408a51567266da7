//! The error type plugin code returns, and its ABI-stable twin.
//!
//! A [`PluginError`] is a chain: its own message, then the messages of its causes, outermost
//! first, as `std::error::Error::source` gives them. The chain survives the plugin boundary
//! (as a list of messages in [`FfiError`]), so the host can print `error: ...` followed by
//! one `caused by: ...` line per cause.

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;
use std::fmt;

/// An error raised by plugin code (or by the host while talking to a plugin): a message and
/// the chain of its causes.
///
/// `?` converts the common error types of plugin code into it: [`std::io::Error`],
/// `serde_json::Error`, `tch::TchError` (feature `torch`), the standard parse errors
/// (`ParseIntError`, `ParseFloatError`, `ParseBoolError`, `Utf8Error`, `FromUtf8Error`,
/// `TryFromIntError`, `TryFromSliceError`), `std::fmt::Error`, `String` and `&str`, and
/// `Box<dyn std::error::Error + Send + Sync>`. Any other error type converts with
/// [`Context::context`] (adds a message and keeps the error as the cause) or
/// [`PluginError::from_error`]; each keeps the error's own chain of causes (the examples of
/// this crate are `no_run`: with the `torch` feature a test binary needs libtorch's path):
///
/// ```no_run
/// use ssl_plugin_api::{Context, PluginError, Result};
///
/// #[derive(Debug)]
/// struct CorruptHeader;
/// impl std::fmt::Display for CorruptHeader {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("corrupt header")
///     }
/// }
/// impl std::error::Error for CorruptHeader {}
///
/// fn decode(path: &str) -> std::result::Result<u8, CorruptHeader> {
///     Err(CorruptHeader)
/// }
///
/// fn read(path: &str) -> Result<u8> {
///     let n: u8 = "7".parse()?; // a parse error converts with `?`
///     let header = decode(path).context(format!("reading {path}"))?;
///     Ok(n + header)
/// }
///
/// let e = read("a.png").unwrap_err();
/// assert_eq!(e.to_string(), "reading a.png");
/// assert_eq!(e.causes().collect::<Vec<_>>(), ["corrupt header"]);
/// assert_eq!(e.message(), "reading a.png: corrupt header");
/// assert_eq!(format!("{e:#}"), "reading a.png: corrupt header");
/// # let _ = PluginError::from_error(CorruptHeader);
/// ```
///
/// `Display` shows the error's own message (`{:#}` the whole chain on one line), as the
/// convention of `std::error::Error` wants; [`PluginError::message`] gives the whole chain.
pub struct PluginError {
    message: String,
    cause: Option<Box<PluginError>>,
}

impl PluginError {
    /// An error with this message and no cause.
    pub fn msg(message: impl fmt::Display) -> Self {
        PluginError {
            message: message.to_string(),
            cause: None,
        }
    }

    /// Any error, with its chain of causes (read through `source`) kept as messages.
    pub fn from_error(error: impl std::error::Error) -> Self {
        Self::from_chain(&error)
    }

    fn from_chain(error: &dyn std::error::Error) -> Self {
        PluginError {
            message: error.to_string(),
            cause: error.source().map(|s| Box::new(Self::from_chain(s))),
        }
    }

    /// Builds an error from its messages, outermost first; `None` for an empty list.
    fn from_messages(messages: impl DoubleEndedIterator<Item = String>) -> Option<Self> {
        messages.rev().fold(None, |cause, message| {
            Some(PluginError {
                message,
                cause: cause.map(Box::new),
            })
        })
    }

    /// This error as the cause of a new one whose message is `context`.
    pub fn context(self, context: impl fmt::Display) -> Self {
        PluginError {
            message: context.to_string(),
            cause: Some(Box::new(self)),
        }
    }

    /// The whole chain on one line: the message, then each cause, joined by `: `.
    pub fn message(&self) -> String {
        format!("{self:#}")
    }

    /// The messages of the causes, outermost first (without this error's own message).
    pub fn causes(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(self.cause.as_deref(), |e| e.cause.as_deref())
            .map(|e| e.message.as_str())
    }
}

impl fmt::Display for PluginError {
    /// The error's own message; with `{:#}`, the whole chain joined by `: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            for cause in self.causes() {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PluginError {
    /// The whole chain, so that `unwrap()` shows every cause.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:#}")
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Implements `From<$type> for PluginError` (keeping the error's causes) for each type.
macro_rules! from_errors {
    ($($(#[$attr:meta])* $type:ty),* $(,)?) => {
        $(
            $(#[$attr])*
            impl From<$type> for PluginError {
                fn from(error: $type) -> Self {
                    PluginError::from_error(error)
                }
            }
        )*
    };
}

from_errors!(
    std::io::Error,
    std::fmt::Error,
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::num::TryFromIntError,
    std::str::ParseBoolError,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
    std::array::TryFromSliceError,
    std::ffi::NulError,
    serde_json::Error,
    #[cfg(feature = "torch")]
    tch::TchError,
);

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        PluginError::msg(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> Self {
        PluginError::msg(message)
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for PluginError {
    fn from(error: Box<dyn std::error::Error + Send + Sync>) -> Self {
        PluginError::from_chain(&*error)
    }
}

/// Adds a message to an error while keeping it (and its own causes) as the cause: for
/// `Result`s of [`PluginError`] and of any `std::error::Error`, so plugin code can use `?` on
/// error types that have no `From` conversion:
/// `png::Decoder::new(file).read_info().context("decoding x.png")?`.
pub trait Context<T> {
    /// On error, an error with message `context` caused by this one.
    fn context(self, context: impl fmt::Display) -> Result<T>;

    /// As [`Context::context`], with the message built only on error.
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: std::error::Error> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| PluginError::from_chain(&e).context(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| PluginError::from_chain(&e).context(context()))
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

/// The error as it crosses the plugin boundary: the chain of messages, outermost first.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
#[doc(hidden)]
pub struct FfiError {
    /// The error's own message.
    pub message: RString,
    /// The messages of its causes, outermost first.
    pub causes: RVec<RString>,
    /// True when the error is a caught panic of plugin code.
    pub panicked: bool,
}

impl FfiError {
    /// The whole chain on one line, joined by `: `.
    pub fn chain_text(&self) -> String {
        std::iter::once(&self.message)
            .chain(self.causes.iter())
            .map(RString::as_str)
            .collect::<Vec<_>>()
            .join(": ")
    }
}

impl From<PluginError> for FfiError {
    fn from(e: PluginError) -> Self {
        FfiError {
            causes: e.causes().map(RString::from).collect(),
            message: e.message.into(),
            panicked: false,
        }
    }
}

impl From<FfiError> for PluginError {
    fn from(e: FfiError) -> Self {
        let messages = std::iter::once(e.message)
            .chain(e.causes)
            .map(RString::into_string)
            .collect::<Vec<_>>();
        PluginError::from_messages(messages.into_iter()).expect("at least the message")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("reading the index")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(cause) = next {
            out.push(cause.to_string());
            next = cause.source();
        }
        out
    }

    #[test]
    fn context_makes_a_chain_that_source_walks() {
        let e = PluginError::msg("no such file")
            .context("opening a.csv")
            .context("CIFAR10");
        assert_eq!(chain(&e), ["CIFAR10", "opening a.csv", "no such file"]);
        assert_eq!(e.to_string(), "CIFAR10");
        assert_eq!(format!("{e:#}"), "CIFAR10: opening a.csv: no such file");
        assert_eq!(e.message(), "CIFAR10: opening a.csv: no such file");
        assert_eq!(format!("{e:?}"), "CIFAR10: opening a.csv: no such file");
        assert!(PluginError::msg("alone").source().is_none());
    }

    #[test]
    fn foreign_errors_keep_their_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = PluginError::from_error(Outer(io));
        assert_eq!(chain(&e), ["reading the index", "gone"]);

        let r: std::result::Result<(), Outer> = Err(Outer(std::io::Error::other("disk on fire")));
        let e = r.context("dataset `X`").unwrap_err();
        assert_eq!(
            chain(&e),
            ["dataset `X`", "reading the index", "disk on fire"]
        );

        let r: Result<()> = Err(PluginError::msg("inner").context("middle"));
        let e = r.with_context(|| "outer").unwrap_err();
        assert_eq!(chain(&e), ["outer", "middle", "inner"]);
    }

    #[test]
    fn question_mark_converts_common_errors() {
        fn parse(text: &str) -> Result<i64> {
            Ok(text.parse::<i64>()?)
        }
        fn json(text: &str) -> Result<serde_json::Value> {
            Ok(serde_json::from_str(text)?)
        }
        fn io() -> Result<()> {
            Err(std::io::Error::other("boom"))?
        }
        fn text() -> Result<()> {
            Err("plain text")?
        }
        fn boxed() -> Result<()> {
            let e: Box<dyn std::error::Error + Send + Sync> =
                Box::new(Outer(std::io::Error::other("x")));
            Err(e)?
        }
        assert!(parse("x").unwrap_err().message().contains("invalid digit"));
        assert!(json("{").unwrap_err().message().contains("EOF"));
        assert_eq!(io().unwrap_err().message(), "boom");
        assert_eq!(text().unwrap_err().message(), "plain text");
        assert_eq!(chain(&boxed().unwrap_err()), ["reading the index", "x"]);
    }

    #[test]
    fn the_chain_crosses_the_boundary() {
        let e = PluginError::msg("inner").context("middle").context("outer");
        let ffi = FfiError::from(e);
        assert_eq!(ffi.message.as_str(), "outer");
        assert_eq!(ffi.causes.len(), 2);
        assert_eq!(ffi.chain_text(), "outer: middle: inner");
        let back = PluginError::from(ffi);
        assert_eq!(chain(&back), ["outer", "middle", "inner"]);
    }
}
