//! `tcptrace serve --web-config`: a real Prometheus scraping over mutual TLS
//! with basic authentication; clients that are refused (and logged once);
//! slow clients that must not starve a scrape; bad files; SIGHUP reloads.
//! Certificates are made by the openssl command for each test, in a
//! directory of its own; passwords are hashed with the bcrypt crate.
//!
//! A tracer that cannot load fails the test with its stderr, never skips.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::{
    common::{Scenario, Serve, close_all_accepted, http, listener, run},
    serve::{Prometheus, TempDir, single},
};

/// A CA, a server certificate (for the name `tcptrace`, as README's fleet
/// scrape job checks it, and for 127.0.0.1) and client certificates: one
/// it signed, one it signed that has expired, and one signed by nobody.
struct Pki(TempDir);

impl Pki {
    fn new() -> Self {
        let pki = Self(TempDir::new("pki"));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        pki.openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days",
                    "2",
                    "-subj",
                    "/CN=tcptrace test CA",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                ],
            ]
            .concat(),
        );
        fs::write(
            pki.path("server.ext"),
            "subjectAltName=DNS:tcptrace,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ext, days) in [
            ("tls", "server.ext", "2"),
            ("client", "client.ext", "2"),
            ("expired", "client.ext", "-1"),
        ] {
            let cn = format!("/CN={name}");
            pki.openssl(
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-subj",
                        &cn,
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                    ],
                ]
                .concat(),
            );
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                days,
                "-extfile",
                ext,
                "-out",
                &format!("{name}.crt"),
            ]);
        }
        pki.openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days",
                    "2",
                    "-subj",
                    "/CN=self",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                    "-addext",
                    "extendedKeyUsage=clientAuth",
                    "-keyout",
                    "self.key",
                    "-out",
                    "self.crt",
                ],
            ]
            .concat(),
        );
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("/usr/bin/openssl")
            .args(args)
            .current_dir(&self.0.0)
            .output()
            .expect("/usr/bin/openssl (Debian's openssl package; `cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> String {
        self.0.0.join(name).display().to_string()
    }

    /// Writes `text` as `name` in this directory; returns its path.
    fn write(&self, name: &str, text: &str) -> String {
        fs::write(self.path(name), text).unwrap();
        self.path(name)
    }
}

/// The status (0 when there was no HTTP answer) and body curl got.
struct Got {
    status: u16,
    body: String,
    stderr: String,
}

