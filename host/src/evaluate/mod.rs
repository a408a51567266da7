//! `ssl-host evaluate`: the offline evaluation of encoders on one labelled dataset: features
//! extracted once per encoder, then the linear probe, kNN and label-efficiency protocols, with
//! bootstrap confidence intervals, a leakage check, result tables and plots.

pub mod features;
pub mod leakage;
pub mod plots;
pub mod probe;
pub mod projection;
pub mod report;
pub mod stats;
