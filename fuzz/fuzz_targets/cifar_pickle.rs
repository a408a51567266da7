//! libFuzzer entry point of [`ssl_fuzz_targets::cifar_pickle`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ssl_fuzz_targets::cifar_pickle(data));
