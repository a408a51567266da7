//! How a run-config parameter is read and shown, derived from its Rust type: the kind of
//! command-line value it takes, the type name and default of `show-config --parameters`, and
//! the typed check of a TOML value with an error that names the parameter.

use super::schema::Fields;
use super::{RunConfig, TransformSpec, ViewGroup};
use crate::optim::OptimizerKind;
use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

/// What a parameter holds, for parsing command-line values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Text (also the choices of an enum).
    Str,
    /// A whole number.
    Int,
    /// A number.
    Float,
    /// `true` or `false`.
    Bool,
    /// A list of strings (`a,b` or `["a", "b"]`).
    StrList,
    /// A table, set entry by entry (`--name.key=value`).
    Table,
    /// A list of tables (only in config files).
    TableList,
}

/// The Rust type of a parameter: how the command line gives it and what help calls it.
pub trait ParamType: Serialize + DeserializeOwned {
    /// The kind of command-line value.
    const KIND: Kind;
    /// The type as `show-config --parameters` names it.
    fn type_name() -> String;
}

macro_rules! param_types {
    ($($ty:ty => $kind:ident, $name:literal;)*) => {
        $(impl ParamType for $ty {
            const KIND: Kind = Kind::$kind;
            fn type_name() -> String {
                $name.to_string()
            }
        })*
    };
}

param_types! {
    String => Str, "string";
    usize => Int, "integer";
    u64 => Int, "integer";
    f64 => Float, "number";
    bool => Bool, "bool";
    Vec<String> => StrList, "list of strings";
    Table => Table, "table";
    Vec<TransformSpec> => TableList, "list of transforms";
    Vec<ViewGroup> => TableList, "list of view groups";
}

impl<T: ParamType> ParamType for Option<T> {
    const KIND: Kind = T::KIND;
    fn type_name() -> String {
        T::type_name()
    }
}

// The optimizer choice lives with the optimizers; it is read and written as its name.
super::schema::serde_as_name!(OptimizerKind);

/// A parameter of [`RunConfig`] reached by name.
pub trait Param {
    /// The kind of command-line value it takes.
    fn kind(&self) -> Kind;
    /// Its type, for help.
    fn type_name(&self) -> String;
    /// Sets it from a TOML value; the error says what was expected.
    fn set(&mut self, value: Value) -> Result<(), String>;
    /// Its value as TOML (`None` when unset).
    fn value(&self) -> Option<Value>;
}

impl<T: ParamType> Param for T {
    fn kind(&self) -> Kind {
        T::KIND
    }

    fn type_name(&self) -> String {
        T::type_name()
    }

    fn set(&mut self, value: Value) -> Result<(), String> {
        *self = T::deserialize(value).map_err(|e| e.message().to_string())?;
        Ok(())
    }

    fn value(&self) -> Option<Value> {
        Value::try_from(self).ok()
    }
}

