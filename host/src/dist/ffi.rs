//! The `extern "C"` functions of `host/csrc/c10d_shim.cpp`, declared by hand. Every function
//! that can fail stores a malloc'd message in `err` (freed with [`shim_free_string`]).
//! Tensors are tch's `C_tensor` pointers (a `torch::Tensor*` on the C++ side).

use std::os::raw::{c_char, c_int, c_void};
use torch_sys::C_tensor;

extern "C" {
    pub fn shim_rng_get_state(
        device_type: c_int,
        index: c_int,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    pub fn shim_rng_set_state(
        device_type: c_int,
        index: c_int,
        state: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_autocast_state(
        device_type: c_int,
        enabled: *mut c_int,
        dtype: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        was_enabled: *mut c_int,
        was_dtype: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_autocast_leave(
        device_type: c_int,
        was_enabled: c_int,
        was_dtype: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_cuda_memory_peak(
        index: c_int,
        peak_bytes: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_cuda_memory_reset_peak(index: c_int, err: *mut *mut c_char) -> c_int;
    pub fn shim_cuda_sync_debug_mode(
        mode: c_int,
        previous: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_free_string(s: *mut c_char);
    pub fn shim_free_bytes(b: *mut u8);
    pub fn shim_has_nccl() -> c_int;
    pub fn shim_set_fatal_hook(hook: extern "C" fn(text: *const c_char));

    pub fn shim_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        num_workers: c_int,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn shim_store_free(store: *mut c_void);
    pub fn shim_store_set(
        store: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_store_get(
        store: *mut c_void,
        key: *const c_char,
        timeout_ms: i64,
        out: *mut *mut u8,
        len: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_store_add(
        store: *mut c_void,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;

    pub fn shim_pg_new(
        store: *mut c_void,
        prefix: *const c_char,
        backend: c_int,
        rank: c_int,
        size: c_int,
        device_index: c_int,
        timeout_ms: i64,
        gloo_ifnames: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn shim_pg_set_debug(group: *mut c_void, on: c_int);
    pub fn shim_pg_shutdown(group: *mut c_void) -> c_int;
    pub fn shim_pg_free(group: *mut c_void);
    pub fn shim_pg_all_reduce(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: usize,
        op: c_int,
        bucket_bytes: i64,
        calls: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_pg_broadcast(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: usize,
        root: c_int,
        bucket_bytes: i64,
        calls: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn shim_pg_all_gather(
        group: *mut c_void,
        t: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    pub fn shim_pg_all_gather_with_grad(
        group: *mut c_void,
        t: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    pub fn shim_pg_all_reduce_sum_with_grad(
        group: *mut c_void,
        t: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    pub fn shim_pg_barrier(group: *mut c_void, timeout_ms: i64, err: *mut *mut c_char) -> c_int;
}

/// Takes the message the shim stored in `err` (freeing it), or a generic one if it stored none.
///
/// # Safety
/// `err` is null or a string the shim allocated and nobody freed yet.
pub unsafe fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "the c10d shim failed without a message".to_string();
    }
    // SAFETY: the shim wrote a NUL-terminated string with malloc; we free it once, here.
    let message = unsafe { std::ffi::CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above.
    unsafe { shim_free_string(err) };
    message
}
