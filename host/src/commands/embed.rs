//! (being written)

use crate::cli::Cli;
use crate::registry::Registry;
use anyhow::{bail, Result};

pub fn run(_registry: &Registry, _cli: &mut Cli) -> Result<()> {
    bail!("not written yet")
}
