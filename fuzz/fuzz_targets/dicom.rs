//! libFuzzer entry point of [`ssl_fuzz_targets::dicom`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ssl_fuzz_targets::dicom(data));
