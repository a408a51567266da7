//! The `ssl-host` runtime: command line, config, plugin registry and loader, data loader,
//! trainer, evaluators, checkpoints and metrics. `main.rs` only calls [`run`].

pub mod atomic_file;
pub mod augmentation_yaml;
pub mod checkpoint;
pub mod classifier;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod metrics;
pub mod optim;
pub mod outputs;
pub mod pretrained;
pub mod registry;
pub mod schedule;
pub mod tensorboard;
pub mod train;

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
  train (default)           SSL training: --model=NAME (a config in configs/, a plugin's, or a
                            .toml path) [--name=value]... ; --resume --output_dir=DIR continues
                            a run; --stop_after_epochs=N stops cleanly after N epochs
  show-config               the resolved config of --model=NAME [--name=value]...;
                            --parameters lists every parameter
  inspect-checkpoint        a checkpoint's record and tensors: --checkpoint=FILE or run folder
  list                      every dataset, transform, encoder, algorithm and model config,
                            with its source (built-in or plugin path) and version
  dump                      write samples of a dataset as PNG files plus labels.csv
                              --dataset=NAME --out=DIR [--local_dataset=DIR] [--limit=N]
                              [--split=train|test] [--<dataset parameter>=value]...
  preview                   a PNG grid of SSL training samples with their two augmented views
                              --model=NAME [--name=value]... --out=FILE.png [--count=8]
  predict                   class probabilities of a classifier checkpoint for every image
                              --checkpoint=PATH --dataset=NAME --local_dataset=DIR --out=FILE.csv
  embed                     encoder features of an SSL or classifier checkpoint for every image
                              --checkpoint=PATH --dataset=NAME --local_dataset=DIR --out=FILE.csv|.npy
                              [--image_size=N]
  export-encoder            the encoder of a checkpoint under torchvision's names
                              --checkpoint=PATH --out=encoder.safetensors
  make-rsna-csv             dataset.csv (subject,label) for RSNAKaggleCXR from Kaggle's labels
                              --labels=stage_2_train_labels.csv --out=DIR/dataset.csv
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
            print!(
                "{}",
                registry.listing(&config::builtin_config_descriptions())
            );
            Ok(())
        }
        Some("dump") => commands::dump::run(&registry, &mut cli),
        Some("check-encoder") => commands::check_encoder::run(&registry, &mut cli),
        Some("preview") => commands::preview::run(&registry, &mut cli),
        Some("predict") => commands::predict::run(&registry, &mut cli),
        Some("embed") => commands::embed::run(&registry, &mut cli),
        Some("export-encoder") => commands::export_encoder::run(&registry, &mut cli),
        Some("make-rsna-csv") => commands::rsna_csv::run(&mut cli),
        Some("train") => commands::train::run(&registry, &mut cli),
        Some("show-config") => commands::train::show(&registry, &mut cli),
        Some("inspect-checkpoint") => commands::inspect::run(&mut cli),
        Some(other) => {
            let known = [
                "train",
                "show-config",
                "inspect-checkpoint",
                "list",
                "dump",
                "preview",
                "predict",
                "embed",
                "export-encoder",
                "make-rsna-csv",
                "check-encoder",
            ];
            let hint = registry::closest(other, known.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            anyhow::bail!("unknown command `{other}`{hint}\n\n{USAGE}")
        }
        None if cli
            .options
            .iter()
            .any(|(n, _)| n == "model" || n == "resume") =>
        {
            commands::train::run(&registry, &mut cli)
        }
        None => anyhow::bail!("no command given\n\n{USAGE}"),
    }
}
