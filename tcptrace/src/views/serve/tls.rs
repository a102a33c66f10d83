//! `tls_server_config` as a rustls server configuration (with ring's
//! cryptography). The toolkit's names are Go's (`crypto/tls`); each maps to
//! what rustls does, and what rustls does not do is refused by name.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, anyhow, bail};
use rustls::{
    CipherSuite, NamedGroup, RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::webconfig::TlsSection;

/// Go's names of the key exchanges the toolkit accepts, and rustls's.
const CURVES: &[(&str, Option<NamedGroup>)] = &[
    ("X25519", Some(NamedGroup::X25519)),
    ("CurveP256", Some(NamedGroup::secp256r1)),
    ("CurveP384", Some(NamedGroup::secp384r1)),
    ("CurveP521", None),
];

/// Builds the server configuration; relative paths are taken from `dir`.
pub fn server_config(t: &TlsSection, dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    if t.client_allowed_sans.is_some() {
        bail!(
            "client_allowed_sans is not supported by tcptrace; trust a CA that signs only the scrapers' certificates instead"
        );
    }
    let certs = certificates(t, dir)?;
    let key = private_key(t, dir)?;
    let mut provider = ring::default_provider();
    let (versions, tls12) = versions(t)?;
    provider.cipher_suites = cipher_suites(&provider, &t.cipher_suites, tls12)?;
    provider.kx_groups = curves(&provider, &t.curve_preferences)?;
    let provider = Arc::new(provider);
    let verifier = client_verifier(t, dir, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .context("min_version, max_version and cipher_suites leave nothing to speak")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("the certificate and the key do not go together: {e}"))?;
    // The toolkit's default: the server's order of cipher_suites wins.
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    // HTTP/1.1 only: a client offering h2 must not expect it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Inline PEM (`cert`) or a file (`cert_file`), never both.
fn pem(
    inline: Option<&String>,
    file: Option<&PathBuf>,
    dir: &Path,
    names: (&str, &str),
) -> anyhow::Result<Option<(Vec<u8>, String)>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("both {} and {} are set; keep one", names.0, names.1),
        (Some(text), None) => Ok(Some((text.clone().into_bytes(), names.0.to_owned()))),
        (None, Some(path)) => {
            let path = dir.join(path);
            let bytes =
                fs::read(&path).with_context(|| format!("{} {}", names.1, path.display()))?;
            Ok(Some((bytes, format!("{} {}", names.1, path.display()))))
        }
        (None, None) => Ok(None),
    }
}

fn certificates(t: &TlsSection, dir: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let (bytes, what) = pem(
        t.cert.as_ref(),
        t.cert_file.as_ref(),
        dir,
        ("cert", "cert_file"),
    )?
    .context("TLS needs a certificate: cert_file (or cert) is missing")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{what}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        bail!("{what}: no PEM certificate in it");
    }
    Ok(certs)
}

fn private_key(t: &TlsSection, dir: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let (bytes, what) = pem(
        t.key.as_ref(),
        t.key_file.as_ref(),
        dir,
        ("key", "key_file"),
    )?
    .context("TLS needs a private key: key_file (or key) is missing")?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| anyhow!("{what}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"))
}

fn version(name: &str, field: &str) -> anyhow::Result<u8> {
    match name {
        "TLS10" => Ok(10),
        "TLS11" => Ok(11),
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        _ => bail!("{field}: unknown TLS version {name:?} (TLS10, TLS11, TLS12 or TLS13)"),
    }
}

