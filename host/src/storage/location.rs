//! [`ObjectUrl`]: where an object lives, parsed once. A URL of a cloud scheme or a local path;
//! it never carries credentials (a URL with a user, password or query string is refused, so
//! that what is printed of it can always be printed).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use object_store::ObjectStoreScheme;
use url::Url;

/// The schemes accepted, as written in the error for any other.
const SCHEMES: &str =
    "s3://, s3a://, az://, azure://, abfs://, abfss://, adl://, gs://, http://, https://, file://";

/// An object's address: a cloud URL or an absolute local path. Displays as given (with no
/// credentials in it, by construction).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Kind {
    Local(PathBuf),
    Remote(Url),
}

impl ObjectUrl {
    /// Whether `text` is written as a URL (`scheme://...`) rather than a local path: how a
    /// parameter that accepts both (a dataset root, a checkpoint) tells them apart.
    pub fn is_url(text: &str) -> bool {
        match text.split_once("://") {
            Some((scheme, _)) => {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            }
            None => false,
        }
    }

    /// Parses a URL of one of the accepted schemes, or a local path (made absolute against the
    /// current directory; it need not exist). Refuses user names, passwords and query strings in
    /// URLs (credentials come from the environment only) without repeating them.
    pub fn parse(text: &str) -> Result<ObjectUrl> {
        if !Self::is_url(text) {
            return Self::local(Path::new(text));
        }
        let url = Url::parse(text).map_err(|e| {
            let scheme = text.split_once("://").map(|(s, _)| s).unwrap_or("");
            anyhow::anyhow!("storage: `{scheme}://...` is not a valid URL: {e}")
        })?;
        // `abfs[s]://container@account.dfs.core.windows.net/...` names the container there.
        let container_user = matches!(url.scheme(), "abfs" | "abfss") && url.password().is_none();
        if (!url.username().is_empty() && !container_user) || url.password().is_some() {
            bail!(
                "storage: a {}:// URL with a user name or password in it is refused: give \
                 credentials through the environment variables of its cloud instead",
                url.scheme()
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!(
                "storage: a URL with a query string or fragment (`?...`, `#...`) is refused \
                 ({}://{}{}): a SAS token or signature goes in the environment (for Azure, \
                 AZURE_STORAGE_SAS_TOKEN), never in a URL that may be logged",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.path()
            );
        }
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("storage: `{url}` is not a local file path"))?;
            return Self::local(&path);
        }
        let known = [
            "s3", "s3a", "az", "azure", "abfs", "abfss", "adl", "gs", "http", "https",
        ];
        if !known.contains(&url.scheme()) {
            bail!(
                "storage: `{url}`: unknown scheme `{}://` (accepted: {SCHEMES}, or a local path)",
                url.scheme()
            );
        }
        if url.host_str().is_none_or(str::is_empty) {
            bail!("storage: `{url}` names no bucket, container or host");
        }
        ObjectStoreScheme::parse(&url)
            .map_err(|e| anyhow::anyhow!("storage: `{url}` is not an object URL: {e}"))?;
        Ok(ObjectUrl {
            kind: Kind::Remote(url),
        })
    }

    /// A local path as an `ObjectUrl`: made absolute and normalised (`.` and `..` resolved
    /// lexically), so that two spellings of one file are one cache entry.
    pub fn local(path: &Path) -> Result<ObjectUrl> {
        let absolute = std::path::absolute(path)
            .with_context(|| format!("storage: cannot make {} absolute", path.display()))?;
        let mut normal = PathBuf::new();
        for part in absolute.components() {
            match part {
                Component::ParentDir => {
                    normal.pop();
                }
                Component::CurDir => {}
                other => normal.push(other),
            }
        }
        Ok(ObjectUrl {
            kind: Kind::Local(normal),
        })
    }

    /// The object `relative` under this one, as a path: `s3://b/data` joined with
    /// `train-000000.tar` is `s3://b/data/train-000000.tar`. `relative` is a `/`-separated
    /// relative path with no `.` or `..` segments.
    pub fn join(&self, relative: &str) -> Result<ObjectUrl> {
        let parts: Vec<&str> = relative.split('/').collect();
        if relative.is_empty()
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            bail!("storage: cannot join `{relative}` to {self}: not a plain relative path");
        }
        let kind = match &self.kind {
            Kind::Local(path) => Kind::Local(parts.iter().fold(path.clone(), |p, s| p.join(s))),
            Kind::Remote(url) => {
                let mut url = url.clone();
                url.path_segments_mut()
                    .map_err(|()| anyhow::anyhow!("storage: {self} cannot have a path"))?
                    .pop_if_empty()
                    .extend(&parts);
                Kind::Remote(url)
            }
        };
        Ok(ObjectUrl { kind })
    }

    /// The local path, for a local object; `None` for a URL.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local(path) => Some(path),
            Kind::Remote(_) => None,
        }
    }

    /// The last segment of the path (`train-000000.tar`), if any.
    pub fn file_name(&self) -> Option<String> {
        match &self.kind {
            Kind::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
            Kind::Remote(url) => url
                .path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
                .filter(|s| !s.is_empty()),
        }
    }

    /// The URL, for a remote object.
    pub(crate) fn remote(&self) -> Option<&Url> {
        match &self.kind {
            Kind::Remote(url) => Some(url),
            Kind::Local(_) => None,
        }
    }

    /// What selects one backend instance (and its connection pool): the URL without the
    /// object's path (`s3://bucket`, `https://account.blob.core.windows.net/container`).
    pub(crate) fn store_key(&self) -> String {
        match &self.kind {
            Kind::Local(_) => "file://".to_string(),
            Kind::Remote(url) => self.base(url).as_str().trim_end_matches('/').to_string(),
        }
    }

    /// The URL with the object's path taken off its end.
    fn base(&self, url: &Url) -> Url {
        let object_segments = self.object_path().map(|p| p.parts().count()).unwrap_or(0);
        let segments: Vec<String> = url
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        let keep = segments.len().saturating_sub(object_segments);
        let mut base = url.clone();
        base.set_path(&format!("/{}", segments[..keep].join("/")));
        base
    }

    /// The object's path inside its store.
    pub(crate) fn object_path(&self) -> Result<object_store::path::Path> {
        let parsed = match &self.kind {
            Kind::Local(path) => {
                object_store::path::Path::from_absolute_path(path).map_err(anyhow::Error::from)
            }
            Kind::Remote(url) => ObjectStoreScheme::parse(url)
                .map(|(_, path)| path)
                .map_err(anyhow::Error::from),
        };
        parsed.with_context(|| format!("storage: {self}: not a valid object path"))
    }

    /// The URL (or path) of an object found by listing: `path` is a path in the same store.
    pub(crate) fn sibling_at(&self, path: &object_store::path::Path) -> ObjectUrl {
        let kind = match &self.kind {
            Kind::Local(_) => Kind::Local(PathBuf::from(format!("/{path}"))),
            Kind::Remote(url) => {
                let mut found = self.base(url);
                {
                    let mut segments = found
                        .path_segments_mut()
                        .expect("a cloud URL has a hierarchical path");
                    segments.pop_if_empty();
                    segments.extend(path.parts().map(|p| p.as_ref().to_string()));
                }
                Kind::Remote(found)
            }
        };
        ObjectUrl { kind }
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Local(path) => write!(f, "{}", path.display()),
            Kind::Remote(url) => f.write_str(url.as_str()),
        }
    }
}

