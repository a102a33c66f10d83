//! Shared by the kernel tests: run the real `tcptrace` binary as root against
//! the real kernel, and drive real sockets on loopback.
//!
//! A tracer that cannot load makes the test fail with its stderr, never skip.

use std::{
    cell::Cell,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// For unfiltered tracers: other tests' storms run at the same time and must
/// not overflow the ring of a test that checks an exact sequence.
pub const BIG_RING: &str = "67108864";

/// How many times slower than usual this machine may run the tests:
/// `TCPTRACE_TEST_SLOWDOWN` (the kernel matrix's guests, emulated by TCG,
/// set it), else 1. It stretches waits and time limits, never what is
/// asserted.
pub fn slowdown() -> u32 {
    std::env::var("TCPTRACE_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// `d`, stretched by [`slowdown`].
pub fn slowed(d: Duration) -> Duration {
    d * slowdown()
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether `v` is a LISTEN -> SYN_RECV record without its peer: the
/// listener's unspecified address and port 0. Kernels may fire the
/// tracepoint in inet_csk_clone_lock() before the peer is copied into the
/// new socket (Debian's 5.10 and 6.1 always, 6.12 in a one-vCPU guest; the
/// host's 6.18 names it), and tcptrace shows what the record holds: that,
/// or the peer, never another address.
pub fn syn_recv_without_peer(v: &Value) -> bool {
    v["oldstate"] == "LISTEN"
        && v["newstate"] == "SYN_RECV"
        && matches!(v["raddr"].as_str(), Some("0.0.0.0" | "::"))
        && v["rport"] == 0
}

/// kernel.perf_event_paranoid when above 2 (Debian's kernels' default), lowered
/// to 2 by [`Paranoid::lower`] and put back when dropped.
pub struct Paranoid {
    pub was: i32,
}

const PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

impl Paranoid {
    pub fn above_2() -> Option<Self> {
        let was: i32 = std::fs::read_to_string(PARANOID)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (was > 2).then_some(Self { was })
    }

    pub fn lower(&self) {
        std::fs::write(PARANOID, "2").unwrap();
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(PARANOID, self.was.to_string());
    }
}

/// RLIMIT_MEMLOCK lifted for this process and its children, as the unit's
/// LimitMEMLOCK=infinity does, where it matters: Linux < 5.11 charges BPF
/// maps to it, and without CAP_SYS_RESOURCE tcptrace cannot lift it itself.
pub fn raise_memlock_before_5_11() {
    if kernel_version() >= (5, 11) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    assert_eq!(
        // SAFETY: a valid pointer to an initialised rlimit; we are root.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) },
        0,
        "raising RLIMIT_MEMLOCK as the unit does"
    );
}

/// A running `tcptrace` whose stdout lines are collected in the background.
pub struct Running {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    out_thread: Option<thread::JoinHandle<()>>,
    err_thread: Option<thread::JoinHandle<()>>,
}

pub struct Finished {
    pub lines: Vec<String>,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Finished {
    pub fn json(&self) -> Vec<Value> {
        self.lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// The summary line's "N missed": tracepoint runs the kernel skipped
    /// because a BPF program (any tracer's: the tests run in parallel) was
    /// already running on that CPU.
    pub fn missed(&self) -> u64 {
        self.said_missed().unwrap_or_else(|| {
            panic!(
                "no missed count in {:?}",
                self.stderr.lines().last().unwrap_or_default()
            )
        })
    }

    /// [`Finished::missed`], if the run ended with its summary.
    fn said_missed(&self) -> Option<u64> {
        let summary = self.stderr.lines().last()?;
        summary
            .split(", ")
            .find_map(|part| part.strip_suffix(" missed")?.parse().ok())
    }

    /// Adds its misses to this thread's count, for [`retrying`].
    fn noted(self) -> Self {
        let missed = self.said_missed().unwrap_or(0);
        MISSED.with(|m| m.set(m.get() + missed));
        self
    }
}

thread_local! {
    /// Tracepoint runs the kernel skipped, over the tracers this attempt of
    /// this thread's test ran.
    static MISSED: Cell<u64> = const { Cell::new(0) };
}

/// The kernel skips a tracepoint run when a BPF program is already running
/// on that CPU (any tracer's: the tests run in parallel), e.g. a softirq
/// transition interrupting a process-context one; the tracer reports these
/// as "missed". That, and nothing else, excuses a test of exact transitions
/// failing: the scenario then runs again, at most three times in all.
pub fn retrying(scenario: impl Fn()) {
    for attempt in 1..=3 {
        MISSED.with(|m| m.set(0));
        match catch_unwind(AssertUnwindSafe(&scenario)) {
            Ok(()) => return,
            Err(e) => {
                let missed = MISSED.with(Cell::get);
                if attempt == 3 || missed == 0 {
                    resume_unwind(e);
                }
                eprintln!("attempt {attempt} failed with {missed} kernel runs missed: again");
            }
        }
    }
}

/// Starts `tcptrace ARGS` and waits for its `tcptrace: attached` line.
pub fn start(args: &[&str]) -> Running {
    start_with(&[], args)
}

/// Like [`start`], run through a wrapper such as `setpriv ...`.
pub fn start_with(wrapper: &[&str], args: &[&str]) -> Running {
    let mut cmd = match wrapper {
        [] => Command::new(BIN),
        [program, rest @ ..] => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tcptrace");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let out = child.stdout.take().unwrap();
    let l2 = lines.clone();
    let out_thread = thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            l2.lock().unwrap().push(line);
        }
    });
    let mut err = child.stderr.take().unwrap();
    let e2 = stderr.clone();
    let err_thread = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            e2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut run = Running {
        child,
        lines,
        stderr,
        out_thread: Some(out_thread),
        err_thread: Some(err_thread),
    };
    let deadline = Instant::now() + slowed(Duration::from_secs(60));
    loop {
        if run.stderr.lock().unwrap().contains("tcptrace: attached") {
            return run;
        }
        if let Ok(Some(status)) = run.child.try_wait() {
            // Let the reader thread collect everything first.
            run.err_thread.take().map(|t| t.join());
            panic!(
                "tcptrace {args:?} exited with {status} before attaching (root and eBPF are required):\n{}",
                run.stderr.lock().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tcptrace did not attach within {:?}:\n{}",
            slowed(Duration::from_secs(60)),
            run.stderr.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `pred` holds over the JSON lines seen so far (or times out).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let parsed: Vec<Value> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if pred(&parsed) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGINT, then collect everything it printed.
    pub fn stop(self) -> Finished {
        self.signal(libc::SIGINT);
        self.wait()
    }

    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tcptrace did not exit within 30 s:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.out_thread.take().map(|t| t.join());
        self.err_thread.take().map(|t| t.join());
        Finished {
            lines: std::mem::take(&mut *self.lines.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
            code: status.code(),
        }
        .noted()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tcptrace to completion (for bad-input and --once cases).
pub fn run(args: &[&str]) -> Finished {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tcptrace");
    Finished::from(out)
}

impl From<std::process::Output> for Finished {
    fn from(out: std::process::Output) -> Self {
        Self {
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
        }
        .noted()
    }
}

/// A listener on loopback with a kernel-chosen port.
pub fn listener(addr: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind(addr).expect("bind");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let (l, port) = listener("127.0.0.1:0");
    drop(l);
    port
}

pub fn connect(addr: &str, port: u16) -> TcpStream {
    let host = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    TcpStream::connect(host).expect("connect")
}

/// (oldstate, newstate) of the JSON transitions that touch `port` on either side,
/// for one side selected by `side(v)`.
pub fn transitions(vals: &[Value], pred: impl Fn(&Value) -> bool) -> Vec<(String, String)> {
    vals.iter()
        .filter(|v| pred(v))
        .map(|v| {
            (
                v["oldstate"].as_str().unwrap().to_owned(),
                v["newstate"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

pub fn port_of(v: &Value, key: &str) -> u16 {
    v[key].as_u64().unwrap() as u16
}

/// Our own process id, as the kernel reports the tgid.
pub fn my_pid() -> u32 {
    std::process::id()
}

const LEAKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/scenarios/leaker.py"
);

/// A python process leaking CLOSE_WAIT sockets (tests/scenarios/leaker.py);
/// killed with its children when dropped, which closes its sockets.
pub struct Scenario {
    child: Child,
    pub holder: u32,
    pub others: Vec<u32>,
    pub port: u16,
}

impl Scenario {
    pub fn start(mode: &str, n: usize, port: u16, host: &str) -> Self {
        Self::start_in(None, mode, n, port, host)
    }

    /// In network namespace `netns` when given (`ip netns exec`).
    pub fn start_in(netns: Option<&str>, mode: &str, n: usize, port: u16, host: &str) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/python3"]);
                c
            }
            None => Command::new("/usr/bin/python3"),
        };
        let mut child = cmd
            .args([LEAKER, mode, &n.to_string(), &port.to_string(), host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("leaker said {line:?}: {e}"));
        Self {
            holder: v["holder"].as_u64().unwrap() as u32,
            others: v["others"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32)
                .collect(),
            port: v["port"].as_u64().unwrap() as u16,
            child,
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        for pid in std::iter::once(self.holder).chain(self.others.iter().copied()) {
            // SAFETY: kill(2) on processes this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts `n` connections and closes them: the connecting side goes to CLOSE_WAIT.
pub fn close_all_accepted(l: &TcpListener, n: usize) {
    for _ in 0..n {
        drop(l.accept().unwrap().0);
    }
}

/// A network namespace of this test's own (a pod, a test host): `ip netns
/// add`, its loopback up; deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "tcptrace-t{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Its inode, as `/proc/PID/ns/net` of its processes names it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("the namespace's bind mount")
            .ino()
    }

    /// `ip netns exec NAME ARGS`, its output.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two test hosts joined by a veth pair: `a` is 10.Y.X.1 and fd00:Y:X::1,
/// `b` is .2 and ::2, so their traffic crosses a (virtual) interface
/// instead of loopback.
pub struct Hosts {
    pub a: Netns,
    pub b: Netns,
    pub a_v4: String,
    pub a_v6: String,
}

impl Hosts {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (y, x) = (200 + std::process::id() % 50, k % 250);
        let (a, b) = (Netns::new(), Netns::new());
        let (va, vb) = (
            format!("ta{}x{k}", std::process::id() % 100000),
            format!("tb{}x{k}", std::process::id() % 100000),
        );
        ip(&[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ]);
        for (ns, dev, host) in [(&a, &va, 1), (&b, &vb, 2)] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("10.{y}.{x}.{host}/24"),
                "dev",
                dev,
            ]);
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("fd00:{y}:{x}::{host}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        Self {
            a,
            b,
            a_v4: format!("10.{y}.{x}.1"),
            a_v6: format!("fd00:{y}:{x}::1"),
        }
    }
}

const PEERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/scenarios/peers.py"
);

/// One end of TCP connections, a real process (tests/integration/scenarios/peers.py).
pub struct Peer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    pub pid: u32,
    pub port: u16,
    /// A client's local ports.
    pub lports: Vec<u16>,
}

impl Peer {
    /// A server on HOST:PORT accepting `n` (in a named worker thread if `threaded`).
    pub fn server(netns: Option<&Netns>, host: &str, port: u16, n: usize, threaded: bool) -> Self {
        let mut args = vec!["server", host];
        let (port, n) = (port.to_string(), n.to_string());
        args.extend([port.as_str(), n.as_str()]);
        if threaded {
            args.push("--threaded");
        }
        Self::spawn(netns, &args)
    }

    /// `n` connections to HOST:PORT from a worker thread, closed on EOF per `eof`
    /// (`now`, `5ms`, `never`).
    pub fn client(netns: Option<&Netns>, host: &str, port: u16, n: usize, eof: &str) -> Self {
        let (port, n) = (port.to_string(), n.to_string());
        Self::spawn(netns, &["client", host, &port, &n, eof])
    }

    fn spawn(netns: Option<&Netns>, args: &[&str]) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "/usr/bin/python3"]);
                c
            }
            None => Command::new("/usr/bin/python3"),
        };
        let mut child = cmd
            .arg(PEERS)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let v = read_json(&mut out);
        Self {
            pid: v["pid"].as_u64().unwrap() as u32,
            port: v["port"].as_u64().unwrap() as u16,
            lports: v["lports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u16)
                .collect(),
            child,
            out,
        }
    }

    /// Server: closes every accepted connection.
    pub fn close_all(&mut self) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"close\n").unwrap();
        stdin.flush().unwrap();
        let v = read_json(&mut self.out);
        assert!(v["closed"].is_u64(), "{v}");
    }

    /// Client: waits until it closed its sockets on EOF.
    pub fn wait_closed(&mut self) {
        let v = read_json(&mut self.out);
        assert!(v["closed"].is_u64(), "{v}");
    }
}

fn read_json(out: &mut BufReader<std::process::ChildStdout>) -> Value {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("peers.py said {line:?}: {e}"))
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tcptrace serve` on a port of its own.
pub struct Serve {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    pub addr: String,
}

impl Serve {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(BIN), args)
    }

    /// `cmd` runs the binary; `args` follow `serve --listen 127.0.0.1:0`.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcptrace serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + slowed(Duration::from_secs(60));
        loop {
            let text = stderr.lock().unwrap().clone();
            if text.contains("tcptrace: attached") {
                let addr = text
                    .lines()
                    .find_map(|l| {
                        let l = l.strip_prefix("tcptrace: serving metrics on ")?;
                        l.strip_prefix("http://").or(l.strip_prefix("https://"))
                    })
                    .and_then(|l| l.strip_suffix("/metrics"))
                    .unwrap_or_else(|| panic!("no address in {text}"))
                    .to_owned();
                return Self {
                    child,
                    stderr,
                    addr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "tcptrace serve exited with {status} before attaching (root and eBPF are required):\n{}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tcptrace serve did not attach within {:?}:\n{text}",
                slowed(Duration::from_secs(60))
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        http(&self.addr, "GET", path, "1.1")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls /metrics until the line starting with `prefix` has the value
    /// `want` (the exporter refreshes its figures every second).
    pub fn wait_for_value(&self, prefix: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.get("/metrics").body;
            let got = body
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix:?} is {got:?}, not {want}, after {timeout:?}:\n{body}\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls /metrics until a line starts with `prefix`; returns its value.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.get("/metrics").body;
            if let Some(v) = body
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse().ok())
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no line {prefix:?} within {timeout:?}:\n{body}\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One request on its own connection (HTTP/1.0 keeps Go from chunking).
pub fn http(addr: &str, method: &str, path: &str, version: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/{version}\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The fd a bpf(2) command `cmd` returns, its attr given as 32-bit words.
fn bpf_fd(cmd: libc::c_long, attr: &[u32], what: &str) -> OwnedFd {
    // SAFETY: bpf(2) with a valid attr of the given size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(attr) as u32) };
    assert!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd, ours alone.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Holds kernel BPF run-time statistics on (BPF_ENABLE_STATS) for as long as
/// it lives; reference-counted by the kernel, so nobody else's setting changes.
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Self {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let _fd = bpf_fd(BPF_ENABLE_STATS, &[0], "BPF_ENABLE_STATS"); // BPF_STATS_RUN_TIME
        Self { _fd }
    }
}

/// A BPF program held open by its id, so that its statistics outlive the
/// process that loaded it.
pub struct HeldProgram(OwnedFd);

impl HeldProgram {
    pub fn by_id(id: u32) -> Self {
        const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
        // prog_id, next_id, open_flags
        let attr = [id, 0, 0];
        Self(bpf_fd(
            BPF_PROG_GET_FD_BY_ID,
            &attr,
            &format!("BPF_PROG_GET_FD_BY_ID {id}"),
        ))
    }

    /// Its runs so far (counted while BPF statistics are on).
    pub fn run_cnt(&self) -> u64 {
        let path = format!("/proc/self/fdinfo/{}", self.0.as_raw_fd());
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("run_cnt:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no run_cnt in {text}"))
    }
}

/// The ids of the BPF objects (`key`: `prog_id:`, `map_id:`, `link_id:`)
/// process `pid` holds, from its fdinfo.
pub fn bpf_ids(pid: u32, key: &str) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(key) {
                ids.insert(v.trim().parse().unwrap());
            }
        }
    }
    ids
}
