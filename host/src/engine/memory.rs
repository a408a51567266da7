//! Device memory: an out-of-memory error of the training device, wherever it surfaced (a
//! plugin's forward, the backward, validation), becomes one message a user can act on; and the
//! peak of the memory allocated on a CUDA device, per epoch (`memory/peak_allocated_mib`).
//!
//! The peak comes from libtorch's caching allocator through the generic device allocator
//! (`c10::getDeviceAllocator`, bound in `host/csrc/c10d_shim.cpp`), so no CUDA headers are
//! needed; it is asked for only on a CUDA run, and a CPU run has no such metric.

use crate::config::{Precision, RunConfig, Task};
use crate::dist::ffi;
use anyhow::{anyhow, Result};
use ssl_plugin_api::tch::Device;
use std::os::raw::c_char;
use std::ptr;

/// The metric of the epoch's peak allocated device memory (MiB).
pub const PEAK_ALLOCATED_MIB: &str = "memory/peak_allocated_mib";

/// Whether `message` (an error's whole chain) reports libtorch running out of device memory.
pub fn is_out_of_memory(message: &str) -> bool {
    [
        "CUDA out of memory",
        "OutOfMemoryError",
        "CUDA error: out of memory",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// What libtorch's message says of the device: `GPU 0 has a total capacity of X of which Y is
/// free` and `Tried to allocate Z`.
#[derive(Debug, PartialEq)]
struct TorchReport<'a> {
    gpu: Option<&'a str>,
    total: Option<&'a str>,
    free: Option<&'a str>,
    requested: Option<&'a str>,
}

/// The text of `message` between `before` and the next `after`.
fn between<'a>(message: &'a str, before: &str, after: &str) -> Option<&'a str> {
    let start = message.find(before)? + before.len();
    let rest = &message[start..];
    Some(rest[..rest.find(after)?].trim())
}

fn torch_report(message: &str) -> TorchReport<'_> {
    TorchReport {
        gpu: between(message, "GPU ", " has a total capacity"),
        total: between(message, "has a total capacity of ", " of which"),
        free: between(message, " of which ", " is free"),
        requested: between(message, "Tried to allocate ", ". "),
    }
}

/// libtorch's own message without its C++ backtrace (`Exception raised from ...` and the
/// frames after it): its first line.
fn without_backtrace(message: &str) -> &str {
    let end = message
        .find("Exception raised from")
        .unwrap_or(message.len());
    message[..end].lines().next().unwrap_or("").trim()
}

/// The batch-size parameter of a run of `config` and its value (images per process).
fn batch_parameter(config: &RunConfig) -> (&'static str, usize) {
    match config.task {
        Task::Ssl => ("ssl_training_batch_size", config.ssl_training_batch_size),
        Task::Classifier => ("linear_head_batch_size", config.linear_head_batch_size),
    }
}

/// `error` as a clear out-of-memory error when it is one (else unchanged): the batch size
/// (parameter and images per process), the device and what libtorch said of its memory, and
/// what to try; then where it happened (the error's own contexts) and libtorch's message
/// without its backtrace.
pub fn explain_out_of_memory(
    error: anyhow::Error,
    config: &RunConfig,
    processes: usize,
) -> anyhow::Error {
    let chain: Vec<String> = error.chain().map(|c| c.to_string()).collect();
    let Some(at) = chain.iter().position(|m| is_out_of_memory(m)) else {
        return error;
    };
    let torch = &chain[at];
    let report = torch_report(torch);
    let (parameter, batch) = batch_parameter(config);
    let global = if processes > 1 {
        format!(", {} over {processes} processes", batch * processes)
    } else {
        String::new()
    };
    let device = match (report.gpu, config.device.as_deref()) {
        (Some(gpu), _) => format!("GPU {gpu}"),
        (None, Some(device)) => device.to_string(),
        (None, None) => "the CUDA device".to_string(),
    };
    let memory = match (report.total, report.free) {
        (Some(total), Some(free)) => format!(" ({total} in all, {free} free"),
        (Some(total), None) => format!(" ({total} in all"),
        _ => String::new(),
    };
    let memory = match (memory.is_empty(), report.requested) {
        (true, _) => memory,
        (false, Some(requested)) => format!("{memory}, when {requested} more was asked for)"),
        (false, None) => format!("{memory})"),
    };
    let precision = match config.precision {
        Some(Precision::MixedBf16 | Precision::Mixed16) => String::new(),
        _ if config.use_mixed_precision => String::new(),
        _ => ", or precision=bf16-mixed (or 16-mixed), which roughly halves activation memory"
            .to_string(),
    };
    let mut explained = anyhow!("{}", without_backtrace(torch));
    // The contexts above libtorch's message say where it happened (e.g. `BYOL training step`).
    for context in chain[..at].iter().rev() {
        explained = explained.context(context.clone());
    }
    explained.context(format!(
        "out of device memory on {device}{memory} with {parameter}={batch} ({batch} images per \
         process{global}); try a smaller {parameter}{precision}"
    ))
}

fn failed(what: &str, err: *mut c_char) -> anyhow::Error {
    // SAFETY: the shim failed and stored its message in err (or none: a generic message).
    anyhow!("{what}: {}", unsafe { ffi::take_error(err) })
}

/// Starts the peak of allocated memory afresh on `device` (a CUDA device; nothing elsewhere).
pub fn reset_peak(device: Device) -> Result<()> {
    let Device::Cuda(index) = device else {
        return Ok(());
    };
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: plain call; on failure the shim stored a message in err.
    if unsafe { ffi::shim_cuda_memory_reset_peak(index as i32, &mut err) } != 0 {
        return Err(failed("resetting the peak device memory", err));
    }
    Ok(())
}