impl fmt::Debug for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(ObjectUrl::is_url("s3://bucket/key"));
        assert!(ObjectUrl::is_url("az://container"));
        assert!(!ObjectUrl::is_url("/data/nih"));
        assert!(!ObjectUrl::is_url("data/s3:/x"));
        assert!(!ObjectUrl::is_url("://x"));
    }

    #[test]
    fn each_cloud_scheme_parses_and_displays_as_given() {
        for text in [
            "s3://bucket/a/b.tar",
            "az://container/a/b.tar",
            "azure://container/a",
            "abfs://container@account.dfs.core.windows.net/a",
            "gs://bucket/a",
            "https://example.org/data/a.tar",
        ] {
            let url = ObjectUrl::parse(text).unwrap();
            assert_eq!(url.to_string(), text);
            assert!(url.local_path().is_none());
        }
        let key = ObjectUrl::parse("s3://bucket/a/b.tar").unwrap();
        assert_eq!(key.object_path().unwrap().as_ref(), "a/b.tar");
        assert_eq!(key.store_key(), "s3://bucket");
        let azure = ObjectUrl::parse("https://acct.blob.core.windows.net/cont/a/b").unwrap();
        assert_eq!(azure.object_path().unwrap().as_ref(), "a/b");
        assert_eq!(azure.store_key(), "https://acct.blob.core.windows.net/cont");
        assert_eq!(key.file_name().as_deref(), Some("b.tar"));
    }

    #[test]
    fn credentials_in_a_url_are_refused_and_not_repeated() {
        let err = ObjectUrl::parse("https://user:hunter2secret@example.org/x").unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2secret"), "{err:#}");
        let err = ObjectUrl::parse("https://acct.blob.core.windows.net/c/x?sv=1&sig=SIGSECRET")
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(!text.contains("SIGSECRET"), "{text}");
        assert!(text.contains("AZURE_STORAGE_SAS_TOKEN"), "{text}");
    }

    #[test]
    fn unknown_schemes_and_missing_buckets_are_named() {
        let err = ObjectUrl::parse("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("ftp://") && err.contains("s3://"), "{err}");
        let err = ObjectUrl::parse("s3:///key").unwrap_err().to_string();
        assert!(err.contains("no bucket"), "{err}");
    }

    #[test]
    fn local_paths_are_absolute_and_normalised() {
        let url = ObjectUrl::parse("/data/./nih/../rsna/x.tar").unwrap();
        assert_eq!(url.local_path().unwrap(), Path::new("/data/rsna/x.tar"));
        let file = ObjectUrl::parse("file:///data/rsna/x.tar").unwrap();
        assert_eq!(file, url);
        let relative = ObjectUrl::parse("rel/x").unwrap();
        assert!(relative.local_path().unwrap().is_absolute());
    }

    #[test]
    fn join_appends_segments_and_refuses_escapes() {
        let root = ObjectUrl::parse("s3://bucket/data/").unwrap();
        assert_eq!(
            root.join("shards/a.tar").unwrap().to_string(),
            "s3://bucket/data/shards/a.tar"
        );
        let bare = ObjectUrl::parse("s3://bucket").unwrap();
        assert_eq!(bare.join("a.tar").unwrap().to_string(), "s3://bucket/a.tar");
        assert!(root.join("../x").is_err());
        assert!(root.join("/x").is_err());
        let local = ObjectUrl::parse("/tmp/x").unwrap();
        assert_eq!(
            local.join("a/b").unwrap().local_path().unwrap(),
            Path::new("/tmp/x/a/b")
        );
    }

    #[test]
    fn listed_paths_map_back_to_urls_of_the_same_form() {
        let prefix = ObjectUrl::parse("s3://bucket/data").unwrap();
        let found = prefix.sibling_at(&object_store::path::Path::from("data/a.tar"));
        assert_eq!(found.to_string(), "s3://bucket/data/a.tar");
        let azure = ObjectUrl::parse("https://acct.blob.core.windows.net/cont/data").unwrap();
        let found = azure.sibling_at(&object_store::path::Path::from("data/a.tar"));
        assert_eq!(
            found.to_string(),
            "https://acct.blob.core.windows.net/cont/data/a.tar"
        );
        let local = ObjectUrl::parse("/tmp/data").unwrap();
        let found = local.sibling_at(&object_store::path::Path::from("tmp/data/a.tar"));
        assert_eq!(found.local_path().unwrap(), Path::new("/tmp/data/a.tar"));
    }
}
