//! The `ssl-host` runtime: command line, config, plugin registry and loader, data loader,
//! trainer, evaluators, checkpoints and metrics. `main.rs` only calls [`run`].

pub mod atomic_file;
pub mod augmentation_yaml;
pub mod batch_pipeline;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod datasets;
pub mod device;
pub mod dist;
pub mod engine;
pub mod evaluate;
pub mod loader;
pub mod metrics;
pub mod optim;
pub mod outputs;
pub mod pipeline;
pub mod pretrained;
pub mod registry;
pub mod remote_run;
pub mod sampler;
pub mod schedule;
pub mod seeds;
pub mod shards;
pub mod split;
pub mod storage;
pub mod tasks;
pub mod tensorboard;
pub mod world;

use anyhow::Result;
use cli::Request;
use registry::Registry;

// Built-in plugin crates register themselves with `inventory`; referencing each crate keeps
// the linker from dropping it.
fn link_builtins() {
    ssl_builtin_datasets::link();
    ssl_builtin_transforms::link();
    ssl_builtin_batch_transforms::link();
    ssl_builtin_encoders::link();
    ssl_builtin_algorithms::link();
}

/// Runs `ssl-host` with the arguments after the program name.
pub fn run(args: Vec<String>) -> Result<()> {
    link_builtins();
    let mut cli = match cli::request(args)? {
        Request::Print(text) => {
            print!("{text}");
            return Ok(());
        }
        Request::Run(cli) => cli,
    };
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
        Some("pack") => commands::pack::run(&registry, &mut cli),
        Some("check-encoder") => commands::check_encoder::run(&registry, &mut cli),
        Some("preview") => commands::preview::run(&registry, &mut cli),
        Some("bench-data") => commands::bench_data::run(&registry, &mut cli),
        Some("predict") => commands::predict::run(&registry, &mut cli),
        Some("embed") => commands::embed::run(&registry, &mut cli),
        Some("evaluate") => evaluate::run(&registry, &mut cli),
        Some("export-encoder") => commands::export_encoder::run(&registry, &mut cli),
        Some("make-rsna-csv") => commands::rsna_csv::run(&mut cli),
        Some("train") | None => commands::train::run(&registry, &mut cli),
        Some("show-config") => commands::train::show(&registry, &mut cli),
        Some("inspect-checkpoint") => commands::inspect::run(&mut cli),
        Some(other) => anyhow::bail!("no code runs the command `{other}`"),
    }
}

/// What `ssl-host` prints for an error: `error: <what failed>`, then one `caused by: <why>`
/// line per cause in the chain, outermost first.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut text = format!("error: {error}\n");
    for cause in error.chain().skip(1) {
        text.push_str(&format!("caused by: {cause}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    #[test]
    fn errors_print_their_causes_one_per_line() {
        let error = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing metrics.csv")
            .context("ending epoch 3")
            .unwrap_err();
        assert_eq!(
            super::error_report(&error),
            "error: ending epoch 3\ncaused by: writing metrics.csv\ncaused by: disk full\n"
        );
        let plain = anyhow::anyhow!("no command given");
        assert_eq!(super::error_report(&plain), "error: no command given\n");
    }
}