fn curl(args: &[&str]) -> Got {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (Debian's curl package; `cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Got {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The stderr lines of `serve` that contain `needle`, once at least one
/// has come (or 10 s have passed), and a moment for more to follow.
fn logged(serve: &Serve, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !serve.stderr().contains(needle) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    serve
        .stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn hash(password: &str) -> String {
    bcrypt::hash(password, 10).unwrap()
}

#[test]
fn prometheus_scrapes_over_mutual_tls_with_basic_auth_and_answers_the_leak_query() {
    let pki = Pki::new();
    let web = pki.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: ca.crt\n\
             \x20 client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS12\n\
             basic_auth_users:\n  prometheus: {}\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
            hash("scrape-secret")
        ),
    );
    let serve = Serve::start(&["--interval", "1", "--web-config", &web]);
    assert!(
        serve
            .stderr()
            .contains("serving metrics on https://127.0.0.1:"),
        "{}",
        serve.stderr()
    );
    let password = pki.write("password", "scrape-secret");
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: tcptrace\n      cert_file: {}\n      key_file: {}\n\
         \x20   basic_auth:\n      username: prometheus\n      password_file: {password}\n",
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let prom = Prometheus::start_job(Some(&serve.addr), &job);
    prom.wait_for("up{job=\"tcptrace\"}", Duration::from_secs(30), |r| {
        single(r) == Some(1.0)
    });

    let (l, port) = listener("127.0.0.1:0");
    let leak = Scenario::start("client", 3, port, "127.0.0.1");
    close_all_accepted(&l, 3);
    let q = format!("tcptrace_close_wait_sockets{{pid=\"{}\"}}", leak.holder);
    let r = prom.wait_for(&q, Duration::from_secs(60), |r| single(r) == Some(3.0));
    assert_eq!(r[0]["metric"]["comm"], "python3", "{r:?}");
    prom.wait_for("tcptrace_build_info", Duration::from_secs(10), |r| {
        single(r) == Some(1.0)
    });
    assert!(
        !serve
            .stderr()
            .lines()
            .any(|l| l.starts_with("tcptrace: refused ") || l.starts_with("tcptrace: closed ")),
        "Prometheus was refused:\n{}",
        serve.stderr()
    );

    // The right password without a client certificate: refused in the handshake.
    let url = format!("https://{}/metrics", serve.addr);
    let got = curl(&[
        "--cacert",
        &pki.path("ca.crt"),
        "-u",
        "prometheus:scrape-secret",
        &url,
    ]);
    assert_eq!(got.status, 0, "{}", got.body);
    assert!(!got.body.contains("tcptrace_"), "{}", got.body);
    assert_eq!(
        logged(&serve, "peer sent no certificates").len(),
        1,
        "{}",
        serve.stderr()
    );
    // With one, and the header the file sets.
    let got = curl(&[
        "--cacert",
        &pki.path("ca.crt"),
        "--cert",
        &pki.path("client.crt"),
        "--key",
        &pki.path("client.key"),
        "-u",
        "prometheus:scrape-secret",
        "-D",
        "-",
        &url,
    ]);
    assert_eq!(got.status, 200, "{}", got.stderr);
    assert!(
        got.body.contains("x-content-type-options: nosniff"),
        "{}",
        got.body
    );
    drop(leak);
}

#[test]
fn refused_clients_are_logged_once_and_never_see_metrics() {
    let pki = Pki::new();
    let web = pki.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: ca.crt\n\
             \x20 client_auth_type: VerifyClientCertIfGiven\n\
             basic_auth_users:\n  prometheus: {}\n  other: {}\n\
             auth_excluded_paths: [/healthz]\n",
            hash("right"),
            hash("elsewhere")
        ),
    );
    let serve = Serve::start(&["--web-config", &web]);
    let url = format!("https://{}/metrics", serve.addr);
    let ca = pki.path("ca.crt");
    let good = curl(&["--cacert", &ca, "-u", "prometheus:right", &url]);
    assert_eq!(good.status, 200, "{}", good.stderr);
    assert!(good.body.contains("tcptrace_build_info"), "{}", good.body);
    let health = curl(&["--cacert", &ca, &format!("https://{}/healthz", serve.addr)]);
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "ok\n"),
        "auth_excluded_paths"
    );

    let (cert, key, expired, expired_key, self_crt, self_key) = (
        pki.path("client.crt"),
        pki.path("client.key"),
        pki.path("expired.crt"),
        pki.path("expired.key"),
        pki.path("self.crt"),
        pki.path("self.key"),
    );
    let cases: [(&str, &[&str], u16, &str); 5] = [
        (
            "wrong password",
            &["-u", "prometheus:wrong"],
            401,
            "a wrong password for user \"prometheus\"",
        ),
        ("no password", &[], 401, "no credentials"),
        (
            "unknown user",
            &["-u", "root:right"],
            401,
            "an unknown user",
        ),
        (
            "expired client certificate",
            &[
                "--cert",
                &expired,
                "--key",
                &expired_key,
                "-u",
                "prometheus:right",
            ],
            0,
            "Expired",
        ),
        (
            "self-signed client certificate",
            &[
                "--cert",
                &self_crt,
                "--key",
                &self_key,
                "-u",
                "prometheus:right",
            ],
            0,
            "UnknownIssuer",
        ),
    ];
    for (what, args, status, needle) in cases {
        let got = curl(&[&["--cacert", ca.as_str()][..], args, &["-D", "-", &url]].concat());
        assert_eq!(got.status, status, "{what}: {} {}", got.body, got.stderr);
        assert!(
            !got.body.contains("tcptrace_"),
            "{what} was answered with metrics"
        );
        if status == 401 {
            assert!(
                got.body.contains("www-authenticate: Basic realm="),
                "{what}: {}",
                got.body
            );
        }
        let lines = logged(&serve, needle);
        assert_eq!(lines.len(), 1, "{what}: {lines:?}\n{}", serve.stderr());
        assert!(
            lines[0].starts_with("tcptrace: refused 127.0.0.1:"),
            "{}",
            lines[0]
        );
    }
    // A valid client certificate alone is not enough: the password is asked too.
    let got = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
    assert_eq!(got.status, 401);

    // Plain HTTP to the TLS port: told so, as Go's servers say it.
    let plain = http(&serve.addr, "GET", "/metrics", "1.1");
    assert_eq!(plain.status, 400);
    assert!(
        plain.body.contains("HTTP request to an HTTPS server") && !plain.body.contains("tcptrace_")
    );
    assert_eq!(
        logged(&serve, "plain HTTP to the TLS port").len(),
        1,
        "{}",
        serve.stderr()
    );

    // Connected and silent: the handshake is under the header timeout.
    let mut silent = TcpStream::connect(&serve.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap_or(0), 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t.elapsed()
    );
    assert_eq!(
        logged(&serve, "no TLS handshake within 3s").len(),
        1,
        "{}",
        serve.stderr()
    );
}

