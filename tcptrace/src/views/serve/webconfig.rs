//! `--web-config FILE`: the web configuration file of Prometheus's
//! exporter-toolkit (node_exporter's `--web.config.file`), so a fleet
//! configures tcptrace as its other exporters. Keys the toolkit does not
//! know are errors there, and here; keys it knows that tcptrace cannot
//! honour are refused by name rather than ignored.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{auth::Users, tls};

/// The file as the toolkit spells it.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    tls_server_config: Option<TlsSection>,
    http_server_config: HttpSection,
    basic_auth_users: BTreeMap<String, String>,
    auth_excluded_paths: Vec<String>,
    rate_limit: Option<serde_norway::Value>,
}

/// `tls_server_config`; paths are relative to the file's directory.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth_type: Option<String>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Vec<String>,
    pub prefer_server_cipher_suites: Option<bool>,
    pub curve_preferences: Vec<String>,
}

impl TlsSection {
    /// As the toolkit decides: any of these turns TLS on (and then the
    /// certificate and key must be there).
    fn enabled(&self) -> bool {
        self.cert.is_some()
            || self.key.is_some()
            || self.client_ca.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.client_ca_file.is_some()
            || self.client_auth_type.is_some()
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct HttpSection {
    /// Accepted for compatibility: tcptrace speaks HTTP/1.1 only (ALPN says so).
    http2: Option<bool>,
    headers: BTreeMap<String, String>,
}

/// The headers the toolkit lets a file set, with the values it accepts
/// (none listed: any value).
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// What the server enforces, as read from the file (or nothing without one).
#[derive(Default)]
pub struct Policy {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Option<Users>,
    pub headers: HeaderMap,
    /// Paths served without authentication (`auth_excluded_paths`).
    pub excluded: Vec<String>,
}

impl Policy {
    /// Whether `path` needs credentials under this policy.
    pub fn guards(&self, path: &str) -> bool {
        self.users.is_some() && !self.excluded.iter().any(|p| p == path)
    }
}

/// Reads, checks and builds the policy of the file at `path`: every
/// certificate, key and hash is loaded now, so a bad file fails at start
/// (or keeps the old policy on a reload), never on a scrape.
pub fn load(path: &Path) -> anyhow::Result<Policy> {
    let text = fs::read_to_string(path).context("cannot read it")?;
    let file = parse(&text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    build(file, dir)
}

fn parse(text: &str) -> anyhow::Result<File> {
    // An empty file (or one of comments) is the toolkit's "no TLS, no users".
    let file: Option<File> = serde_norway::from_str(text)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', " ")))?;
    Ok(file.unwrap_or_default())
}

fn build(file: File, dir: &Path) -> anyhow::Result<Policy> {
    if file.rate_limit.is_some() {
        bail!(
            "rate_limit is not supported by tcptrace (it bounds connections per address itself); remove it"
        );
    }
    let tls = match file.tls_server_config {
        Some(section) if section.enabled() => {
            Some(tls::server_config(&section, dir).context("tls_server_config")?)
        }
        _ => None,
    };
    let users = if file.basic_auth_users.is_empty() {
        None
    } else {
        Some(Users::new(file.basic_auth_users).context("basic_auth_users")?)
    };
    let headers =
        headers(&file.http_server_config.headers).context("http_server_config.headers")?;
    for p in &file.auth_excluded_paths {
        if !p.starts_with('/') {
            bail!("auth_excluded_paths: {p:?} is not a path (it must start with /)");
        }
    }
    // http2 is read and otherwise ignored: HTTP/2 is never offered.
    let _ = file.http_server_config.http2;
    Ok(Policy {
        tls,
        users,
        headers,
        excluded: file.auth_excluded_paths,
    })
}

fn headers(configured: &BTreeMap<String, String>) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in configured {
        let Some((_, allowed)) = HEADERS.iter().find(|(h, _)| h == name) else {
            let names: Vec<&str> = HEADERS.iter().map(|(h, _)| *h).collect();
            bail!("{name} cannot be set (only {})", names.join(", "));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            bail!("{name}: {value:?} is not one of {allowed:?}");
        }
        // Blank means unset, as in the toolkit.
        if value.is_empty() {
            continue;
        }
        let v = HeaderValue::from_str(value)
            .with_context(|| format!("{name}: {value:?} is not a header value"))?;
        map.insert(HeaderName::from_bytes(name.as_bytes())?, v);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text).and_then(|f| build(f, Path::new("/nonexistent"))) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn empty_and_comment_only_files_serve_plain_http() {
        for text in ["", "# nothing\n", "tls_server_config: {}\n"] {
            let p = build(parse(text).unwrap(), Path::new(".")).unwrap();
            assert!(p.tls.is_none() && p.users.is_none(), "{text:?}");
            assert!(!p.guards("/metrics"));
        }
    }

    #[test]
    fn unknown_keys_are_errors_on_one_line() {
        for (text, needle) in [
            ("tls_server_config:\n  cert_fil: x\n", "cert_fil"),
            ("basic_auth_user:\n  a: b\n", "basic_auth_user"),
            ("http_server_config:\n  header: {}\n", "header"),
        ] {
            let e = err(text);
            assert!(e.contains(needle) && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn refused_keys_say_why() {
        assert!(err("rate_limit:\n  burst: 1\n").contains("not supported"));
        assert!(
            err("http_server_config:\n  headers:\n    X-Powered-By: me\n")
                .contains("cannot be set")
        );
        assert!(
            err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
                .contains("not one of")
        );
        assert!(err("auth_excluded_paths: [healthz]\n").contains("not a path"));
        let e = err("tls_server_config: [\n");
        assert!(e.contains("line"), "bad YAML names its place: {e}");
    }

    #[test]
    fn headers_and_excluded_paths() {
        let text = "http_server_config:\n  http2: false\n  headers:\n    X-Content-Type-Options: nosniff\n    Content-Security-Policy: \"\"\n\
                    auth_excluded_paths: [/healthz]\n";
        let p = build(parse(text).unwrap(), Path::new(".")).unwrap();
        assert_eq!(p.headers.len(), 1);
        assert_eq!(p.headers["x-content-type-options"], "nosniff");
        assert_eq!(p.excluded, ["/healthz"]);
    }
}
