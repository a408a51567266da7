//! Credentials and endpoints, from each cloud's usual environment variables only, and the
//! redaction that keeps their secret values out of every message.
//!
//! [`Env`] is a snapshot of the variables that matter (`AWS_*`, `AZURE_*`, `AZURITE_*`,
//! `GOOGLE_*`, and the managed-identity `IDENTITY_ENDPOINT`/`MSI_ENDPOINT`); a backend is built
//! from it alone, so tests can hand one in without touching the process's environment. A URL
//! whose cloud has no usable credentials in it is refused before any request, with the names of
//! the variables to set (instance-metadata credentials, which object_store would otherwise try
//! for minutes on a machine without them, are not used).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use anyhow::{bail, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, ObjectStoreScheme};

use super::location::ObjectUrl;
use super::retry::RetryPolicy;

/// Azurite's documented development account and key (public, the same in every install).
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// What to set for each cloud, as written in the error when nothing usable is set.
const AWS_HELP: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN \
    for temporary keys), or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or \
    AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / AWS_CONTAINER_CREDENTIALS_FULL_URI, or \
    AWS_SKIP_SIGNATURE=true for a public bucket; AWS_ENDPOINT_URL (or AWS_ENDPOINT) and \
    AWS_REGION choose the server";
const AZURE_HELP: &str = "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with \
    AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or with AZURE_CLIENT_ID, \
    AZURE_CLIENT_SECRET and AZURE_TENANT_ID (a service principal), or with \
    AZURE_FEDERATED_TOKEN_FILE (workload identity), or with IDENTITY_ENDPOINT / MSI_ENDPOINT \
    (managed identity, as on Azure ML compute); or AZURE_STORAGE_USE_EMULATOR=true for Azurite \
    (AZURITE_BLOB_STORAGE_URL, default http://127.0.0.1:10000)";
const GOOGLE_HELP: &str = "set GOOGLE_APPLICATION_CREDENTIALS (a service-account or \
    authorized-user JSON file), or GOOGLE_SERVICE_ACCOUNT (its path) or \
    GOOGLE_SERVICE_ACCOUNT_KEY (its content), or GOOGLE_SKIP_SIGNATURE=true for a public bucket";

