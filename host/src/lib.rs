//! The `ssl-host` runtime: command line, config, plugin registry and loader, data loader,
//! trainer, evaluators, checkpoints and metrics. `main.rs` only calls [`run`].

pub mod cli;
pub mod commands;
pub mod metrics;
pub mod optim;
pub mod registry;
pub mod schedule;
pub mod tensorboard;

use anyhow::Result;
use cli::Cli;
use registry::Registry;

// Built-in plugin crates register themselves with `inventory`; referencing each crate keeps
// the linker from dropping it.
fn link_builtins() {
    ssl_builtin_datasets::link();
    ssl_builtin_transforms::link();
    ssl_builtin_encoders::link();
    ssl_builtin_algorithms::link();
}

const USAGE: &str = "\
usage: ssl-host [--plugin PATH]... COMMAND [--name=value]...

commands:
  list                      every dataset, transform, encoder, algorithm and model config,
                            with its source (built-in or plugin path) and version
  dump                      write samples of a dataset as PNG files plus labels.csv
                              --dataset=NAME --out=DIR [--local_dataset=DIR] [--limit=N]
                              [--split=train|test] [--<dataset parameter>=value]...
  check-encoder             run an encoder on a random batch, backpropagate a loss and take
                            an optimizer step; report whether its parameters changed
                              --encoder=NAME [--image_size=32] [--batch_size=4] [--<encoder parameter>=value]...

--plugin PATH loads a plugin .so (repeatable, anywhere on the line).
";

/// Runs `ssl-host` with the arguments after the program name.
pub fn run(args: Vec<String>) -> Result<()> {
    link_builtins();
    let mut cli = Cli::parse(args)?;
    if cli.help {
        print!("{USAGE}");
        return Ok(());
    }
    let registry = Registry::load(&cli.plugins)?;
    match cli.command.clone().as_deref() {
        Some("list") => {
            cli.reject_leftovers(&[])?;
            print!("{}", registry.listing());
            Ok(())
        }
        Some("dump") => commands::dump::run(&registry, &mut cli),
        Some("check-encoder") => commands::check_encoder::run(&registry, &mut cli),
        Some(other) => {
            let known = ["list", "dump", "check-encoder"];
            let hint = registry::closest(other, known.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            anyhow::bail!("unknown command `{other}`{hint}\n\n{USAGE}")
        }
        None => {
            anyhow::bail!("no command given (training arrives with the training engine)\n\n{USAGE}")
        }
    }
}
