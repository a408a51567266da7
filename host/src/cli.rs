//! Command-line parsing: `ssl-host [--plugin PATH]... [COMMAND] [--name=value]...`.
//!
//! The commands, the options each one lists, `--help`, `--version` and the shell completions
//! come from one clap definition ([`Interface`]). What clap does not do is the InnerEye-style
//! override: any `--name=value` a command does not list (a config parameter, a dataset's or
//! an encoder's parameter) is handed to the command as it is, in order, and the command
//! decides, with a "did you mean" when a name is unknown. So the line is sorted before clap
//! sees it: the options a command lists (and `--plugin`, `--help`, `--version`) go to clap,
//! which checks their form; every other `--name=value` goes past it.
//!
//! `--plugin` may appear anywhere, any number of times. A bare `--name` means `--name=true`.
//! With no command, `--model=NAME` or `--resume` means `train`.

use anyhow::{anyhow, bail, Result};
use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use ssl_plugin_api::BuildInfo;
use std::path::PathBuf;

/// What the user asked for: a command to run, with its options.
#[derive(Debug, Default, PartialEq)]
pub struct Cli {
    /// `--plugin` paths, in order.
    pub plugins: Vec<PathBuf>,
    /// The command (`train`, `list`, `dump`, ...); `train` when only `--model`/`--resume`
    /// named one.
    pub command: Option<String>,
    /// Every `--name=value` except `--plugin`, in order (a bare `--name` is `true`).
    pub options: Vec<(String, String)>,
    /// The options the command lists in its `--help`: the suggestions for a misspelt one.
    pub listed: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// Print this text and stop: `--help`, `--version`, `completions`.
    Print(String),
    /// Run a command.
    Run(Cli),
}

/// The clap definition of `ssl-host`: commands, the options each lists, help text.
#[derive(Parser)]
#[command(
    name = "ssl-host",
    about = "Self-supervised training of image encoders (BYOL, SimCLR) on libtorch, with \
             datasets, transforms, encoders and algorithms as plugins.",
    override_usage = "ssl-host [--plugin PATH]... [COMMAND] [--name=value]...",
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
struct Interface {
    /// Load a plugin .so (repeatable, anywhere on the line)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        value_parser = NonEmptyStringValueParser::new(),
        display_order = 100
    )]
    plugin: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

const AFTER_HELP: &str = "\
With no command, --model=NAME or --resume runs `train`.
Options are written --name=value; a bare --name means --name=true. Any --name=value that a
command does not list goes on to it, in order: config parameters for train, show-config and
preview and bench-data (`ssl-host show-config --parameters` lists them), dataset parameters for dump,
pack, predict and embed, encoder parameters for check-encoder. An unknown name is an error that
suggests the closest known one. `ssl-host COMMAND --help` lists a command's options.";

/// The name of the command when only overrides are given.
const DEFAULT_COMMAND: &str = "train";

