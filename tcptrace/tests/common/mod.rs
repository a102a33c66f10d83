//! Shared by the kernel tests: run the real `tcptrace` binary as root against
//! the real kernel, and drive real sockets on loopback.
//!
//! A tracer that cannot load makes the test fail with its stderr, never skip.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
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
    let deadline = Instant::now() + Duration::from_secs(60);
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
            "tcptrace did not attach within 60 s:\n{}",
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

const LEAKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenarios/leaker.py");

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