/// `clients` connections to `target` spread over `sources`, each sending
/// half a request head and waiting; when closed, each comes back after a
/// pause. Returns how many connections were made.
fn slow_clients(
    sources: &[Ipv4Addr],
    clients: usize,
    target: SocketAddr,
    run_for: Duration,
) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + run_for;
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let source = SocketAddr::from((sources[i % sources.len()], 0));
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut made = 0u64;
                    while tokio::time::Instant::now() < deadline {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.bind(source).unwrap();
                        let connect =
                            tokio::time::timeout(Duration::from_secs(2), socket.connect(target));
                        if let Ok(Ok(mut s)) = connect.await {
                            made += 1;
                            let _ = s
                                .write_all(b"GET /metrics HTTP/1.1\r\nHost: tcptrace\r\n")
                                .await;
                            let _ = tokio::time::timeout_at(deadline, s.read(&mut [0u8; 64])).await;
                        }
                        tokio::time::sleep(Duration::from_millis(300 + (i % 200) as u64)).await;
                    }
                    made
                })
            })
            .collect();
        let mut made = 0;
        for t in tasks {
            made += t.await.unwrap();
        }
        made
    })
}

/// GET /metrics on a new connection from 127.0.0.1: how long it took.
fn fresh_scrape(addr: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tcptrace\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read after {:?}: {e}", t.elapsed()))?;
    let text = String::from_utf8_lossy(&raw);
    if text.starts_with("HTTP/1.1 200") && text.contains("tcptrace_build_info") {
        Ok(t.elapsed())
    } else {
        Err(format!(
            "after {:?}: {:?}",
            t.elapsed(),
            &text[..text.len().min(80)]
        ))
    }
}

#[test]
fn slow_clients_from_one_address_or_many_do_not_starve_a_scrape() {
    let serve = Serve::start(&[]);
    let target: SocketAddr = serve.addr.parse().unwrap();
    // Prometheus scrapes from 127.0.0.1, every second with a 1 s timeout.
    let prom = Prometheus::start_job(Some(&serve.addr), "");
    prom.wait_for("up{job=\"tcptrace\"}", Duration::from_secs(30), |r| {
        single(r) == Some(1.0)
    });
    let started = Instant::now();
    // Prometheus keeps its connection open between scrapes; a scraper that
    // connects anew each time (a longer interval, a restart) is probed too.
    let probe = {
        let addr = serve.addr.clone();
        thread::spawn(move || {
            let (mut slowest, mut failed) = (Duration::ZERO, Vec::new());
            while started.elapsed() < Duration::from_secs(24) {
                match fresh_scrape(&addr) {
                    Ok(took) => slowest = slowest.max(took),
                    Err(e) => failed.push(e),
                }
                thread::sleep(Duration::from_millis(250));
            }
            (slowest, failed)
        })
    };
    // 800 from one address, then 800 from 16, which fill the server.
    let one = slow_clients(
        &[Ipv4Addr::new(127, 0, 0, 2)],
        800,
        target,
        Duration::from_secs(12),
    );
    let many: Vec<Ipv4Addr> = (10..26).map(|h| Ipv4Addr::new(127, 0, 0, h)).collect();
    let spread = slow_clients(&many, 800, target, Duration::from_secs(12));
    let window = started.elapsed().as_secs();
    assert!(
        one >= 800 && spread >= 800,
        "{one} and {spread} connections"
    );
    let (slowest, failed) = probe.join().unwrap();
    assert!(failed.is_empty(), "fresh scrapes failed: {failed:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a fresh scrape took {slowest:?}"
    );
    // Every scrape in the window succeeded, and there was one a second.
    let up = format!("up{{job=\"tcptrace\"}}[{window}s]");
    let r = prom.query(&format!("min_over_time({up})"));
    assert_eq!(
        single(&r),
        Some(1.0),
        "a scrape failed: {r:?}\n{}",
        prom.log()
    );
    let r = prom.query(&format!("count_over_time({up})"));
    let scrapes = single(&r).unwrap_or(0.0);
    assert!(
        scrapes >= (window - 3) as f64,
        "{scrapes} scrapes in {window}s: {r:?}"
    );
    // The slow ones were closed, and said so without flooding stderr.
    let log = serve.stderr();
    assert!(log.contains("closed 127.0.0.2:"), "{log}");
    assert!(
        log.contains("more metrics clients refused or closed"),
        "{log}"
    );
    assert!(
        log.lines().count() < 150,
        "{} lines:\n{log}",
        log.lines().count()
    );
}

