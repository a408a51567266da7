//! The build-info record every plugin carries, checked by the host before anything else.

use serde::{Deserialize, Serialize};

/// What a plugin (or the host) was built against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Version of `ssl-plugin-api`.
    pub plugin_api: String,
    /// Version of abi_stable (the layout checker itself).
    pub abi_stable: String,
    /// tch version, `None` for plugins built without the `torch` feature.
    pub tch: Option<String>,
    /// libtorch version (e.g. `2.11.0+cu130`), `None` without the `torch` feature.
    pub libtorch: Option<String>,
    /// `cpu` or `cuda` build of libtorch, `None` without the `torch` feature.
    pub libtorch_variant: Option<String>,
    /// The compiler that built it (informational).
    pub rustc: String,
}

const ABI_STABLE_VERSION: &str = "0.11.3";

fn non_empty(s: &'static str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl BuildInfo {
    /// The record of this build of the plugin API.
    pub fn current() -> Self {
        BuildInfo {
            plugin_api: env!("CARGO_PKG_VERSION").to_string(),
            abi_stable: ABI_STABLE_VERSION.to_string(),
            tch: non_empty(env!("SSL_PLUGIN_API_TCH")),
            libtorch: non_empty(env!("SSL_PLUGIN_API_LIBTORCH")),
            libtorch_variant: non_empty(env!("SSL_PLUGIN_API_LIBTORCH_VARIANT")),
            rustc: env!("SSL_PLUGIN_API_RUSTC").to_string(),
        }
    }

    /// One line for `ssl-host list`.
    pub fn summary(&self) -> String {
        match (&self.tch, &self.libtorch, &self.libtorch_variant) {
            (Some(tch), Some(lt), Some(v)) => format!(
                "plugin-api {}, tch {tch}, libtorch {lt} ({v})",
                self.plugin_api
            ),
            _ => format!("plugin-api {}, no libtorch", self.plugin_api),
        }
    }

    /// Why a plugin built as `plugin` cannot run in a host built as `self`, field by field;
    /// empty when compatible.
    pub fn incompatibilities(&self, plugin: &BuildInfo) -> Vec<String> {
        let mut problems = Vec::new();
        if !api_compatible(&self.plugin_api, &plugin.plugin_api) {
            problems.push(format!(
                "plugin-api: plugin built against {}, host provides {}",
                plugin.plugin_api, self.plugin_api
            ));
        }
        if self.abi_stable != plugin.abi_stable {
            problems.push(format!(
                "abi_stable: plugin {}, host {}",
                plugin.abi_stable, self.abi_stable
            ));
        }
        // A plugin without libtorch (datasets, transforms) runs in any host.
        if plugin.tch.is_some() || plugin.libtorch.is_some() {
            let pairs = [
                ("tch", &plugin.tch, &self.tch),
                ("libtorch", &plugin.libtorch, &self.libtorch),
                (
                    "libtorch build (cpu/cuda)",
                    &plugin.libtorch_variant,
                    &self.libtorch_variant,
                ),
            ];
            for (what, p, h) in pairs {
                if p != h {
                    problems.push(format!(
                        "{what}: plugin built against {}, host uses {}",
                        p.as_deref().unwrap_or("none"),
                        h.as_deref().unwrap_or("none")
                    ));
                }
            }
        }
        problems
    }

    /// The record as the NUL-terminated JSON text a plugin exports.
    pub fn to_c_json(&self) -> std::ffi::CString {
        std::ffi::CString::new(serde_json::to_string(self).expect("build info serializes"))
            .expect("no NUL in JSON")
    }
}

/// Same major version, and for 0.x the same minor version (semver's rule for 0.x).
fn api_compatible(host: &str, plugin: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(host), parse(plugin)) {
        (Some((hm, hn)), Some((pm, pn))) => hm == pm && (hm != 0 || hn == pn),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(api: &str, libtorch: Option<&str>, variant: Option<&str>) -> BuildInfo {
        BuildInfo {
            plugin_api: api.into(),
            abi_stable: ABI_STABLE_VERSION.into(),
            tch: libtorch.map(|_| "0.24.0".into()),
            libtorch: libtorch.map(Into::into),
            libtorch_variant: variant.map(Into::into),
            rustc: "rustc".into(),
        }
    }

    #[test]
    fn versions_and_variants_are_compared() {
        let host = info("0.1.0", Some("2.11.0+cu130"), Some("cuda"));
        assert!(host
            .incompatibilities(&info("0.1.7", Some("2.11.0+cu130"), Some("cuda")))
            .is_empty());
        assert!(
            host.incompatibilities(&info("0.1.0", None, None))
                .is_empty(),
            "torch-free plugins load anywhere"
        );
        let p = host.incompatibilities(&info("0.2.0", None, None));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("plugin built against 0.2.0"), "{p:?}");
        let p = host.incompatibilities(&info("0.1.0", Some("2.10.0"), Some("cpu")));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("libtorch: plugin built against 2.10.0, host uses 2.11.0+cu130"));
        assert!(api_compatible("1.2.0", "1.0.0"));
        assert!(!api_compatible("1.2.0", "2.0.0"));
    }
}