/// The environment variables storage reads: a snapshot, so that a [`Storage`](super::Storage)
/// sees one consistent set. Its `Debug` form shows names only, never values.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The relevant variables of this process's environment.
    pub fn process() -> Env {
        Env::from_pairs(std::env::vars())
    }

    /// The relevant variables among `pairs` (others are dropped; empty values count as unset).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, v)| relevant(k) && !v.is_empty())
            .collect();
        Env { vars }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn is_true(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every secret value in this environment (keys, tokens, signatures, connection strings
    /// and the secrets inside them), longest first, for [`redact`].
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = Vec::new();
        for (name, value) in &self.vars {
            if is_secret_name(name) {
                secrets.push(value.clone());
                // A connection string's or SAS token's parts may be echoed one by one.
                for part in value.split([';', '&']) {
                    if let Some((k, v)) = part.split_once('=') {
                        let k = k.trim().to_ascii_lowercase();
                        if matches!(k.as_str(), "accountkey" | "sharedaccesssignature" | "sig") {
                            secrets.push(v.to_string());
                        }
                    }
                }
            }
        }
        secrets.retain(|s| s.len() >= 8);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        secrets
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

fn relevant(name: &str) -> bool {
    ["AWS_", "AZURE_", "AZURITE_", "GOOGLE_"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(name, "IDENTITY_ENDPOINT" | "MSI_ENDPOINT")
}

fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let locator = [
        "_FILE",
        "_PATH",
        "_URI",
        "_URL",
        "_ENDPOINT",
        "_ID",
        "_NAME",
        "_REGION",
    ]
    .iter()
    .any(|s| upper.ends_with(s));
    let secret = [
        "KEY",
        "SECRET",
        "TOKEN",
        "SIGNATURE",
        "PASSWORD",
        "CONNECTION_STRING",
        "SAS",
    ]
    .iter()
    .any(|s| upper.contains(s));
    secret && !locator
}

/// `text` with every secret value replaced by `***`, and the value of every signature or
/// token parameter of a URL in it (`sig=`, `X-Amz-Signature=`, ...) as well.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    for param in [
        "sig=",
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
    ] {
        let mut from = 0;
        while let Some(found) = out[from..].find(param) {
            let start = from + found + param.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c == '"' || c == '\'' || c == ')' || c.is_whitespace())
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

/// Builds the backend for `url` from `env` and `policy`: the scheme picks it (once, as
/// object_store's `parse_url_opts`), the environment gives credentials and endpoints.
pub(crate) fn build_store(
    url: &ObjectUrl,
    env: &Env,
    policy: &RetryPolicy,
) -> Result<Arc<dyn ObjectStore>> {
    let Some(remote) = url.remote() else {
        return Ok(Arc::new(LocalFileSystem::new()));
    };
    // rustls needs one crypto provider in the process before any HTTP client is built: ring,
    // already in the build (a provider installed earlier by someone else is kept).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (scheme, _) = ObjectStoreScheme::parse(remote)?;
    let client = policy.client_options();
    let retry = policy.retry_config();
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            require_aws(env, url)?;
            let mut builder = AmazonS3Builder::new().with_client_options(client);
            for (name, value) in env.with_prefix("AWS_") {
                if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            let endpoint = env.get("AWS_ENDPOINT_URL").or(env.get("AWS_ENDPOINT"));
            if endpoint.is_some_and(|e| e.starts_with("http://")) {
                builder = builder.with_allow_http(true);
            }
            Arc::new(
                builder
                    .with_url(remote.as_str())
                    .with_retry(retry)
                    .build()?,
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = azure_builder(env, url, client)?;
            let builder = azure_settings(builder, env)?;
            Arc::new(
                builder
                    .with_url(remote.as_str())
                    .with_retry(retry)
                    .build()?,
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let helpful = [
                "GOOGLE_APPLICATION_CREDENTIALS",
                "GOOGLE_SERVICE_ACCOUNT",
                "GOOGLE_SERVICE_ACCOUNT_PATH",
                "GOOGLE_SERVICE_ACCOUNT_KEY",
            ];
            if !helpful.iter().any(|v| env.has(v)) && !env.is_true("GOOGLE_SKIP_SIGNATURE") {
                bail!("storage: no credentials for {url}: {GOOGLE_HELP}");
            }
            let mut builder = GoogleCloudStorageBuilder::new().with_client_options(client);
            for (name, value) in env.with_prefix("GOOGLE_") {
                if let Ok(key) = name.to_ascii_lowercase().parse::<GoogleConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            Arc::new(
                builder
                    .with_url(remote.as_str())
                    .with_retry(retry)
                    .build()?,
            )
        }
        ObjectStoreScheme::Http => {
            let base = &remote[..url::Position::BeforePath];
            let client = client.with_allow_http(remote.scheme() == "http");
            Arc::new(
                HttpBuilder::new()
                    .with_url(base)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()?,
            )
        }
        other => bail!("storage: {url}: no backend for {other:?}"),
    };
    Ok(store)
}

fn require_aws(env: &Env, url: &ObjectUrl) -> Result<()> {
    let keys = env.has("AWS_ACCESS_KEY_ID") && env.has("AWS_SECRET_ACCESS_KEY");
    let web_identity = env.has("AWS_WEB_IDENTITY_TOKEN_FILE") && env.has("AWS_ROLE_ARN");
    let container = env.has("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env.has("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    if keys || web_identity || container || env.is_true("AWS_SKIP_SIGNATURE") {
        return Ok(());
    }
    let half = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .find(|v| env.has(v))
        .map(|v| format!(" (only {v} is set)"))
        .unwrap_or_default();
    bail!("storage: no credentials for {url}{half}: {AWS_HELP}")
}

/// The Azure builder with account, key and endpoint: from a connection string, the emulator
/// switch, or the `AZURE_*` variables (applied afterwards by [`azure_settings`]).
fn azure_builder(
    env: &Env,
    url: &ObjectUrl,
    client: ClientOptions,
) -> Result<MicrosoftAzureBuilder> {
    let builder = MicrosoftAzureBuilder::new().with_client_options(client);
    if let Some(text) = env.get("AZURE_STORAGE_CONNECTION_STRING") {
        return connection_string(builder, text, url);
    }
    if env.is_true("AZURE_STORAGE_USE_EMULATOR") {
        let base = env
            .get("AZURITE_BLOB_STORAGE_URL")
            .unwrap_or("http://127.0.0.1:10000")
            .trim_end_matches('/');
        let account = env
            .get("AZURE_STORAGE_ACCOUNT_NAME")
            .unwrap_or(EMULATOR_ACCOUNT);
        let key = env.get("AZURE_STORAGE_ACCOUNT_KEY").unwrap_or(EMULATOR_KEY);
        return Ok(builder
            .with_account(account)
            .with_access_key(key)
            .with_endpoint(format!("{base}/{account}"))
            .with_allow_http(base.starts_with("http://")));
    }
    let account_in_url = url
        .remote()
        .and_then(|u| u.host_str())
        .is_some_and(|h| h.contains(".core.windows.net") || h.contains(".fabric.microsoft.com"));
    let account = env.has("AZURE_STORAGE_ACCOUNT_NAME") || account_in_url;
    let secret = [
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_SAS_KEY",
        "AZURE_STORAGE_TOKEN",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_MSI_ENDPOINT",
        "AZURE_IDENTITY_ENDPOINT",
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
    ]
    .iter()
    .any(|v| env.has(v))
        || (env.has("AZURE_CLIENT_ID") && env.has("AZURE_CLIENT_SECRET"))
        || env.is_true("AZURE_USE_AZURE_CLI")
        || env.is_true("AZURE_SKIP_SIGNATURE");
    if !(account && secret) {
        let missing = if account {
            "no key, token or identity"
        } else {
            "no account name"
        };
        bail!("storage: no credentials for {url} ({missing}): {AZURE_HELP}");
    }
    let mut builder = builder;
    if let Some(endpoint) = env.get("IDENTITY_ENDPOINT").or(env.get("MSI_ENDPOINT")) {
        builder = builder.with_msi_endpoint(endpoint);
    }
    Ok(builder)
}

/// Applies the `AZURE_*` variables object_store knows, except those a connection string or
/// the emulator switch already decided.
fn azure_settings(mut builder: MicrosoftAzureBuilder, env: &Env) -> Result<MicrosoftAzureBuilder> {
    let decided =
        env.has("AZURE_STORAGE_CONNECTION_STRING") || env.is_true("AZURE_STORAGE_USE_EMULATOR");
    for (name, value) in env.with_prefix("AZURE_") {
        let Ok(key) = name.to_ascii_lowercase().parse::<AzureConfigKey>() else {
            continue;
        };
        let credential = matches!(
            key,
            AzureConfigKey::AccountName
                | AzureConfigKey::AccessKey
                | AzureConfigKey::Endpoint
                | AzureConfigKey::UseEmulator
                | AzureConfigKey::SasKey
        );
        if !(decided && credential) {
            builder = builder.with_config(key, value);
        }
    }
    Ok(builder)
}

/// Reads an Azure Storage connection string (`AccountName=...;AccountKey=...;BlobEndpoint=...`,
/// `SharedAccessSignature=...`, `UseDevelopmentStorage=true`). Its values never reach an error.
fn connection_string(
    builder: MicrosoftAzureBuilder,
    text: &str,
    url: &ObjectUrl,
) -> Result<MicrosoftAzureBuilder> {
    let mut fields = BTreeMap::new();
    for part in text.split(';').filter(|p| !p.trim().is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            bail!(
                "storage: AZURE_STORAGE_CONNECTION_STRING has a part without `=` \
                 (expected `Name=value;...`)"
            );
        };
        fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    if fields
        .get("usedevelopmentstorage")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        let base = fields
            .get("developmentstorageproxyuri")
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1:10000");
        return Ok(builder
            .with_account(EMULATOR_ACCOUNT)
            .with_access_key(EMULATOR_KEY)
            .with_endpoint(format!("{}/{EMULATOR_ACCOUNT}", base.trim_end_matches('/')))
            .with_allow_http(base.starts_with("http://")));
    }
    let Some(account) = fields.get("accountname") else {
        bail!("storage: AZURE_STORAGE_CONNECTION_STRING has no AccountName (needed for {url})");
    };
    let mut builder = builder.with_account(account);
    match (
        fields.get("accountkey"),
        fields.get("sharedaccesssignature"),
    ) {
        (Some(key), _) => builder = builder.with_access_key(key),
        (None, Some(sas)) => {
            builder = builder.with_config(AzureConfigKey::SasKey, sas.trim_start_matches('?'))
        }
        (None, None) => bail!(
            "storage: AZURE_STORAGE_CONNECTION_STRING has neither AccountKey nor \
             SharedAccessSignature (needed for {url})"
        ),
    }
    let endpoint = match fields.get("blobendpoint") {
        Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
        None => {
            let protocol = fields
                .get("defaultendpointsprotocol")
                .map(String::as_str)
                .unwrap_or("https");
            let suffix = fields
                .get("endpointsuffix")
                .map(String::as_str)
                .unwrap_or("core.windows.net");
            format!("{protocol}://{account}.blob.{suffix}")
        }
    };
    let http = endpoint.starts_with("http://");
    Ok(builder.with_endpoint(endpoint).with_allow_http(http))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn only_the_clouds_variables_are_kept_and_debug_shows_no_value() {
        let e = env(&[
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123"),
            ("HOME", "/root"),
            ("AZURE_STORAGE_ACCOUNT_NAME", ""),
        ]);
        let shown = format!("{e:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("HOME"),
            "{shown}"
        );
        assert!(
            !e.has("AZURE_STORAGE_ACCOUNT_NAME"),
            "an empty value counts as unset"
        );
    }

    #[test]
    fn secrets_and_url_signatures_are_redacted() {
        let e = env(&[
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEID"),
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                "AccountName=acct;AccountKey=a2V5LWJ5dGVzLWhlcmU=;BlobEndpoint=http://h",
            ),
        ]);
        let secrets = e.secrets();
        let text = "failed with wJalrXUtnFEMI-secret, key a2V5LWJ5dGVzLWhlcmU= at \
                    https://acct.blob.core.windows.net/c/x?sv=2020&sig=abcDEF%2B123&se=1 (AKIAEXAMPLEID)";
        let out = redact(text, &secrets);
        assert!(!out.contains("wJalrXUtnFEMI"), "{out}");
        assert!(!out.contains("a2V5LWJ5dGVz"), "{out}");
        assert!(!out.contains("abcDEF"), "{out}");
        assert!(out.contains("sig=***&se=1"), "{out}");
        // Identifiers and endpoints are not secrets, and stay for the reader.
        assert!(out.contains("AKIAEXAMPLEID"), "{out}");
        assert!(redact("at http://h/x", &secrets).contains("http://h/x"));
    }

    #[test]
    fn missing_credentials_name_the_variables_per_cloud() {
        let policy = RetryPolicy::default();
        let none = Env::default();
        for (url, variables) in [
            (
                "s3://bucket/x",
                &[
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                    "AWS_ENDPOINT_URL",
                ][..],
            ),
            (
                "az://container/x",
                &[
                    "AZURE_STORAGE_ACCOUNT_NAME",
                    "AZURE_STORAGE_ACCOUNT_KEY",
                    "AZURE_STORAGE_CONNECTION_STRING",
                ][..],
            ),
            ("gs://bucket/x", &["GOOGLE_APPLICATION_CREDENTIALS"][..]),
        ] {
            let url = ObjectUrl::parse(url).unwrap();
            let err = build_store(&url, &none, &policy).unwrap_err().to_string();
            assert!(err.contains(&url.to_string()), "{err}");
            for v in variables {
                assert!(err.contains(v), "{url}: {err} lacks {v}");
            }
        }
        let half = env(&[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEID")]);
        let err = build_store(&ObjectUrl::parse("s3://b/x").unwrap(), &half, &policy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only AWS_ACCESS_KEY_ID is set"), "{err}");
    }

    #[test]
    fn an_https_url_needs_no_credentials_and_a_local_path_none_either() {
        let policy = RetryPolicy::default();
        for url in ["https://example.org/data/a.tar", "/tmp/a.tar"] {
            let url = ObjectUrl::parse(url).unwrap();
            assert!(build_store(&url, &Env::default(), &policy).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_connection_string_without_a_key_is_refused_without_its_values() {
        let e = env(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=acct-name-xyz;BlobEndpoint=http://127.0.0.1:1/acct",
        )]);
        let err = build_store(
            &ObjectUrl::parse("az://c/x").unwrap(),
            &e,
            &RetryPolicy::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("neither AccountKey nor SharedAccessSignature"),
            "{err}"
        );
    }
}