#[test]
fn bad_web_config_files_exit_2_with_one_line() {
    let pki = Pki::new();
    let good = hash("pw");
    let cases = [
        (
            "missing certificate",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: tls.key\n",
            "cert_file",
        ),
        (
            "key of another certificate",
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: client.key\n",
            "do not go together",
        ),
        (
            "not a key",
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.crt\n",
            "no PEM private key",
        ),
        (
            "bad hash",
            "basic_auth_users:\n  prometheus: hunter2\n",
            "not a bcrypt hash",
        ),
        (
            "unknown key",
            &format!("basic_auth_users:\n  prometheus: {good}\nbasic_auth_realm: x\n"),
            "unknown field `basic_auth_realm`",
        ),
        ("bad YAML", "tls_server_config: [cert_file\n", "line"),
        (
            "mTLS without a CA",
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
    ];
    for (what, text, needle) in cases {
        let path = pki.write("bad.yml", text);
        let out = run(&["serve", "--listen", "127.0.0.1:0", "--web-config", &path]);
        assert_eq!(out.code, Some(2), "{what}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{what}: {:?}", out.stderr);
        assert!(
            out.stderr
                .starts_with(&format!("tcptrace: --web-config {path}: "))
                && out.stderr.contains(needle),
            "{what}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("attached"),
            "{what}: the program was loaded"
        );
    }
    let out = run(&["serve", "--web-config", "/nonexistent/web.yml"]);
    assert_eq!(
        (out.code, out.stderr.lines().count()),
        (Some(2), 1),
        "{}",
        out.stderr
    );
}

#[test]
fn sighup_reloads_the_file_and_a_bad_one_keeps_the_policy_in_force() {
    let dir = TempDir::new("webcfg");
    let path = dir.0.join("web.yml");
    let users = |pw: &str| format!("basic_auth_users:\n  prometheus: {}\n", hash(pw));
    fs::write(&path, users("first")).unwrap();
    let serve = Serve::start(&["--web-config", &path.display().to_string()]);
    let url = format!("http://{}/metrics", serve.addr);
    let status = |pw: &str| curl(&["-u", &format!("prometheus:{pw}"), &url]).status;
    assert_eq!(status("first"), 200);

    fs::write(&path, users("second") + "unknown_key: 1\n").unwrap();
    hangup(&serve);
    let kept = logged(&serve, "keeping the web configuration in force");
    assert_eq!(kept.len(), 1, "{}", serve.stderr());
    assert!(kept[0].contains("unknown_key"), "{}", kept[0]);
    assert_eq!(status("first"), 200, "the bad file replaced the policy");

    fs::write(&path, users("second")).unwrap();
    hangup(&serve);
    assert_eq!(
        logged(&serve, "reloaded the web configuration").len(),
        1,
        "{}",
        serve.stderr()
    );
    assert_eq!(status("second"), 200);
    assert_eq!(status("first"), 401);
    // Still tracing: SIGHUP did not end it.
    assert!(!serve.stderr().contains(" events, "), "{}", serve.stderr());
}

fn hangup(serve: &Serve) {
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGHUP) };
}

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

