//! Model config files and `extends`: the TOML table of a named config (built in or a plugin's)
//! or of a `.toml` path, with its `extends = "BASE"` chain resolved.
//!
//! `extends` names another config the same way `--model` does (a relative `.toml` path is
//! relative to the extending file). The base is loaded first (recursively; a cycle is an
//! error that names it), then the file's own keys override it: tables merge key by key,
//! anything else (arrays of tables such as `[[ssl_augmentations]]` included) is replaced
//! whole. The `description` is never inherited: an extending config describes itself.

use super::BUILTIN_CONFIGS;
use crate::registry::{closest, Registry};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The key that names a config's base.
pub const EXTENDS: &str = "extends";

/// The table of model config `model` with its bases merged in (no `extends` key left).
pub fn load(model: &str, registry: &Registry) -> Result<Table> {
    load_chain(model, None, registry, &mut Vec::new())
}

/// Where a config comes from: its text, an identity for cycle detection and, for a file, its
/// folder (what a relative `extends` path is relative to).
struct Source {
    text: String,
    id: String,
    folder: Option<PathBuf>,
}

/// Whether `name` is a path rather than the name of a config.
fn is_path(name: &str) -> bool {
    name.ends_with(".toml") || name.contains('/')
}

fn source(name: &str, relative_to: Option<&Path>, registry: &Registry) -> Result<Source> {
    if is_path(name) {
        let path = match relative_to {
            Some(dir) if Path::new(name).is_relative() => dir.join(name),
            _ => PathBuf::from(name),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading model config {}", path.display()))?;
        let id = path
            .canonicalize()
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string();
        let folder = path.parent().map(Path::to_path_buf);
        return Ok(Source { text, id, folder });
    }
    let text = named_text(name, registry)?;
    Ok(Source {
        text,
        id: name.to_string(),
        folder: None,
    })
}

/// The TOML text of the named config `name`: a built-in one or a plugin's.
fn named_text(name: &str, registry: &Registry) -> Result<String> {
    if let Some((_, text)) = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name) {
        return Ok(text.to_string());
    }
    match registry.model_config(name) {
        Ok(m) => Ok(m.toml.clone()),
        Err(_) => {
            let mut known: Vec<&str> = BUILTIN_CONFIGS.iter().map(|(n, _)| *n).collect();
            let plugin_names = registry.model_config_names();
            known.extend(plugin_names.iter().map(String::as_str));
            let hint = closest(name, known.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            bail!(
                "unknown model config `{name}`{hint}; known: {}",
                known.join(", ")
            )
        }
    }
}

/// Loads `name` (relative to `relative_to` when a relative path); `chain` holds the configs
/// being loaded, outermost first, as (identity, name as written).
fn load_chain(
    name: &str,
    relative_to: Option<&Path>,
    registry: &Registry,
    chain: &mut Vec<(String, String)>,
) -> Result<Table> {
    let source = source(name, relative_to, registry)?;
    if chain.iter().any(|(id, _)| *id == source.id) {
        let names: Vec<&str> = chain.iter().map(|(_, n)| n.as_str()).collect();
        bail!(
            "model config `{}` extends itself: {} -> {name}",
            names[0],
            names.join(" -> ")
        );
    }
    let mut own: Table = source
        .text
        .parse()
        .map_err(|e| anyhow!("model config `{name}` is not valid TOML: {e}"))?;
    let Some(base) = own.remove(EXTENDS) else {
        return Ok(own);
    };
    let Value::String(base) = base else {
        bail!(
            "model config `{name}`: `{EXTENDS}` must be a string (a named config or a .toml path), got {base}"
        );
    };
    chain.push((source.id, name.to_string()));
    let mut table = load_chain(&base, source.folder.as_deref(), registry, chain)?;
    chain.pop();
    table.remove("description");
    merge(&mut table, own);
    Ok(table)
}

/// Overrides `base` with `own`: tables merge key by key, other values are replaced whole.
fn merge(base: &mut Table, own: Table) {
    for (key, value) in own {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(over)) => merge(inner, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::load(&[]).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn tables_merge_and_arrays_of_tables_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            "description = \"base\"\nnum_epochs = 3\nl_rate = 0.5\n\
             [encoder_params]\na = 1\nb = 2\n\
             [[ssl_augmentations]]\nname = \"X\"\n[[ssl_augmentations]]\nname = \"Y\"\n",
        );
        let child = write(
            dir.path(),
            "child.toml",
            "extends = \"base.toml\"\nnum_epochs = 4\n[encoder_params]\nb = 3\n\
             [[ssl_augmentations]]\nname = \"Z\"\n",
        );
        let t = load(&child, &registry()).unwrap();
        let expected: Table = "num_epochs = 4\nl_rate = 0.5\n[encoder_params]\na = 1\nb = 3\n\
             [[ssl_augmentations]]\nname = \"Z\"\n"
            .parse()
            .unwrap();
        assert_eq!(t, expected, "the description is not inherited");
    }

    #[test]
    fn a_file_may_extend_a_named_config() {
        let dir = tempfile::tempdir().unwrap();
        let child = write(
            dir.path(),
            "c.toml",
            "extends = \"ShapesBYOL\"\nssl_training_type = \"SimCLR\"\n",
        );
        let t = load(&child, &registry()).unwrap();
        assert_eq!(t["ssl_training_type"].as_str(), Some("SimCLR"));
        assert_eq!(t["ssl_encoder"].as_str(), Some("resnet18"));
        assert!(t["ssl_augmentations"]
            .as_array()
            .is_some_and(|a| a.len() == 4));
    }

    #[test]
    fn cycles_and_bad_bases_are_errors_that_name_them() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
        write(dir.path(), "b.toml", "extends = \"./a.toml\"\n");
        let a = dir.path().join("a.toml").display().to_string();
        let e = format!("{:#}", load(&a, &registry()).unwrap_err());
        assert!(e.contains("extends itself"), "{e}");
        assert!(e.contains("b.toml -> ./a.toml"), "{e}");
        let own = write(dir.path(), "self.toml", "extends = \"self.toml\"\n");
        let e = format!("{:#}", load(&own, &registry()).unwrap_err());
        assert!(e.contains("extends itself"), "{e}");
        let bad = write(dir.path(), "bad.toml", "extends = \"ShapesBYOl\"\n");
        let e = format!("{:#}", load(&bad, &registry()).unwrap_err());
        assert!(e.contains("did you mean `ShapesBYOL`"), "{e}");
        let typed = write(dir.path(), "typed.toml", "extends = 3\n");
        let e = format!("{:#}", load(&typed, &registry()).unwrap_err());
        assert!(e.contains("`extends` must be a string"), "{e}");
        let missing = write(dir.path(), "m.toml", "extends = \"nowhere.toml\"\n");
        let e = format!("{:#}", load(&missing, &registry()).unwrap_err());
        assert!(e.contains("nowhere.toml"), "{e}");
    }
}