/// The peak of memory allocated on `device` since [`reset_peak`], in MiB; `None` off CUDA.
pub fn peak_allocated_mib(device: Device) -> Result<Option<f64>> {
    let Device::Cuda(index) = device else {
        return Ok(None);
    };
    let mut bytes = 0i64;
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: plain call with a pointer to a live local; on failure the shim stored a message.
    if unsafe { ffi::shim_cuda_memory_peak(index as i32, &mut bytes, &mut err) } != 0 {
        return Err(failed("reading the peak device memory", err));
    }
    Ok(Some(bytes as f64 / (1024.0 * 1024.0)))
}

/// The epoch line's part about memory: `; peak device memory N MiB` when the epoch's metrics
/// have [`PEAK_ALLOCATED_MIB`], else nothing.
pub fn epoch_line_part(metrics: &[(String, f64)]) -> String {
    metrics
        .iter()
        .find(|(name, _)| name == PEAK_ALLOCATED_MIB)
        .map(|(_, mib)| format!("; peak device memory {mib:.0} MiB"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// The shape of libtorch 2.x's CUDA out-of-memory error (`c10::OutOfMemoryError::what()`),
    /// with made-up numbers, followed by its C++ backtrace.
    const TORCH_OOM: &str = "CUDA out of memory. Tried to allocate 1.53 GiB. GPU 0 has a total \
        capacity of 79.19 GiB of which 612.81 MiB is free. Including non-PyTorch memory, this \
        process has 78.57 GiB memory in use. Of the allocated memory 76.02 GiB is allocated by \
        PyTorch, and 1.91 GiB is reserved by PyTorch but unallocated. If reserved but \
        unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
        to avoid fragmentation.  See documentation for Memory Management  \
        (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n\
        Exception raised from malloc at /pytorch/c10/cuda/CUDACachingAllocator.cpp:1341 (most \
        recent call first):\n\
        frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x98 (0x7f3c1e4b3f68 in \
        /venv/lib/python3.12/site-packages/torch/lib/libc10.so)\n\
        frame #1: <unknown function> + 0x3a8f1 (0x7f3c1e55a8f1 in libc10_cuda.so)\n";

    fn config() -> RunConfig {
        RunConfig {
            ssl_training_batch_size: 512,
            ..RunConfig::default()
        }
    }

    #[test]
    fn torch_messages_are_recognised_and_read() {
        assert!(is_out_of_memory(TORCH_OOM));
        assert!(is_out_of_memory(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."
        ));
        assert!(is_out_of_memory(
            "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"
        ));
        assert!(!is_out_of_memory("shape mismatch: [2, 3] and [4, 5]"));
        assert!(!is_out_of_memory("failed to allocate 80 GB (host memory)"));
        assert_eq!(
            torch_report(TORCH_OOM),
            TorchReport {
                gpu: Some("0"),
                total: Some("79.19 GiB"),
                free: Some("612.81 MiB"),
                requested: Some("1.53 GiB"),
            }
        );
        let first = without_backtrace(TORCH_OOM);
        assert!(first.starts_with("CUDA out of memory. Tried to allocate 1.53 GiB."));
        assert!(!first.contains("frame #") && !first.contains("Exception raised"));
    }

    #[test]
    fn an_out_of_memory_error_names_the_batch_the_device_and_what_to_try() {
        // As it leaves the engine: libtorch's message inside a plugin's error, inside the
        // task's context.
        let error = Err::<(), _>(anyhow!("plugin error: {TORCH_OOM}"))
            .context("BYOL training step")
            .unwrap_err();
        let explained = explain_out_of_memory(error, &config(), 4);
        let report = crate::error_report(&explained);
        assert!(
            report.starts_with(
                "error: out of device memory on GPU 0 (79.19 GiB in all, 612.81 MiB free, when \
                 1.53 GiB more was asked for) with ssl_training_batch_size=512 (512 images per \
                 process, 2048 over 4 processes); try a smaller ssl_training_batch_size, or \
                 precision=bf16-mixed (or 16-mixed), which roughly halves activation memory\n\
                 caused by: BYOL training step\n\
                 caused by: plugin error: CUDA out of memory. Tried to allocate 1.53 GiB."
            ),
            "{report}"
        );
        assert!(
            !report.contains("frame #") && !report.contains("Exception raised"),
            "{report}"
        );
        assert_eq!(report.lines().count(), 3, "{report}");
    }

    #[test]
    fn a_mixed_precision_run_is_told_only_the_batch_size_and_other_errors_pass_unchanged() {
        let mut config = config();
        config.task = Task::Classifier;
        config.linear_head_batch_size = 64;
        config.precision = Some(Precision::MixedBf16);
        config.device = Some("cuda:1".into());
        let explained = explain_out_of_memory(
            anyhow!("CUDA error: out of memory\nSearch for `cudaErrorMemoryAllocation`"),
            &config,
            1,
        );
        assert_eq!(
            explained.to_string(),
            "out of device memory on cuda:1 with linear_head_batch_size=64 (64 images per \
             process); try a smaller linear_head_batch_size"
        );
        let other = explain_out_of_memory(anyhow!("disk full"), &config, 1);
        assert_eq!(crate::error_report(&other), "error: disk full\n");
    }

    #[test]
    fn a_cpu_run_has_no_memory_metric() {
        reset_peak(Device::Cpu).unwrap();
        assert_eq!(peak_allocated_mib(Device::Cpu).unwrap(), None);
        assert_eq!(epoch_line_part(&[("loss".into(), 1.0)]), "");
        assert_eq!(
            epoch_line_part(&[(PEAK_ALLOCATED_MIB.into(), 1234.4)]),
            "; peak device memory 1234 MiB"
        );
    }
}