/// The versions to speak, and whether TLS 1.2 is one. rustls speaks 1.2
/// and 1.3 only: a minimum below 1.2 is met by 1.2, a maximum below it is
/// refused.
fn versions(t: &TlsSection) -> anyhow::Result<(Vec<&'static SupportedProtocolVersion>, bool)> {
    let min = version(t.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = version(t.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    if max < 12 {
        bail!("max_version: tcptrace speaks TLS 1.2 and 1.3 only (rustls), not below");
    }
    if min > max {
        bail!("min_version is above max_version");
    }
    let mut out = Vec::new();
    if min <= 12 {
        out.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        out.push(&rustls::version::TLS13);
    }
    Ok((out, min <= 12))
}

/// A suite's name as Go spells it (TLS 1.3's without rustls's "13").
fn go_name(suite: CipherSuite) -> String {
    let name = suite.as_str().unwrap_or("?");
    name.replacen("TLS13_", "TLS_", 1)
}

/// As in Go, `cipher_suites` chooses among TLS 1.2's suites, in order;
/// TLS 1.3's are always all offered (listing them is allowed).
fn cipher_suites(
    provider: &CryptoProvider,
    names: &[String],
    tls12: bool,
) -> anyhow::Result<Vec<rustls::SupportedCipherSuite>> {
    if names.is_empty() {
        return Ok(provider.cipher_suites.clone());
    }
    let offered: Vec<String> = provider
        .cipher_suites
        .iter()
        .map(|s| go_name(s.suite()))
        .collect();
    let mut chosen: Vec<_> = provider
        .cipher_suites
        .iter()
        .filter(|s| s.tls13().is_some())
        .copied()
        .collect();
    let mut any12 = false;
    for name in names {
        let Some(i) = offered.iter().position(|o| o == name) else {
            bail!(
                "cipher_suites: {name} is not offered by tcptrace's TLS (rustls); it offers {}",
                offered.join(", ")
            );
        };
        let suite = provider.cipher_suites[i];
        if suite.tls13().is_none() && !chosen.contains(&suite) {
            chosen.push(suite);
            any12 = true;
        }
    }
    if tls12 && !any12 {
        bail!("cipher_suites names no TLS 1.2 suite, while min_version allows TLS 1.2");
    }
    Ok(chosen)
}

fn curves(
    provider: &CryptoProvider,
    names: &[String],
) -> anyhow::Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>> {
    if names.is_empty() {
        return Ok(provider.kx_groups.clone());
    }
    let mut chosen = Vec::new();
    for name in names {
        let group = match CURVES.iter().find(|(n, _)| n == name) {
            Some((_, Some(group))) => *group,
            Some((_, None)) => bail!(
                "curve_preferences: {name} is not offered by tcptrace's TLS (rustls with ring); use X25519, CurveP256 or CurveP384"
            ),
            None => bail!(
                "curve_preferences: unknown curve {name:?} (X25519, CurveP256, CurveP384, CurveP521)"
            ),
        };
        if let Some(kx) = provider.kx_groups.iter().find(|k| k.name() == group) {
            chosen.push(*kx);
        }
    }
    Ok(chosen)
}

/// `client_auth_type` with `client_ca_file`. Go's types that take a
/// certificate without verifying it (RequestClientCert, RequireAnyClientCert)
/// authenticate nobody, and rustls has no such mode: they are refused.
fn client_verifier(
    t: &TlsSection,
    dir: &Path,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let kind = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let ca = pem(
        t.client_ca.as_ref(),
        t.client_ca_file.as_ref(),
        dir,
        ("client_ca", "client_ca_file"),
    )?;
    let optional = match kind {
        "NoClientCert" | "" => {
            if ca.is_some() {
                bail!(
                    "client_ca_file is set but client_auth_type is NoClientCert: set client_auth_type: RequireAndVerifyClientCert"
                );
            }
            return Ok(WebPkiClientVerifier::no_client_auth());
        }
        "RequireAndVerifyClientCert" => false,
        "VerifyClientCertIfGiven" => true,
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => bail!(
            "client_auth_type {kind} takes client certificates without verifying them, which tcptrace does not do; use RequireAndVerifyClientCert with client_ca_file"
        ),
        _ => bail!(
            "unknown client_auth_type {kind:?} (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
        ),
    };
    let (bytes, what) =
        ca.with_context(|| format!("client_auth_type {kind} needs client_ca_file"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| anyhow!("{what}: not a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("{what}: not a CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        bail!("{what}: no PEM certificate in it");
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| anyhow!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> TlsSection {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn versions_map_to_what_rustls_speaks() {
        let (v, tls12) = versions(&section("{}")).unwrap();
        assert_eq!((v.len(), tls12), (2, true));
        let (v, tls12) = versions(&section("min_version: TLS13")).unwrap();
        assert_eq!((v.len(), tls12), (1, false));
        assert_eq!(versions(&section("min_version: TLS10")).unwrap().0.len(), 2);
        for bad in [
            "max_version: TLS11",
            "min_version: TLS13\nmax_version: TLS12",
            "min_version: SSL3",
        ] {
            assert!(versions(&section(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cipher_suites_take_gos_names_and_refuse_the_rest() {
        let p = ring::default_provider();
        let all13 = p
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .count();
        let chosen = cipher_suites(
            &p,
            &[
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_AES_128_GCM_SHA256".into(),
            ],
            true,
        )
        .unwrap();
        assert_eq!(chosen.len(), all13 + 1);
        let e = cipher_suites(&p, &["TLS_RSA_WITH_AES_128_CBC_SHA".into()], true).unwrap_err();
        assert!(e.to_string().contains("not offered"), "{e}");
        assert!(cipher_suites(&p, &["TLS_AES_128_GCM_SHA256".into()], true).is_err());
        assert!(cipher_suites(&p, &["TLS_AES_128_GCM_SHA256".into()], false).is_ok());
    }

    #[test]
    fn curves_and_client_auth_types() {
        let p = ring::default_provider();
        assert_eq!(
            curves(&p, &["CurveP384".into(), "X25519".into()])
                .unwrap()
                .len(),
            2
        );
        assert!(
            curves(&p, &["CurveP521".into()])
                .unwrap_err()
                .to_string()
                .contains("not offered")
        );
        let provider = Arc::new(p);
        let dir = Path::new("/nonexistent");
        for (yaml, needle) in [
            (
                "client_auth_type: RequireAnyClientCert",
                "without verifying",
            ),
            (
                "client_auth_type: RequireAndVerifyClientCert",
                "needs client_ca_file",
            ),
            ("client_auth_type: Sometimes", "unknown client_auth_type"),
            ("client_ca: x", "NoClientCert"),
        ] {
            let e = client_verifier(&section(yaml), dir, &provider)
                .err()
                .unwrap();
            assert!(format!("{e:#}").contains(needle), "{yaml}: {e:#}");
        }
    }

    #[test]
    fn a_missing_certificate_is_named() {
        let e = server_config(
            &section("cert_file: tls.crt\nkey_file: tls.key"),
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("cert_file /nonexistent/tls.crt") && !text.contains('\n'),
            "{text}"
        );
        let e = server_config(&section("key_file: tls.key"), Path::new("/x")).unwrap_err();
        assert!(
            e.to_string().contains("cert_file (or cert) is missing"),
            "{e}"
        );
    }
}
