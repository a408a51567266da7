//! `ssl-host inspect-checkpoint --checkpoint=PATH`: what a checkpoint holds (its record and
//! every tensor with shape and type), for a user deciding what to resume or export.

use crate::checkpoint;
use crate::cli::Cli;
use crate::pretrained::{checkpoint_file, encoder_tensor_prefix};
use anyhow::{Context, Result};
use std::path::Path;

pub fn run(cli: &mut Cli) -> Result<()> {
    let path = cli
        .take("checkpoint")
        .context("inspect-checkpoint needs --checkpoint=PATH (a file or a run folder)")?;
    cli.reject_leftovers(&[])?;
    let path = checkpoint_file(Path::new(&path))?;
    let loaded = checkpoint::load(&path)?;
    let info = &loaded.info;
    println!("checkpoint {}", path.display());
    println!(
        "  model {}, algorithm {}, encoder {} {}",
        info.model, info.algorithm, info.encoder, info.encoder_params
    );
    println!(
        "  epochs done {}, optimizer steps {}{}",
        info.epochs_done,
        info.global_step,
        match info.precision.as_str() {
            "" => String::new(),
            precision => format!(", precision {precision}"),
        }
    );
    println!(
        "  embedding encoder: tensors under `{}`",
        encoder_tensor_prefix(info)
    );
    let mut names: Vec<&String> = loaded.tensors.keys().collect();
    names.sort();
    let total: i64 = loaded.tensors.values().map(|t| t.numel() as i64).sum();
    println!("  {} tensors, {} values", names.len(), total);
    for name in names {
        let t = &loaded.tensors[name];
        println!("  {name} {:?} {:?}", t.size(), t.kind());
    }
    Ok(())
}
