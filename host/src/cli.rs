//! Command-line parsing: `ssl-host [--plugin PATH]... [COMMAND] [--name=value]...`.
//!
//! `--plugin` may appear anywhere, any number of times. Every other `--name=value` is kept
//! in order for the command (config overrides, command options); a bare `--name` means
//! `--name=true`.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// What the user asked for.
#[derive(Debug, Default, PartialEq)]
pub struct Cli {
    /// `--plugin` paths, in order.
    pub plugins: Vec<PathBuf>,
    /// The command word (`list`, `dump`, ...), if any.
    pub command: Option<String>,
    /// `--name=value` pairs, in order.
    pub options: Vec<(String, String)>,
    /// `--help` was given.
    pub help: bool,
}

impl Cli {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli> {
        let mut cli = Cli::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--plugin" {
                match args.next() {
                    Some(path) if !path.starts_with("--") => cli.plugins.push(PathBuf::from(path)),
                    _ => bail!(
                        "--plugin needs a path to a plugin .so (e.g. --plugin ./libmy_plugin.so)"
                    ),
                }
            } else if let Some(path) = arg.strip_prefix("--plugin=") {
                if path.is_empty() {
                    bail!("--plugin= needs a path to a plugin .so");
                }
                cli.plugins.push(PathBuf::from(path));
            } else if arg == "--help" || arg == "-h" {
                cli.help = true;
            } else if let Some(option) = arg.strip_prefix("--") {
                let (name, value) = match option.split_once('=') {
                    Some((n, v)) => (n, v),
                    None => (option, "true"),
                };
                if name.is_empty() {
                    bail!("malformed option `{arg}`: expected --name=value");
                }
                cli.options.push((name.to_string(), value.to_string()));
            } else if arg.starts_with('-') {
                bail!("unknown flag `{arg}`: options are written --name=value");
            } else if cli.command.is_none() {
                cli.command = Some(arg);
            } else {
                bail!(
                    "unexpected argument `{arg}` (the command is already `{}`)",
                    cli.command.as_deref().unwrap_or("")
                );
            }
        }
        Ok(cli)
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

    /// Fails on options no one took, suggesting the closest of `known`.
    pub fn reject_leftovers(&self, known: &[&str]) -> Result<()> {
        if let Some((name, _)) = self.options.first() {
            let hint = crate::registry::closest(name, known.iter().copied())
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
        assert_eq!(
            cli.options,
            vec![("x".into(), "1".into()), ("resume".into(), "true".into())]
        );
    }

    #[test]
    fn malformed_arguments_are_errors() {
        assert!(parse(&["--plugin"]).is_err());
        assert!(parse(&["--plugin", "--x=1"]).is_err());
        assert!(parse(&["list", "extra"]).is_err());
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["--=3"]).is_err());
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
    }
}
