//! `ssl-host make-rsna-csv --labels=stage_2_train_labels.csv --out=DIR/dataset.csv`: the
//! `dataset.csv` (`subject,label`) that `RSNAKaggleCXR` reads, from Kaggle's label file (one
//! row per patientId, label = Target). The original leaves this step to the user.

use crate::cli::Cli;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn run(cli: &mut Cli) -> Result<()> {
    let labels = cli
        .take("labels")
        .context("make-rsna-csv needs --labels=PATH of Kaggle's stage_2_train_labels.csv")?;
    let out = cli.take("out").context(
        "make-rsna-csv needs --out=PATH of the dataset.csv to write (next to the .dcm files)",
    )?;
    cli.reject_leftovers(&[])?;
    let out = PathBuf::from(out);
    let subjects = ssl_builtin_datasets::build_rsna_dataset_csv(&PathBuf::from(&labels), &out)?;
    println!("wrote {} ({subjects} subjects)", out.display());
    Ok(())
}
