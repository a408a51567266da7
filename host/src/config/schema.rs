//! Settings defined once: the [`settings!`] macro turns one list of fields, each a doc line,
//! a name, a type and a default, into the struct, its `Default` and a table of its fields
//! ([`Fields`]) that reaches each field by name as a trait object of the concern's own trait
//! (the run config's [`Param`](super::Param), the augmentation YAML's node). Lists of names,
//! help text, parsing, unknown-name suggestions and defaults are all derived from that list,
//! so a parameter is added in one place.
//!
//! It deliberately knows nothing about TOML, YAML or the command line: each concern says how
//! its values are read through its trait.

/// One field of a settings struct: its name and its doc line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name (as written in the config file).
    pub name: &'static str,
    /// Its doc comment, as written (leading space included; see [`Field::help`]).
    pub doc: &'static str,
}

impl Field {
    /// The doc line without its surrounding spaces.
    pub fn help(&self) -> &'static str {
        self.doc.trim()
    }
}

/// A struct written with [`settings!`]: its fields by name, each as a `D` trait object.
pub trait Fields<D: ?Sized> {
    /// Every field in declaration order.
    const FIELDS: &'static [Field];

    /// The field called `name`.
    fn field(&self, name: &str) -> Option<&D>;

    /// The field called `name`, to set it.
    fn field_mut(&mut self, name: &str) -> Option<&mut D>;

    /// The field names in declaration order.
    fn names() -> Vec<&'static str> {
        Self::FIELDS.iter().map(|f| f.name).collect()
    }
}