/// Parses a command-line value for a parameter of `kind`.
pub(super) fn parse_value(name: &str, kind: Kind, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("--{name}={text}: expected {what}");
    Ok(match kind {
        Kind::Str => Value::String(text.to_string()),
        Kind::Int => Value::Integer(
            text.trim()
                .parse::<i64>()
                .map_err(|_| bad("a whole number"))?,
        ),
        Kind::Float => Value::Float(text.trim().parse::<f64>().map_err(|_| bad("a number"))?),
        Kind::Bool => Value::Boolean(match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::StrList => {
            let t = text.trim();
            if t.starts_with('[') {
                let parsed: Table = format!("v = {t}")
                    .parse()
                    .map_err(|_| bad("a list like [\"a\", \"b\"]"))?;
                parsed["v"].clone()
            } else if t.is_empty() {
                Value::Array(Vec::new())
            } else {
                Value::Array(
                    t.split(',')
                        .map(|s| Value::String(s.trim().to_string()))
                        .collect(),
                )
            }
        }
        Kind::Table | Kind::TableList => {
            return Err(format!(
                "--{name} is a table; set its entries with --{name}.KEY=value"
            ));
        }
    })
}

/// A value inside a plugin parameter table: TOML literal when it parses, else a string.
pub(super) fn parse_loose(text: &str) -> Value {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

/// One parameter as `show-config --parameters` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParameterInfo {
    /// Its name (`--name=value`).
    pub name: &'static str,
    /// Its type (`integer`, `adam | sgd | lars`, ...).
    pub type_name: String,
    /// Its default as TOML (`none` when unset by default).
    pub default: String,
    /// Its doc line.
    pub doc: &'static str,
}

/// Every parameter of [`RunConfig`] with its type, default and doc line, in declaration order.
pub fn parameters() -> Vec<ParameterInfo> {
    let defaults = RunConfig::default();
    <RunConfig as Fields<dyn Param>>::FIELDS
        .iter()
        .map(|f| {
            let param = defaults.field(f.name).expect("a field of the table");
            ParameterInfo {
                name: f.name,
                type_name: param.type_name(),
                default: param
                    .value()
                    .map_or_else(|| "none".to_string(), |v| v.to_string()),
                doc: f.help(),
            }
        })
        .collect()
}

/// Two lines per parameter: `--name (type, default: value)` and its doc line.
pub fn parameter_help() -> String {
    parameters()
        .iter()
        .map(|p| {
            format!(
                "  --{} ({}, default: {})\n        {}\n",
                p.name, p.type_name, p.default, p.doc
            )
        })
        .collect()
}

/// Reads a struct with `#[serde(deny_unknown_fields)]`-like strictness from a TOML table,
/// field by field, so that an error names the parameter.
pub(super) fn from_table(table: Table) -> Result<RunConfig, String> {
    let mut config = RunConfig::default();
    for (name, value) in table {
        let param = config
            .field_mut(&name)
            .ok_or_else(|| super::unknown(&name).to_string())?;
        param.set(value).map_err(|e| format!("`{name}`: {e}"))?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_has_a_type_a_default_and_a_doc_line() {
        let all = parameters();
        assert!(all.len() > 40);
        for p in &all {
            assert!(!p.doc.is_empty(), "{} has no doc line", p.name);
            assert!(!p.type_name.is_empty() && !p.default.is_empty());
        }
        let find = |n: &str| all.iter().find(|p| p.name == n).unwrap().clone();
        let epochs = find("num_epochs");
        assert_eq!(
            (epochs.type_name.as_str(), epochs.default.as_str()),
            ("integer", "100")
        );
        assert_eq!(find("optimizer").type_name, "adam | adamw | sgd | lars");
        assert_eq!(find("optimizer").default, "\"adam\"");
        assert_eq!(find("task").type_name, "ssl | classifier");
        assert_eq!(find("local_dataset").default, "none");
        assert_eq!(find("gradient_clip_val").default, "0.0");
        let help = parameter_help();
        assert!(
            help.contains("  --l_rate (number, default: 0.0001)\n        base learning rate"),
            "{help}"
        );
    }

    #[test]
    fn values_are_checked_by_type_naming_the_parameter() {
        let mut t = Table::new();
        t.insert("num_epochs".into(), Value::Integer(-1));
        let e = from_table(t).unwrap_err();
        assert!(e.starts_with("`num_epochs`: ") && e.contains("-1"), "{e}");
        let mut t = Table::new();
        t.insert("optimizer".into(), Value::String("nadam".into()));
        let e = from_table(t).unwrap_err();
        assert_eq!(
            e,
            "`optimizer`: unknown optimizer `nadam` (choices: adam, adamw, sgd, lars)"
        );
        let mut t = Table::new();
        t.insert("lr_schedul".into(), Value::String("constant".into()));
        let e = from_table(t).unwrap_err();
        assert!(e.contains("did you mean `lr_schedule`"), "{e}");
    }
}
