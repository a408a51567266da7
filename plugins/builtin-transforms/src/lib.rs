//! Built-in transforms.

/// Referenced by the host so the linker keeps this crate (and its registration).
pub fn link() {}