#[derive(Subcommand)]
enum Command {
    /// SSL or classifier training of a model config (the default when --model or --resume is
    /// given without a command)
    Train(TrainOptions),
    /// Print the resolved config of --model=NAME with its overrides, as config.toml has it
    ShowConfig(ShowConfigOptions),
    /// Print a checkpoint's record and its tensors
    InspectCheckpoint(InspectOptions),
    /// List every dataset, transform, encoder, algorithm and model config, with its source
    /// (built-in or plugin path) and version
    List(NoOptions),
    /// Write samples of a dataset as PNG files plus labels.csv
    Dump(DumpOptions),
    /// Write a split of a dataset as WebDataset tar shards with indexes, for the Packed
    /// dataset (pre-resized with --max_side)
    Pack(PackOptions),
    /// Write a PNG grid of SSL training samples with their two augmented views
    Preview(PreviewOptions),
    /// Measure the data path of a config's SSL training alone (read, decode, augment,
    /// collate, transfer): images/s in total and per worker thread
    BenchData(BenchDataOptions),
    /// Write the class probabilities of a classifier checkpoint for every image
    Predict(EvalOptions),
    /// Write the encoder features of an SSL or classifier checkpoint for every image
    Embed(EmbedOptions),
    /// Write the encoder of a checkpoint under torchvision's names
    ExportEncoder(ExportOptions),
    /// Compare encoders on a labelled dataset: linear probe and kNN at several label
    /// fractions, with confidence intervals, a leakage check, result tables and plots
    Evaluate(EvaluateOptions),
    /// Write dataset.csv (subject,label) for RSNAKaggleCXR from Kaggle's label file
    MakeRsnaCsv(RsnaCsvOptions),
    /// Run an encoder on a random batch, backpropagate a loss and take an optimizer step;
    /// report whether its parameters changed
    CheckEncoder(CheckEncoderOptions),
    /// Print a shell completion script (e.g. `ssl-host completions bash > ssl-host.bash`)
    Completions {
        /// The shell
        shell: Shell,
    },
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct TrainOptions {
    /// The model: a config in configs/, a plugin's, or a .toml path
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Continue the run in --output_dir (a folder or a run URL) from its last checkpoint (auto: when it has one, else start it there)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false|auto")]
    resume: Option<String>,
    /// The run folder (default outputs/<UTC time>_<model>/), or a run URL (s3://, az://, gs://, https://) to upload it to
    #[arg(long, value_name = "DIR|URL")]
    output_dir: Option<String>,
    /// Stop cleanly after N epochs (resume continues)
    #[arg(long, value_name = "N")]
    stop_after_epochs: Option<String>,
    /// Any config parameter (`ssl-host show-config --parameters` lists them)
    #[arg(value_name = "--name=value")]
    overrides: Vec<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct ShowConfigOptions {
    /// The model: a config in configs/, a plugin's, or a .toml path
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// List every config parameter with its default and meaning instead
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    parameters: Option<String>,
    /// Any config parameter
    #[arg(value_name = "--name=value")]
    overrides: Vec<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct InspectOptions {
    /// The checkpoint: a .safetensors file, a run folder or a run URL (required)
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<String>,
}

#[derive(Args)]
struct NoOptions {}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct PackOptions {
    /// The dataset (required; `ssl-host list` names them)
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// The folder (or the s3://, az://, gs:// or https:// URL) to write the shards and index.json into (required)
    #[arg(long, value_name = "DIR|URL")]
    output: Option<String>,
    /// Where the dataset's files are
    #[arg(long, value_name = "DIR")]
    local_dataset: Option<String>,
    /// train (default) or test
    #[arg(long, value_name = "SPLIT")]
    split: Option<String>,
    /// Resize images whose longer side is over N pixels to N (bilinear, as Resize)
    #[arg(long, value_name = "N")]
    max_side: Option<String>,
    /// npy (raw pixels, default) or png (lossless)
    #[arg(long, value_name = "npy|png")]
    encoding: Option<String>,
    /// Start a new shard once one holds this many MB (default 256)
    #[arg(long, value_name = "MB")]
    shard_size: Option<String>,
    /// Start a new shard once one holds this many samples (default: no limit)
    #[arg(long, value_name = "N")]
    shard_samples: Option<String>,
    /// Skip and count samples that cannot be read instead of stopping
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    skip_unreadable_images: Option<String>,
    /// Threads reading samples (default: every core)
    #[arg(long, value_name = "N")]
    num_workers: Option<String>,
    /// Any parameter of the dataset
    #[arg(value_name = "--<dataset parameter>=value")]
    dataset_parameters: Vec<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct DumpOptions {
    /// The dataset (required; `ssl-host list` names them)
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// The folder to write (required)
    #[arg(long, value_name = "DIR")]
    out: Option<String>,
    /// Where the dataset's files are
    #[arg(long, value_name = "DIR")]
    local_dataset: Option<String>,
    /// Write at most N samples
    #[arg(long, value_name = "N")]
    limit: Option<String>,
    /// train (default) or test
    #[arg(long, value_name = "SPLIT")]
    split: Option<String>,
    /// Any parameter of the dataset
    #[arg(value_name = "--<dataset parameter>=value")]
    dataset_parameters: Vec<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct PreviewOptions {
    /// The model: a config in configs/, a plugin's, or a .toml path (required)
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// The PNG to write (required)
    #[arg(long, value_name = "FILE.png")]
    out: Option<String>,
    /// How many samples (default 8)
    #[arg(long, value_name = "N")]
    count: Option<String>,
    /// Any config parameter
    #[arg(value_name = "--name=value")]
    overrides: Vec<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct BenchDataOptions {
    /// The model: a config in configs/, a plugin's, or a .toml path (required)
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// How many batches to time, after 2 warm-up batches (default 20)
    #[arg(long, value_name = "N")]
    batches: Option<String>,
    /// Read, decode and collate only (one untransformed view): the CPU's share when augmentation runs on the device
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    loader_only: Option<String>,
    /// Any config parameter (num_workers, augment_on, ssl_training_batch_size, ...)
    #[arg(value_name = "--name=value")]
    overrides: Vec<String>,
}

/// The loader and device options of the commands that read a dataset through an encoder
/// (`predict`, `embed`, `evaluate`), and the dataset parameters after them.
#[derive(Args)]
#[command(rename_all = "snake_case")]
struct LoaderOptions {
    /// Images per batch (default 64)
    #[arg(long, value_name = "N")]
    batch_size: Option<String>,
    /// Loader threads (default: the cores, at most 4)
    #[arg(long, value_name = "N")]
    num_workers: Option<String>,
    /// cpu, cuda or cuda:N (default: cuda when there is one)
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Any parameter of the dataset
    #[arg(value_name = "--<dataset parameter>=value")]
    dataset_parameters: Vec<String>,
}

/// The options `predict` and `embed` share.
#[derive(Args)]
#[command(rename_all = "snake_case")]
struct EvalOptions {
    /// The checkpoint: a .safetensors file, a run folder or a run URL (required)
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<String>,
    /// The dataset of the images (required; `ssl-host list` names them)
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Where the dataset's files are
    #[arg(long, value_name = "DIR")]
    local_dataset: Option<String>,
    /// The file to write (required): .csv, or for embed .csv or .npy
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
    /// train (default) or test
    #[arg(long, value_name = "SPLIT")]
    split: Option<String>,
    #[command(flatten)]
    loader: LoaderOptions,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct EmbedOptions {
    #[command(flatten)]
    eval: EvalOptions,
    /// Resize and center-crop the images to N pixels first
    #[arg(long, value_name = "N")]
    image_size: Option<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct EvaluateOptions {
    /// An encoder to compare (give it several times): a run folder or URL, a checkpoint,
    /// NAME:WEIGHTS.safetensors (torchvision names) or random:NAME (untrained)
    #[arg(long, value_name = "ENCODER", action = clap::ArgAction::Append)]
    encoder: Vec<String>,
    /// The labelled dataset (required; `ssl-host list` names them); its train split trains
    /// the probes, its test split scores them
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Where the dataset's files are (a folder, URL or catalogue name)
    #[arg(long, value_name = "DIR")]
    local_dataset: Option<String>,
    /// Where to write the results (default: a new folder outputs/<UTC time>_evaluate)
    #[arg(long, value_name = "DIR")]
    output_dir: Option<String>,
    /// Comma-separated: linear, knn (default both)
    #[arg(long, value_name = "LIST")]
    protocols: Option<String>,
    /// Comma-separated shares of the training labels for the linear probe (default 0.01,0.1,1)
    #[arg(long, value_name = "LIST")]
    label_fractions: Option<String>,
    /// Seeds per label fraction (default 3)
    #[arg(long, value_name = "N")]
    seeds: Option<String>,
    /// Bootstrap resamples of the test set for 95% intervals (default 1000; 0: none)
    #[arg(long, value_name = "N")]
    bootstrap: Option<String>,
    /// A folder of the same dataset kind whose images are the test set (instead of the
    /// dataset's test split), e.g. the test folder of an ImageFolder
    #[arg(long, value_name = "DIR")]
    test_local_dataset: Option<String>,
    /// The share of the training split held out as the test set when the dataset has no
    /// test split (default 0.2, by patient where there are patients)
    #[arg(long, value_name = "FRACTION")]
    test_fraction: Option<String>,
    /// Resize and center-crop the images to N pixels (default: the dataset's evaluation
    /// transform)
    #[arg(long, value_name = "N")]
    image_size: Option<String>,
    /// Stop with an error when an encoder saw test images in its training
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    strict: Option<String>,
    /// Extract features again instead of reading the feature cache
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    no_feature_cache: Option<String>,
    #[command(flatten)]
    loader: LoaderOptions,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct ExportOptions {
    /// The checkpoint: a .safetensors file, a run folder or a run URL (required)
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<String>,
    /// The .safetensors file to write (required)
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct RsnaCsvOptions {
    /// Kaggle's stage_2_train_labels.csv (required)
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// The dataset.csv to write, next to the .dcm files (required)
    #[arg(long, value_name = "PATH")]
    out: Option<String>,
}

#[derive(Args)]
#[command(rename_all = "snake_case")]
struct CheckEncoderOptions {
    /// The encoder (required; `ssl-host list` names them)
    #[arg(long, value_name = "NAME")]
    encoder: Option<String>,
    /// Height and width of the random images (default 32)
    #[arg(long, value_name = "N")]
    image_size: Option<String>,
    /// Images in the batch (default 4)
    #[arg(long, value_name = "N")]
    batch_size: Option<String>,
    /// Any parameter of the encoder
    #[arg(value_name = "--<encoder parameter>=value")]
    encoder_parameters: Vec<String>,
}

/// `ssl-host --version`: this version and what it was built against.
pub fn version() -> String {
    let build = BuildInfo::current();
    let torch = match (&build.tch, &build.libtorch, &build.libtorch_variant) {
        (Some(tch), Some(libtorch), Some(variant)) => {
            format!("tch {tch}, libtorch {libtorch} ({variant} build)")
        }
        _ => "no libtorch".to_string(),
    };
    let collectives = if crate::dist::has_nccl() {
        "gloo, nccl"
    } else {
        "gloo"
    };
    format!(
        "{} (plugin-api {}, {torch}; collectives: {collectives})",
        env!("CARGO_PKG_VERSION"),
        build.plugin_api
    )
}

/// The clap command of `ssl-host`. Listed options are written `--name=value` (`--plugin`
/// also `--plugin PATH`); a listed option given twice keeps the last value, as overrides do.
fn interface() -> clap::Command {
    let equals = |arg: clap::Arg| {
        if arg.get_long().is_some() && arg.get_id() != "plugin" {
            arg.require_equals(true)
        } else {
            arg
        }
    };
    Interface::command()
        .version(version())
        .mut_subcommands(move |command| command.args_override_self(true).mut_args(equals))
}

/// The `--name` of an argument, if it is one (`--name=value` or `--name`).
fn option_name(arg: &str) -> Option<&str> {
    let option = arg.strip_prefix("--")?;
    Some(option.split_once('=').map_or(option, |(name, _)| name))
}

/// Whether `command` lists `--name` (its own options, `--plugin`, `--help`, `--version`).
fn lists(command: &clap::Command, name: &str) -> bool {
    command.get_arguments().any(|a| a.get_long() == Some(name))
}

/// The message of a clap error without clap's own `error: ` prefix (main adds it).
fn clap_message(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let text = text.trim_end();
    text.strip_prefix("error: ").unwrap_or(text).to_string()
}

/// Parses the arguments after the program name.
pub fn request(args: impl IntoIterator<Item = String>) -> Result<Request> {
    let args: Vec<String> = args.into_iter().collect();
    let mut interface = interface();
    interface.build();

    // The command word: the first argument that is neither an option nor `--plugin`'s path.
    // Every `--plugin` has its path.
    let mut command_at = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--plugin" {
            if args.get(i + 1).is_none_or(|path| path.starts_with("--")) {
                bail!("--plugin needs a path to a plugin .so (e.g. --plugin ./libmy_plugin.so)");
            }
            i += 2;
        } else if args[i].starts_with('-') {
            i += 1;
        } else {
            command_at.get_or_insert(i);
            i += 1;
        }
    }
    let asks_help = args
        .iter()
        .any(|a| matches!(a.as_str(), "-h" | "--help" | "-V" | "--version"));
    let command = match command_at {
        Some(at) => {
            let word = args[at].as_str();
            if interface.find_subcommand(word).is_none() {
                let names: Vec<&str> = interface.get_subcommands().map(|c| c.get_name()).collect();
                let hint = crate::registry::closest(word, names.iter().copied())
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                bail!("unknown command `{word}`{hint}; `ssl-host --help` lists the commands");
            }
            Some(word.to_string())
        }
        None if asks_help => None,
        None if args
            .iter()
            .any(|a| matches!(option_name(a), Some("model" | "resume"))) =>
        {
            Some(DEFAULT_COMMAND.to_string())
        }
        None => bail!(
            "no command given: name one (`ssl-host --help` lists them), or give --model=NAME \
             to train"
        ),
    };
    let scope = match &command {
        Some(name) => interface
            .find_subcommand(name)
            .expect("the command was found above")
            .clone(),
        None => interface.clone(),
    };

    // Sort the line: what the command lists goes to clap, other options go past it.
    let mut for_clap = vec!["ssl-host".to_string()];
    for_clap.extend(command.clone());
    let mut cli = Cli {
        command: command.clone(),
        ..Cli::default()
    };
    let mut stray = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if Some(i - 1) == command_at {
            continue;
        }
        if arg == "--plugin" {
            let path = &args[i]; // checked above
            cli.plugins.push(PathBuf::from(path));
            for_clap.extend([arg.clone(), path.clone()]);
            i += 1;
        } else if let Some(option) = arg.strip_prefix("--") {
            let (name, value) = option.split_once('=').unwrap_or((option, "true"));
            if name.is_empty() {
                bail!("malformed option `{arg}`: expected --name=value");
            }
            let listed = lists(&scope, name);
            if name == "plugin" {
                cli.plugins.push(PathBuf::from(value));
            } else if !(listed && matches!(name, "help" | "version")) {
                cli.options.push((name.to_string(), value.to_string()));
            }
            if listed {
                for_clap.push(arg.clone());
            }
        } else if matches!(arg.as_str(), "-h" | "-V") {
            for_clap.push(arg.clone());
        } else if arg.starts_with('-') {
            bail!("unknown flag `{arg}`: options are written --name=value");
        } else if command.as_deref() == Some("completions") {
            for_clap.push(arg.clone());
        } else {
            stray.get_or_insert_with(|| {
                anyhow!(
                    "unexpected argument `{arg}` (the command is already `{}`; options are \
                     written --name=value)",
                    command.as_deref().unwrap_or_default()
                )
            });
        }
    }

    let matches = match interface.try_get_matches_from_mut(&for_clap) {
        Ok(matches) => matches,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Request::Print(e.render().to_string()));
        }
        Err(e) => bail!("{}", clap_message(&e)),
    };
    if let Some(error) = stray {
        return Err(error);
    }
    if let Some(("completions", sub)) = matches.subcommand() {
        let shell = *sub
            .get_one::<Shell>("shell")
            .expect("clap requires the shell");
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut interface, "ssl-host", &mut script);
        return Ok(Request::Print(String::from_utf8(script)?));
    }
    cli.listed = scope
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|name| !matches!(*name, "plugin" | "help" | "version"))
        .map(str::to_string)
        .collect();
    Ok(Request::Run(cli))
}

impl Cli {
    /// Parses a line that runs a command (not `--help`, `--version` or `completions`).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli> {
        match request(args)? {
            Request::Run(cli) => Ok(cli),
            Request::Print(_) => bail!("the line asks for help or a script, not a command"),
        }
    }

    /// Takes the option `name` out of the list (last one wins).
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.options.retain(|(n, v)| {
            if n == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Takes every `--name=value` of `name`, in order (for options given several times, such
    /// as evaluate's `--encoder`).
    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        self.options.retain(|(n, v)| {
            if n == name {
                found.push(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Fails on options no one took, suggesting the closest of `known` and of the options the
    /// command lists.
    pub fn reject_leftovers(&self, known: &[&str]) -> Result<()> {
        if let Some((name, _)) = self.options.first() {
            let candidates = known
                .iter()
                .copied()
                .chain(self.listed.iter().map(String::as_str));
            let hint = crate::registry::closest(name, candidates)
                .map(|c| format!(" (did you mean --{c}?)"))
                .unwrap_or_default();
            bail!("unknown option --{name}{hint}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli> {
        Cli::parse(args.iter().map(|s| s.to_string()))
    }

    fn printed(args: &[&str]) -> String {
        match request(args.iter().map(|s| s.to_string())).unwrap() {
            Request::Print(text) => text,
            Request::Run(cli) => panic!("expected text to print, got {cli:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", parse(args).unwrap_err())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plugins_anywhere_and_options_in_order() {
        let cli = parse(&[
            "--plugin",
            "a.so",
            "list",
            "--x=1",
            "--plugin=b.so",
            "--resume",
        ])
        .unwrap();
        assert_eq!(
            cli.plugins,
            vec![PathBuf::from("a.so"), PathBuf::from("b.so")]
        );
        assert_eq!(cli.command.as_deref(), Some("list"));
        assert_eq!(cli.options, pairs(&[("x", "1"), ("resume", "true")]));
    }

    #[test]
    fn listed_and_unlisted_options_keep_their_order() {
        let cli = parse(&[
            "dump",
            "--len=3",
            "--dataset=Shapes",
            "--plugin",
            "p.so",
            "--grey",
            "--limit=2",
            "--len=4",
            "--dataset=Other",
        ])
        .unwrap();
        assert_eq!(cli.plugins, vec![PathBuf::from("p.so")]);
        assert_eq!(
            cli.options,
            pairs(&[
                ("len", "3"),
                ("dataset", "Shapes"),
                ("grey", "true"),
                ("limit", "2"),
                ("len", "4"),
                ("dataset", "Other"),
            ])
        );
        let mut cli = cli;
        assert_eq!(cli.take("dataset").as_deref(), Some("Other"));
    }

    #[test]
    fn overrides_without_a_command_mean_train() {
        let cli = parse(&[
            "--model=ShapesBYOL",
            "--num_epoch=3",
            "--encoder_params.cifar_stem=true",
            "--plugin=x.so",
        ])
        .unwrap();
        assert_eq!(cli.command.as_deref(), Some("train"));
        assert_eq!(cli.plugins, vec![PathBuf::from("x.so")]);
        assert_eq!(
            cli.options,
            pairs(&[
                ("model", "ShapesBYOL"),
                ("num_epoch", "3"),
                ("encoder_params.cifar_stem", "true"),
            ])
        );
        let cli = parse(&["--resume", "--output_dir=run"]).unwrap();
        assert_eq!(cli.command.as_deref(), Some("train"));
        let cli = parse(&[
            "show-config",
            "--model=ShapesBYOL",
            "--encoder_params.cifar_stem=true",
        ])
        .unwrap();
        assert_eq!(cli.command.as_deref(), Some("show-config"));
        assert_eq!(
            cli.options,
            pairs(&[
                ("model", "ShapesBYOL"),
                ("encoder_params.cifar_stem", "true")
            ])
        );
    }

    #[test]
    fn malformed_arguments_are_errors() {
        assert!(error(&["--plugin"]).contains("--plugin needs a path"));
        assert!(error(&["--plugin", "--x=1", "list"]).contains("--plugin needs a path"));
        assert!(error(&["--plugin=", "list"]).contains("--plugin"));
        assert!(error(&["list", "extra"]).contains("unexpected argument `extra`"));
        assert!(error(&["list", "-x"]).contains("unknown flag `-x`"));
        assert!(error(&["list", "--=3"]).contains("malformed option `--=3`"));
        assert!(error(&[]).contains("no command given"));
        assert!(error(&["--num_epochs=3"]).contains("no command given"));
    }

    #[test]
    fn listed_options_are_written_with_equals() {
        // `--out DIR` is not `--out=DIR`: the listed option says so.
        let err = error(&["dump", "--dataset=Shapes", "--out", "dir"]);
        assert!(
            err.contains("equal sign is needed") && err.contains("--out"),
            "{err}"
        );
        // An unlisted option given bare is `true`, as before.
        let cli = parse(&["dump", "--dataset=Shapes", "--grey"]).unwrap();
        assert_eq!(cli.options[1], ("grey".into(), "true".into()));
    }

    #[test]
    fn unknown_commands_get_a_suggestion() {
        let err = error(&["trian", "--model=ShapesBYOL"]);
        assert!(
            err.contains("unknown command `trian`") && err.contains("did you mean `train`"),
            "{err}"
        );
        let err = error(&["--plugin", "a.so", "dupm"]);
        assert!(err.contains("did you mean `dump`"), "{err}");
    }

    #[test]
    fn take_and_leftovers() {
        let mut cli = parse(&["dump", "--out=o", "--limt=3"]).unwrap();
        assert_eq!(cli.take("out").as_deref(), Some("o"));
        let err = cli
            .reject_leftovers(&["limit", "dataset"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--limt") && err.contains("did you mean --limit"),
            "{err}"
        );
        // The options a command lists are suggestions without being named again.
        let mut cli = parse(&["inspect-checkpoint", "--checkpont=x"]).unwrap();
        assert_eq!(cli.take("checkpoint"), None);
        let err = cli.reject_leftovers(&[]).unwrap_err().to_string();
        assert!(err.contains("did you mean --checkpoint"), "{err}");
    }

    #[test]
    fn help_of_each_command_lists_its_options() {
        let top = printed(&["--help"]);
        for command in [
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
            "completions",
        ] {
            assert!(top.contains(command), "--help lacks {command}:\n{top}");
        }
        assert!(top.contains("--plugin <PATH>"), "{top}");
        let dump = printed(&["dump", "--help"]);
        for option in ["--dataset=<NAME>", "--out=<DIR>", "--limit=<N>", "--split"] {
            assert!(dump.contains(option), "dump --help lacks {option}:\n{dump}");
        }
        let embed = printed(&["--plugin=x.so", "embed", "--help", "--len=3"]);
        assert!(
            embed.contains("--image_size=<N>") && embed.contains("--checkpoint=<PATH>"),
            "{embed}"
        );
        assert_eq!(printed(&["-h"]), top);
    }

    #[test]
    fn version_names_what_it_was_built_against() {
        let text = printed(&["--version"]);
        let build = BuildInfo::current();
        assert!(text.starts_with("ssl-host "), "{text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(
            text.contains(&format!("plugin-api {}", build.plugin_api)),
            "{text}"
        );
        let libtorch = build.libtorch.expect("the host is built with libtorch");
        assert!(
            text.contains(&format!("libtorch {libtorch}")),
            "{text} lacks {libtorch}"
        );
        assert!(
            text.contains(&format!("tch {}", build.tch.unwrap())),
            "{text}"
        );
        // After a command, --version is an option like any other.
        let cli = parse(&["dump", "--version"]).unwrap();
        assert_eq!(cli.options, pairs(&[("version", "true")]));
    }

    #[test]
    fn completions_for_each_shell() {
        for shell in ["bash", "zsh", "fish"] {
            let script = printed(&["completions", shell]);
            assert!(
                script.contains("ssl-host")
                    && script.contains("show-config")
                    && script.contains("stop_after_epochs"),
                "{shell}:\n{script}"
            );
        }
        assert!(error(&["completions", "tcsh"]).contains("tcsh"));
        assert!(error(&["completions"]).contains("<SHELL>"));
    }
}
