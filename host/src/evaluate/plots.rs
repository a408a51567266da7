//! The evaluation's plots (PNG).