/// Writes a settings struct from one list of fields:
///
/// ```ignore
/// settings! {
///     /// What the struct is.
///     #[derive(Clone, Debug)]
///     pub struct Name as dyn NodeTrait {
///         hidden {
///             /// A field that is not a setting (not in the field table).
///             #[serde(skip)]
///             model: String = String::new(),
///         }
///         /// One doc line per setting.
///         field_name: Type = default_expression,
///     }
/// }
/// ```
///
/// Every field is `pub`; `Default` gives the defaults; [`Fields`] (over `dyn NodeTrait`,
/// which every field type must implement) lists the settings and reaches them by name.
/// Attributes after the doc line (e.g. `#[serde(...)]`) are passed on to the field.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident as dyn $node:path {
            $(hidden {
                $(
                    #[doc = $hdoc:literal]
                    $(#[$hmeta:meta])*
                    $hfield:ident : $hty:ty = $hdefault:expr,
                )*
            })?
            $(
                #[doc = $doc:literal]
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(
                #[doc = $hdoc]
                $(#[$hmeta])*
                pub $hfield: $hty,
            )*)?
            $(
                #[doc = $doc]
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($($hfield: $hdefault,)*)?
                    $($field: $default,)*
                }
            }
        }

        impl $crate::config::schema::Fields<dyn $node> for $name {
            const FIELDS: &'static [$crate::config::schema::Field] = &[
                $($crate::config::schema::Field { name: stringify!($field), doc: $doc },)*
            ];

            fn field(&self, name: &str) -> Option<&(dyn $node + 'static)> {
                match name {
                    $(stringify!($field) => Some(&self.$field as &(dyn $node + 'static)),)*
                    _ => None,
                }
            }

            fn field_mut(&mut self, name: &str) -> Option<&mut (dyn $node + 'static)> {
                match name {
                    $(stringify!($field) => Some(&mut self.$field as &mut (dyn $node + 'static)),)*
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use settings;

/// Writes a closed set of named choices: the enum, `NAMES`, `as_str`, `Display`, `FromStr`
/// (whose error names `what` and lists the choices) and serde as the name. A choice may have
/// aliases after its name (`| "alias"`), accepted when read and never written:
///
/// ```ignore
/// choices! {
///     /// What it is.
///     pub enum Task("task") {
///         /// Doc of the variant.
///         Ssl = "ssl" | "self_supervised",
///     }
/// }
/// ```
macro_rules! choices {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($what:literal) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $text:literal $(| $alias:literal)*,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every accepted name, in the order of the variants.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name of this choice.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = anyhow::Error;

            fn from_str(s: &str) -> anyhow::Result<Self> {
                match s {
                    $($text $(| $alias)* => Ok($name::$variant),)+
                    other => anyhow::bail!(
                        "unknown {} `{other}` (choices: {})",
                        $what,
                        Self::NAMES.join(", ")
                    ),
                }
            }
        }

        $crate::config::schema::serde_as_name!($name);
    };
}

pub(crate) use choices;

/// Serde for a choice type with `NAMES`, `as_str` and `FromStr`: written and read as its name,
/// and a config parameter whose type is the list of names.
macro_rules! serde_as_name {
    ($name:ty) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = $crate::config::schema::deserialize_name(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl $crate::config::ParamType for $name {
            const KIND: $crate::config::Kind = $crate::config::Kind::Str;

            fn type_name() -> String {
                <$name>::NAMES.join(" | ")
            }
        }
    };
}

pub(crate) use serde_as_name;

/// Reads a choice's name: a string, or a whole number as its digits (a config file's
/// `precision = 16`, as Lightning's `precision=16`).
pub fn deserialize_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Name;

    impl serde::de::Visitor<'_> for Name {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    d.deserialize_any(Name)
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Show {
        fn show(&self) -> String;
    }

    impl Show for u32 {
        fn show(&self) -> String {
            self.to_string()
        }
    }

    impl Show for String {
        fn show(&self) -> String {
            format!("{self:?}")
        }
    }

    settings! {
        /// A test struct.
        #[derive(Debug, PartialEq)]
        struct Demo as dyn Show {
            hidden {
                /// Not a setting.
                secret: bool = true,
            }
            /// a count
            count: u32 = 3,
            /// a name
            #[allow(dead_code)]
            label: String = "x".to_string(),
        }
    }

    #[test]
    fn one_list_gives_struct_defaults_and_table() {
        let mut d = Demo::default();
        assert_eq!((d.count, d.label.as_str(), d.secret), (3, "x", true));
        assert_eq!(Demo::names(), ["count", "label"]);
        assert_eq!(Demo::FIELDS[0].help(), "a count");
        assert_eq!(d.field("label").unwrap().show(), "\"x\"");
        assert!(
            d.field("secret").is_none(),
            "hidden fields are not settings"
        );
        assert!(d.field_mut("nope").is_none());
        d.count = 7;
        assert_eq!(d.field("count").unwrap().show(), "7");
    }

    choices! {
        /// Colours.
        enum Colour("colour") {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue" | "navy" | "7",
        }
    }

    #[test]
    fn choices_parse_print_and_list_themselves() {
        assert_eq!(Colour::NAMES, ["red", "dark_blue"]);
        assert_eq!("dark_blue".parse::<Colour>().unwrap(), Colour::DarkBlue);
        assert_eq!(Colour::Red.to_string(), "red");
        let err = "blue".parse::<Colour>().unwrap_err().to_string();
        assert_eq!(err, "unknown colour `blue` (choices: red, dark_blue)");
        let v: toml::Value = toml::Value::try_from(Colour::DarkBlue).unwrap();
        assert_eq!(v.as_str(), Some("dark_blue"));
        let back: Colour = v.try_into().unwrap();
        assert_eq!(back, Colour::DarkBlue);
        // Aliases are read, never written or listed; a whole number is read as its digits.
        assert_eq!("navy".parse::<Colour>().unwrap(), Colour::DarkBlue);
        let number: Colour = toml::Value::Integer(7).try_into().unwrap();
        assert_eq!((number, number.as_str()), (Colour::DarkBlue, "dark_blue"));
        let err = toml::Value::Integer(8).try_into::<Colour>().unwrap_err();
        assert!(err.to_string().contains("unknown colour `8`"), "{err}");
        let err = toml::Value::Boolean(true).try_into::<Colour>().unwrap_err();
        assert!(err.to_string().contains("expected a string"), "{err}");
    }
}
