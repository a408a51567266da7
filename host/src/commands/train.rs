//! `ssl-host [train] --model=NAME [--name=value]... [--resume] [--stop_after_epochs=N]` and
//! `ssl-host show-config --model=NAME [--name=value]...`.

use crate::checkpoint;
use crate::cli::Cli;
use crate::config::{parameter_help, RunConfig};
use crate::registry::Registry;
use crate::train::{train, RunOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

fn flag(cli: &mut Cli, name: &str) -> Result<bool> {
    match cli.take(name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => bail!("--{name}={other}: expected true or false (or just --{name})"),
    }
}

/// Resolves the config of a new run, or of the run being resumed.
fn resolve(registry: &Registry, cli: &mut Cli, resume: bool) -> Result<RunConfig> {
    let model = cli.take("model");
    let overrides = std::mem::take(&mut cli.options);
    if resume {
        let dir = overrides
            .iter()
            .rev()
            .find(|(n, _)| n == "output_dir")
            .map(|(_, v)| PathBuf::from(v))
            .context("--resume needs --output_dir=DIR of the run to continue")?;
        let path = dir.join("checkpoints").join("last.safetensors");
        let info = checkpoint::read_info(&path)
            .with_context(|| format!("--resume: reading {}", path.display()))?;
        if let Some(m) = &model {
            if m != &info.model {
                bail!(
                    "--resume: {} is a run of model `{}`, not `{m}`",
                    dir.display(),
                    info.model
                );
            }
        }
        return RunConfig::resume(&info.config, &info.model, &overrides);
    }
    let model = model
        .context("no --model given: name a model config (see `ssl-host list`) or a .toml file")?;
    RunConfig::resolve(&model, &overrides, registry)
}

/// `train`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let resume = flag(cli, "resume")?;
    let stop_after_epochs = match cli.take("stop_after_epochs") {
        Some(v) => Some(
            v.parse::<usize>()
                .with_context(|| format!("--stop_after_epochs={v}: expected a whole number"))?,
        ),
        None => None,
    };
    let config = resolve(registry, cli, resume)?;
    let dir = train(
        registry,
        config,
        &RunOptions {
            resume,
            stop_after_epochs,
        },
    )?;
    println!("run finished: outputs in {}", dir.display());
    Ok(())
}

/// `show-config`.
pub fn show(registry: &Registry, cli: &mut Cli) -> Result<()> {
    if flag(cli, "parameters")? {
        print!("{}", parameter_help());
        return Ok(());
    }
    let config = resolve(registry, cli, false)?;
    print!("{}", config.to_toml());
    Ok(())
}
