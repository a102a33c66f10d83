//! `tcptrace serve` scraped by a real Prometheus on loopback, its HTTP
//! endpoints and bad input, and the deployment files in deploy/ checked with
//! the tools that consume them (promtool, systemd-analyze, Prometheus's
//! query parser) and with the capabilities the unit grants.
//!
//! A tracer that cannot load fails the test with its stderr, never skips.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::common::{
    BIN, BpfStats, Netns, Paranoid, Scenario, Serve, close_all_accepted, closed_port, http,
    listener, raise_memlock_before_5_11, run, slowed,
};
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// A fresh directory under /tmp, removed with its contents when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tcptrace-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `tcptrace serve` (optionally behind a wrapper such as setpriv),
/// with the address it printed; killed when dropped.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus on a free loopback port, scraping `target` every second
/// and evaluating deploy/alerts.yml; killed and its storage removed when dropped.
pub struct Prometheus {
    child: Child,
    addr: String,
    target: Option<String>,
    dir: TempDir,
}

impl Prometheus {
    fn start(target: Option<&str>) -> Self {
        Self::start_job(target, "")
    }

    /// `job` is more of the scrape job's YAML (`scheme`, `tls_config`...),
    /// indented as its keys.
    pub fn start_job(target: Option<&str>, job: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let scrape = target.map_or_else(String::new, |t| {
            format!(
                "scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: [\"{t}\"]\n{job}"
            )
        });
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {DEPLOY}/alerts.yml\n{scrape}"
        );
        fs::write(dir.0.join("prometheus.yml"), config).unwrap();
        let log = fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let addr = format!("127.0.0.1:{}", closed_port());
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/prometheus (Debian's prometheus package; `cargo xtask setup` installs it)");
        let mut p = Self {
            child,
            addr,
            target: target.map(str::to_owned),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            if TcpStream::connect(&p.addr).is_ok()
                && http(&p.addr, "GET", "/-/ready", "1.0").status == 200
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 60 s:\n{}",
                p.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let r = http(&self.addr, "GET", path, "1.0");
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{path}: {e}: {} {}", r.status, r.body))
    }

    /// The query's result vector; panics when Prometheus rejects it.
    pub fn query(&self, q: &str) -> Vec<Value> {
        let v = self.api(&format!("/api/v1/query?query={}", urlencode(q)));
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until `pred` holds over the query's result; panics after `timeout`.
    pub fn wait_for(
        &self,
        q: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(q);
            if pred(&result) {
                return result;
            }
            if Instant::now() > deadline {
                let targets = self.api("/api/v1/targets");
                // What the target says now, without the buckets.
                let now = self.target.as_ref().map_or_else(String::new, |t| {
                    http(t, "GET", "/metrics", "1.0")
                        .body
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                panic!(
                    "{q} did not come true within {timeout:?}; last result {result:?}\ntargets: {targets}\n{}\ntarget now:\n{now}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn single(result: &[Value]) -> Option<f64> {
    (result.len() == 1).then(|| value(&result[0]))
}

#[test]
fn prometheus_scrapes_a_close_wait_leak_and_the_duration_histograms() {
    let _stats = BpfStats::enable();
    // IPv6 only, in the kernel: other tests' IPv4 connection storms on this
    // host cannot fill the ring and make the exact counts below miss events.
    let serve = Serve::start(&["--interval", "1", "-6"]);
    let prom = Prometheus::start(Some(&serve.addr));
    prom.wait_for("up{job=\"tcptrace\"}", Duration::from_secs(30), |r| {
        single(r) == Some(1.0)
    });

    let (l, port) = listener("[::1]:0");
    let leak = Scenario::start("client", 4, port, "::1");
    close_all_accepted(&l, 4);
    let leaked_at = Instant::now();
    let pid = leak.holder.to_string();

    // The leak query an alert rule would use.
    let q = format!("tcptrace_close_wait_sockets{{pid=\"{pid}\"}}");
    let r = prom.wait_for(&q, Duration::from_secs(60), |r| single(r) == Some(4.0));
    let labels = &r[0]["metric"];
    assert_eq!(labels["comm"], "python3", "{labels}");
    assert_eq!(labels["job"], "tcptrace", "{labels}");
    assert_eq!(labels["instance"], serve.addr.as_str(), "{labels}");
    prom.wait_for(
        &format!("tcptrace_close_wait_oldest_seconds{{pid=\"{pid}\"}}"),
        Duration::from_secs(30),
        |r| single(r).is_some_and(|age| age > 0.0 && age < 120.0),
    );
    prom.wait_for(
        &format!("tcptrace_process_open_fds{{pid=\"{pid}\"}} >= 4"),
        Duration::from_secs(30),
        |r| r.len() == 1,
    );
    prom.wait_for(
        &format!("tcptrace_process_fd_limit{{pid=\"{pid}\"}}"),
        Duration::from_secs(30),
        |r| single(r).is_some_and(|n| n > 4.0),
    );
    prom.wait_for(
        "tcptrace_sockets{state=\"close_wait\"}",
        Duration::from_secs(30),
        |r| single(r).is_some_and(|n| n >= 4.0),
    );
    // The leaker's connects and our accepts were timed.
    for (q, at_least) in [
        (
            "tcptrace_handshake_duration_seconds_count{handshake=\"connect\"}",
            4.0,
        ),
        (
            "tcptrace_handshake_duration_seconds_count{handshake=\"accept\"}",
            4.0,
        ),
        (
            "tcptrace_state_duration_seconds_count{state=\"syn_sent\"}",
            4.0,
        ),
        (
            "tcptrace_transitions_total{from=\"established\",to=\"close_wait\"}",
            4.0,
        ),
        // Only the entries into CLOSE_WAIT cross the ring buffer (for the
        // holders of leaks sock_diag cannot list); the rest is counted in the kernel.
        ("tcptrace_events_total", 4.0),
        ("tcptrace_bpf_run_time_seconds_total", f64::MIN_POSITIVE),
    ] {
        prom.wait_for(q, Duration::from_secs(30), |r| {
            single(r).is_some_and(|n| n >= at_least)
        });
    }
    // Present from the start (zero unless the host is busier than the ring).
    prom.wait_for(
        "tcptrace_events_lost_total + tcptrace_socket_table_evictions_total",
        Duration::from_secs(10),
        |r| single(r).is_some_and(|n| n >= 0.0),
    );
    prom.wait_for("tcptrace_build_info", Duration::from_secs(10), |r| {
        single(r) == Some(1.0) && r[0]["metric"]["version"] == env!("CARGO_PKG_VERSION")
    });

    // End the leak after it is 3 s old: four CLOSE_WAIT -> CLOSE durations
    // land above the 1.05 s bucket, and both closes are timed.
    if let Some(rest) = Duration::from_secs(3).checked_sub(leaked_at.elapsed()) {
        thread::sleep(rest);
    }
    drop(leak);
    prom.wait_for(&q, Duration::from_secs(30), <[Value]>::is_empty);
    prom.wait_for(
        "tcptrace_state_duration_seconds_count{state=\"close_wait\"} \
         - ignoring(le) tcptrace_state_duration_seconds_bucket{state=\"close_wait\",le=\"1.048576\"}",
        Duration::from_secs(30),
        |r| single(r).is_some_and(|n| n >= 4.0),
    );
    for kind in ["passive_close", "active_close"] {
        prom.wait_for(
            &format!("tcptrace_handshake_duration_seconds_count{{handshake=\"{kind}\"}}"),
            Duration::from_secs(30),
            |r| single(r).is_some_and(|n| n >= 4.0),
        );
    }
    // The example rules loaded and evaluate without errors.
    let rules = prom.api("/api/v1/rules");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(loaded.len() >= 2, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}

/// A docker-style cgroup (`docker-<id>.scope`) under the cgroup2 mount;
/// its processes are moved out and it is removed when dropped.
struct DockerCgroup(String);

impl DockerCgroup {
    fn new(id: &str) -> Self {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = info
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split_whitespace().nth(4))
            .expect("a cgroup2 mount");
        let dir = format!("{mount}/docker-{id}.scope");
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn enter(&self, pid: u32) {
        fs::write(format!("{}/cgroup.procs", self.0), pid.to_string()).unwrap();
    }
}

impl Drop for DockerCgroup {
    fn drop(&mut self) {
        let parent = Path::new(&self.0).parent().unwrap().join("cgroup.procs");
        if let Ok(procs) = fs::read_to_string(format!("{}/cgroup.procs", self.0)) {
            for pid in procs.lines() {
                let _ = fs::write(&parent, pid);
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn a_leak_in_a_containers_own_network_namespace_is_named_with_the_container() {
    // A container as runtimes make one: its own network namespace (where
    // sock_diag in ours cannot list its sockets) and a docker-<id>.scope
    // cgroup. The tracepoint sees its sockets enter CLOSE_WAIT; /proc names
    // the holder; its cgroup names the container.
    let id = "5e7a9c0d1b2f".to_owned() + &"b".repeat(52);
    let ns = Netns::new();
    let cgroup = DockerCgroup::new(&id);
    let serve = Serve::start(&["--interval", "0.5"]);
    let server = Scenario::start_in(Some(&ns.name), "listen-close", 3, 0, "127.0.0.1");
    let leak = Scenario::start_in(Some(&ns.name), "client", 3, server.port, "127.0.0.1");
    cgroup.enter(leak.holder);
    let labels = format!(
        "{{pid=\"{}\",comm=\"python3\",container=\"5e7a9c0d1b2f\",netns=\"{}\"}} ",
        leak.holder,
        ns.inode()
    );
    let n = serve.wait_for_line(
        &format!("tcptrace_close_wait_sockets{labels}"),
        Duration::from_secs(30),
    );
    assert_eq!(n, 3.0, "{}", serve.stderr());
    let age = serve.wait_for_line(
        &format!("tcptrace_close_wait_oldest_seconds{labels}"),
        Duration::from_secs(10),
    );
    assert!(age > 0.0 && age < 60.0, "{age}");
    serve.wait_for_line(
        &format!("tcptrace_process_open_fds{labels}"),
        Duration::from_secs(10),
    );
    drop(leak);
    drop(server);
}

#[test]
fn endpoints_and_metric_names() {
    let serve = Serve::start(&[]);
    let root = serve.get("/");
    assert_eq!(root.status, 200);
    assert_eq!(root.body.lines().count(), 1, "{}", root.body);
    assert!(root.body.contains("/metrics"), "{}", root.body);
    let health = serve.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let missing = serve.get("/nope");
    assert_eq!(missing.status, 404);
    let post = http(&serve.addr, "POST", "/metrics", "1.1");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = http(&serve.addr, "HEAD", "/metrics", "1.1");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(
        http(&serve.addr, "GET", "/metrics?x=1", "1.0").status,
        200,
        "HTTP/1.0 and query strings"
    );

    let metrics = serve.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // Prometheus's own linter: naming, units, _total, HELP/TYPE.
    let mut lint = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .unwrap()
        .write_all(metrics.body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        metrics.body
    );

    // Every family the issue names, and every name deploy/ uses, is exported.
    // Transition families appear with the first transition (our own
    // requests make some), so poll a little.
    let always = [
        "tcptrace_transitions_total",
        "tcptrace_sockets",
        "tcptrace_state_duration_seconds",
        "tcptrace_handshake_duration_seconds",
        "tcptrace_events_total",
        "tcptrace_events_lost_total",
        "tcptrace_socket_table_evictions_total",
        "tcptrace_build_info",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let exported = loop {
        let exported: BTreeSet<String> = serve
            .get("/metrics")
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let missing: Vec<_> = always.iter().filter(|n| !exported.contains(**n)).collect();
        if missing.is_empty() {
            break exported;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} missing: {exported:?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    // Per-process families appear only while a process holds CLOSE_WAIT
    // sockets, and the BPF run time only while statistics are on.
    let sometimes = [
        "tcptrace_close_wait_sockets",
        "tcptrace_close_wait_oldest_seconds",
        "tcptrace_process_open_fds",
        "tcptrace_process_fd_limit",
        "tcptrace_bpf_run_time_seconds_total",
    ];
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = fs::read_to_string(Path::new(DEPLOY).join(file)).unwrap();
        for name in metric_names(&text) {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exported.contains(family) || sometimes.contains(&family),
                "{file} uses {name}, which tcptrace does not export"
            );
        }
    }
}

#[test]
fn scrapes_are_answered_during_a_connection_storm() {
    let serve = Serve::start(&[]);
    let (l, port) = listener("127.0.0.1:0");
    let until = Instant::now() + Duration::from_secs(6);
    let acceptor = thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        while Instant::now() < until {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    let clients: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
                        rst_on_close(&c);
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let t = Instant::now();
        assert_eq!(serve.get("/metrics").status, 200);
        slowest = slowest.max(t.elapsed());
        thread::sleep(Duration::from_millis(200));
    }
    let connections: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    acceptor.join().unwrap();
    assert!(connections > 1000, "only {connections} connections");
    // One vCPU shared with the storm's three threads under TCG: stretched.
    assert!(
        slowest < slowed(Duration::from_secs(1)),
        "a scrape took {slowest:?} during {connections} connections"
    );
}

/// SO_LINGER 0: close() sends RST, so the storm leaves no TIME_WAIT behind.
fn rst_on_close(c: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on our socket with a valid linger struct.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// `tcptrace_...` identifiers in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tcptrace_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn a_port_in_use_is_one_line_and_exit_1() {
    let (busy, port) = listener("127.0.0.1:0");
    let out = run(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    drop(busy);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    assert!(
        out.stderr
            .starts_with("tcptrace: cannot listen on 127.0.0.1:")
            && out.stderr.contains("in use"),
        "{}",
        out.stderr
    );
    // Refused before the kernel program is loaded.
    assert!(!out.stderr.contains("attached"), "{}", out.stderr);
    // An address this host does not have.
    let out = run(&["serve", "--listen", "192.0.2.1:10180"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    assert!(out.stderr.contains("no local interface"), "{}", out.stderr);
}

#[test]
fn help_documents_the_default_address_and_exit_codes() {
    let out = run(&["serve", "--help"]);
    assert_eq!(out.code, Some(0));
    let text = out.lines.join("\n");
    for needle in [
        "127.0.0.1:10180",
        "/healthz",
        "EXIT STATUS",
        "port is in use",
        "--top",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(DEPLOY)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The repo's unit with ExecStart pointing at the binary under test.
fn unit_under_test(dir: &TempDir) -> PathBuf {
    let unit = fs::read_to_string(Path::new(DEPLOY).join("tcptrace.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/tcptrace serve"),
        "{unit}"
    );
    let path = dir.0.join("tcptrace.service");
    fs::write(&path, unit.replace("/usr/local/bin/tcptrace", BIN)).unwrap();
    path
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = TempDir::new("unit");
    let unit = unit_under_test(&dir);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings: none are allowed.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    // systemd's own exposure score: 0 (locked down) to 10 (unsafe); "OK" is below 3.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 3.0:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The capabilities the unit grants, as setpriv spells them (`bpf,perfmon,...`).
fn unit_capabilities() -> String {
    let unit = fs::read_to_string(Path::new(DEPLOY).join("tcptrace.service")).unwrap();
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect::<BTreeSet<_>>()
    };
    let ambient = line("AmbientCapabilities=");
    assert_eq!(ambient, line("CapabilityBoundingSet="));
    assert!(
        unit.lines().any(|l| l == "NoNewPrivileges=yes") && unit.contains("DynamicUser=yes"),
        "{unit}"
    );
    ambient.into_iter().collect::<Vec<_>>().join(",")
}

#[test]
fn the_units_capabilities_are_enough_without_root() {
    // As the unit runs it: not root, only its capabilities, no new privileges,
    // LimitMEMLOCK=infinity (which Linux < 5.11 charges maps to); where
    // perf_event_paranoid is 3 (Debian's kernels), with it at 2 as README
    // says (reliability's capabilities test checks the refusal at 3).
    let _restore = Paranoid::above_2().inspect(Paranoid::lower);
    raise_memlock_before_5_11();
    let caps = unit_capabilities();
    let plus: Vec<String> = caps.split(',').map(|c| format!("+{c}")).collect();
    let set = format!("-all,{}", plus.join(","));
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
        "--no-new-privs",
        BIN,
    ]);
    let serve = Serve::start_with(cmd, &["--interval", "0.5"]);
    // A leak by a root process: its holder must still be named.
    let (l, port) = listener("127.0.0.1:0");
    let leak = Scenario::start("client", 3, port, "127.0.0.1");
    close_all_accepted(&l, 3);
    let n = serve.wait_for_line(
        &format!(
            "tcptrace_close_wait_sockets{{pid=\"{}\",comm=\"python3\",container=\"\",netns=\"\"}} ",
            leak.holder
        ),
        Duration::from_secs(30),
    );
    assert_eq!(n, 3.0, "{}", serve.stderr());
    let status = fs::read_to_string(format!("/proc/{}/status", serve.child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
}

#[test]
fn daemonset_manifest_has_what_the_tracer_needs() {
    // YAML to JSON with python3's yaml module (python3-yaml), then checked here.
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
        "python3-yaml (a dependency of llvm-22-tools, which setup installs): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_ascii_lowercase())
        .collect();
    let unit: BTreeSet<String> = unit_capabilities().split(',').map(str::to_owned).collect();
    assert_eq!(added, unit, "the same capabilities as the systemd unit");
    for k in ["cpu", "memory"] {
        assert!(c["resources"]["limits"][k].is_string(), "limit {k}");
        assert!(c["resources"]["requests"][k].is_string(), "request {k}");
    }
    assert_eq!(c["ports"][0]["containerPort"], 10180);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/sys/kernel/tracing"), "{mounts:?}");
}

#[test]
fn grafana_dashboard_queries_parse_in_prometheus() {
    let dash: Value = serde_json::from_str(
        &fs::read_to_string(Path::new(DEPLOY).join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(def) = v["definition"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's; its metric is a selector.
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|d| d.split(',').next())
                .unwrap();
            exprs.push(inner.to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let prom = Prometheus::start(None);
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$state", ".*");
        // Panics with Prometheus's parse error if the expression is invalid.
        prom.query(&q);
    }
}
