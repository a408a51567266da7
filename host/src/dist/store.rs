//! A client (and, on the process that hosts it, the server) of c10d's `TCPStore`: the
//! key-value store through which the processes of a run find each other.

use super::ffi;
use anyhow::{anyhow, Result};
use std::ffi::CString;
use std::os::raw::{c_char, c_void};
use std::ptr;
use std::time::Duration;

/// One connection to a `TCPStore`. Dropping it closes the connection (and stops the server
/// when this connection hosts it).
pub struct Store {
    handle: *mut c_void,
    /// Where the store listens, for messages.
    pub(crate) address: String,
}

// SAFETY: c10d's TCPStore serialises its own socket operations with a lock, so one handle may
// be used from several threads; the handle is freed only in Drop.
unsafe impl Send for Store {}
// SAFETY: as above.
unsafe impl Sync for Store {}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{what} `{s}` contains a NUL byte"))
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Connects to the store at `host:port`, hosting it first when `is_server`.
    /// `num_workers`: the number of processes that connect at start-up (the server waits for
    /// all of them); `None` for an extra connection of a process that already counted.
    pub fn connect(
        host: &str,
        port: u16,
        is_server: bool,
        num_workers: Option<usize>,
        timeout: Duration,
    ) -> Result<Store> {
        let c_host = c_string("store host", host)?;
        let workers = match num_workers {
            Some(n) => i32::try_from(n).map_err(|_| anyhow!("{n} workers is too many"))?,
            None => -1,
        };
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: c_host outlives the call; err is an out-parameter the shim may fill.
        let handle = unsafe {
            ffi::shim_store_new(
                c_host.as_ptr(),
                port,
                is_server as i32,
                workers,
                millis(timeout),
                &mut err,
            )
        };
        if handle.is_null() {
            // SAFETY: the shim failed and stored its message (or nothing) in err.
            let message = unsafe { ffi::take_error(err) };
            let role = if is_server { "host" } else { "reach" };
            return Err(anyhow!(
                "could not {role} the store at {host}:{port}: {message}"
            ));
        }
        Ok(Store {
            handle,
            address: format!("{host}:{port}"),
        })
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let c_key = c_string("store key", key)?;
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: handle is live; key and value outlive the call.
        let rc = unsafe {
            ffi::shim_store_set(
                self.handle,
                c_key.as_ptr(),
                value.as_ptr(),
                value.len(),
                &mut err,
            )
        };
        if rc != 0 {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            return Err(anyhow!("store set of `{key}`: {message}"));
        }
        Ok(())
    }

    /// The value of `key`, waiting up to `timeout` for some process to set it.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let c_key = c_string("store key", key)?;
        let mut err: *mut c_char = ptr::null_mut();
        let mut out: *mut u8 = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: handle is live; the out-parameters are valid for writes.
        let rc = unsafe {
            ffi::shim_store_get(
                self.handle,
                c_key.as_ptr(),
                millis(timeout),
                &mut out,
                &mut len,
                &mut err,
            )
        };
        if rc != 0 {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            return Err(anyhow!(
                "store get of `{key}` (waited up to {timeout:?}): {message}"
            ));
        }
        // SAFETY: on success the shim returns a malloc'd buffer of len bytes, freed here once.
        let value = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
        // SAFETY: as above.
        unsafe { ffi::shim_free_bytes(out) };
        Ok(value)
    }

    /// Adds `delta` to the integer counter `key` (0 when absent) and returns the new value;
    /// `delta = 0` reads it without waiting.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let c_key = c_string("store key", key)?;
        let mut err: *mut c_char = ptr::null_mut();
        let mut out = 0i64;
        // SAFETY: handle is live; out and err are valid for writes.
        let rc =
            unsafe { ffi::shim_store_add(self.handle, c_key.as_ptr(), delta, &mut out, &mut err) };
        if rc != 0 {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            return Err(anyhow!("store add to `{key}`: {message}"));
        }
        Ok(out)
    }

    pub(crate) fn handle(&self) -> *mut c_void {
        self.handle
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: handle came from shim_store_new and is freed once, here.
        unsafe { ffi::shim_store_free(self.handle) };
    }
}
