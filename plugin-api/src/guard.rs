//! Turns panics in plugin code into errors.
//!
//! Every call that enters plugin code through the ABI goes through [`guard`]: a panic is caught
//! (unwinding across an `extern "C"` frame would abort the process) and returned as an error
//! that names the panic message and its location. While inside a guard, the panic hook stays
//! quiet, so the user sees one clear error from the host instead of a panic report.

use crate::error::{FfiError, PluginError};
use abi_stable::std_types::RResult;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if DEPTH.with(|d| d.get()) > 0 {
                let location = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(location));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Runs plugin code, turning both its errors and its panics into an [`FfiError`].
pub(crate) fn guard<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> RResult<T, FfiError> {
    install_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    match outcome {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(payload) => {
            let location = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_default();
            RResult::RErr(FfiError {
                message: format!(
                    "plugin code panicked in {what}: {}{location}",
                    payload_text(&*payload)
                )
                .into(),
                causes: Default::default(),
                panicked: true,
            })
        }
    }
}
