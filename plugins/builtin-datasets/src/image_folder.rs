//! (being written)

#[allow(unused_imports)]
use ssl_plugin_api::Plugin;

/// Adds this file's datasets to the plugin.
#[allow(dead_code)]
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
}