#[test]
fn the_example_web_config_serves_https_to_its_user_once_its_hash_is_filled_in() {
    let pki = Pki::new();
    let example = fs::read_to_string(format!("{DEPLOY}/web-config.yml")).unwrap();
    // As shipped, it cannot start: the placeholder is not a hash.
    let path = pki.write("web.yml", &example);
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--web-config", &path]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not a bcrypt hash"), "{}", out.stderr);

    let filled = example.replace("REPLACE-WITH-A-BCRYPT-HASH", &hash("from-the-example"));
    assert_ne!(filled, example);
    let path = pki.write("web.yml", &filled);
    let serve = Serve::start(&["--web-config", &path]);
    let base = format!("https://{}", serve.addr);
    let ca = pki.path("ca.crt");
    let got = curl(&[
        "--cacert",
        &ca,
        "-u",
        "prometheus:from-the-example",
        &format!("{base}/metrics"),
    ]);
    assert_eq!(got.status, 200, "{}", got.stderr);
    assert_eq!(
        curl(&["--cacert", &ca, &format!("{base}/metrics")]).status,
        401
    );
    let health = curl(&["--cacert", &ca, &format!("{base}/healthz")]);
    assert_eq!(health.status, 200, "probes need no credentials");
}

#[test]
fn the_units_web_config_override_verifies() {
    // The override the unit's comment shows, applied as `systemctl edit` would.
    let unit = fs::read_to_string(format!("{DEPLOY}/tcptrace.service")).unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("over HTTPS"))
        .expect("the unit says how to serve HTTPS");
    let block: Vec<&str> = lines[start + 1..]
        .iter()
        .skip_while(|l| !l.starts_with("#   "))
        .take_while(|l| l.starts_with("#   "))
        .map(|l| &l[4..])
        .collect();
    assert!(
        block
            .iter()
            .any(|l| l.starts_with("LoadCredential=web.yml:"))
            && block.iter().any(|l| l.contains("--web-config %d/web.yml")),
        "{block:?}"
    );
    let mut edited: Vec<&str> = Vec::new();
    for &l in &lines {
        if l.starts_with("ExecStart=") {
            edited.extend(
                block
                    .iter()
                    .filter(|b| !matches!(**b, "[Service]" | "ExecStart="))
                    .copied(),
            );
        } else {
            edited.push(l);
        }
    }
    let dir = TempDir::new("unit-web");
    let path = dir.0.join("tcptrace.service");
    let text = edited
        .join("\n")
        .replace("/usr/local/bin/tcptrace", crate::common::BIN)
        + "\n";
    fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_daemonset_serves_https_from_a_secret_with_capabilities_unchanged() {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            &format!("{DEPLOY}/daemonset.yaml"),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--web-config")
        .expect("--web-config");
    let file = Path::new(args[i + 1]);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the web config is on a mounted volume");
    assert_eq!(mount["readOnly"], true);
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["secret"]["secretName"].is_string(), "{volume}");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    // /healthz answers the kubelet, which sends no credentials.
    let example = fs::read_to_string(format!("{DEPLOY}/web-config.yml")).unwrap();
    assert!(
        example.contains("auth_excluded_paths: [/healthz]"),
        "{example}"
    );
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(caps, ["BPF", "PERFMON", "DAC_READ_SEARCH", "SYS_PTRACE"]);
}

#[test]
fn the_readmes_fleet_scrape_job_passes_promtool() {
    // The job README.md shows; the mutual-TLS test above scrapes with the same keys.
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let from = readme
        .find("The scrape job:")
        .expect("README.md shows the scrape job");
    let yaml = readme[from..]
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    for key in [
        "scheme: https",
        "tls_config:",
        "server_name: tcptrace",
        "basic_auth:",
    ] {
        assert!(yaml.contains(key), "{key}: {yaml}");
    }
    let dir = TempDir::new("readme-job");
    let path = dir.0.join("prometheus.yml");
    fs::write(&path, yaml).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
