//! Leak provenance: real programs leak CLOSE_WAIT sockets from a known
//! function, started after tcptrace; `leaks --stacks` names that function,
//! with file and line from DWARF: a C program built with frame pointers
//! (client and server side), a Go program (frame pointers by default), a
//! Rust program with frame pointers forced. A program without frame pointers
//! gets the honest message, a process that exits after passing its leak to a
//! forked child still gets its stack, sockets older than tcptrace say they
//! have none, and the kernel's maps stay bounded under a connection storm.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::common::{Running, bpf_ids, start};

const SOURCES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/scenarios/provenance"
);

/// The programs, built once per test run into a directory of their own.
struct Programs {
    c: PathBuf,
    c_no_frame_pointers: PathBuf,
    go: PathBuf,
    rust: PathBuf,
    jit: PathBuf,
}

fn programs() -> &'static Programs {
    static BUILT: OnceLock<Programs> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tcptrace-provenance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(SOURCES);
        let build = |cmd: &mut Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let p = Programs {
            c: dir.join("leaky-c"),
            c_no_frame_pointers: dir.join("leaky-nofp"),
            go: dir.join("leaky-go"),
            rust: dir.join("leaky-rs"),
            jit: dir.join("leaky-jit"),
        };
        build(
            Command::new("cc")
                .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
                .arg(&p.c)
                .arg(src.join("leaky.c")),
        );
        build(
            Command::new("cc")
                .args(["-g", "-O2", "-fomit-frame-pointer", "-o"])
                .arg(&p.c_no_frame_pointers)
                .arg(src.join("leaky.c")),
        );
        build(
            Command::new("go")
                .env("HOME", &dir)
                .env("GOCACHE", dir.join("gocache"))
                .env("GOFLAGS", "-mod=mod")
                .args(["build", "-o"])
                .arg(&p.go)
                .arg(src.join("leaky.go")),
        );
        build(
            Command::new("cc")
                .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
                .arg(&p.jit)
                .arg(src.join("jit.c")),
        );
        build(
            Command::new("rustc")
                .args(["-g", "-C", "force-frame-pointers=yes", "-o"])
                .arg(&p.rust)
                .arg(src.join("leaky.rs")),
        );
        p
    })
}

/// A running scenario program; killed when dropped.
struct Leaky {
    child: Child,
    /// The process that holds the leak.
    holder: u32,
    /// A server's listening port.
    port: Option<u16>,
}

impl Leaky {
    fn start(program: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut holder, mut port) = (None, None);
        while holder.is_none() {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "{} said nothing",
                program.display()
            );
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ready", pid] => holder = pid.parse().ok(),
                ["port", p] => port = p.parse().ok(),
                _ => panic!("{} said {line:?}", program.display()),
            }
            // A server says its port before it accepts: the test connects.
            if holder.is_none() && port.is_some() {
                return Self {
                    child,
                    holder: 0,
                    port,
                }
                .then_ready(out);
            }
        }
        Self {
            child,
            holder: holder.unwrap(),
            port,
        }
    }

    /// A server's "ready" comes once its connections are accepted.
    fn then_ready(mut self, out: BufReader<std::process::ChildStdout>) -> Self {
        let port = self.port.unwrap();
        let clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let mut line = String::new();
        let mut out = out;
        out.read_line(&mut line).unwrap();
        self.holder = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("server said {line:?}"));
        // The clients close: the server's accepted sockets go to CLOSE_WAIT.
        drop(clients);
        self
    }
}

impl Drop for Leaky {
    fn drop(&mut self) {
        // SAFETY: kill(2) on processes this test started.
        unsafe { libc::kill(self.holder as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts every connection on a loopback port and closes it at once.
fn closing_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    port
}

/// The leaks row of `pid` once it shows `n` sockets with a stack.
fn row_with_stacks(run: &Running, pid: u32, n: u64) -> Value {
    let found = run.wait_for(Duration::from_secs(30), |rows| {
        rows.iter().any(|r| {
            r["pid"] == pid
                && r["stacks"].as_array().is_some_and(|s| {
                    s.iter().map(|s| s["count"].as_u64().unwrap()).sum::<u64>() == n
                })
        })
    });
    let lines = run.lines.lock().unwrap();
    let rows: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(found, "no row for {pid} with {n} stacks:\n{rows:?}");
    rows.into_iter().rev().find(|r| r["pid"] == pid).unwrap()
}

/// The line of `needle` in a scenario source.
fn line_of(file: &str, needle: &str) -> u64 {
    let text = std::fs::read_to_string(Path::new(SOURCES).join(file)).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {file}")) as u64
        + 1
}

/// The row's one stack has `function` at `file:line` among its frames, whole.
fn assert_opened_at(row: &Value, function: &str, file: &str, line: u64) {
    let stacks = row["stacks"].as_array().unwrap();
    assert_eq!(stacks.len(), 1, "{row}");
    let stack = &stacks[0]["stack"];
    assert!(
        stack["missing"].is_null() && stack["incomplete"].is_null(),
        "{stack}"
    );
    let frames = stack["frames"].as_array().unwrap();
    let frame = frames
        .iter()
        .find(|f| f["function"] == function)
        .unwrap_or_else(|| panic!("{function} not in {stack}"));
    assert!(
        frame["file"].as_str().is_some_and(|f| f.ends_with(file)),
        "{frame}"
    );
    assert_eq!(frame["line"], line, "{frame}");
    for s in row["sockets"].as_array().unwrap() {
        assert_eq!(s["stack"], stacks[0]["stack"], "{row}");
    }
}

fn leaks(port: u16) -> Running {
    start(&[
        "leaks",
        "--stacks",
        "--json",
        "--interval",
        "0.5",
        "-D",
        &port.to_string(),
    ])
}

#[test]
fn c_client_with_frame_pointers() {
    let port = closing_server();
    let run = leaks(port);
    let leak = Leaky::start(&programs().c, &[&port.to_string(), "3"]);
    let row = row_with_stacks(&run, leak.holder, 3);
    assert_opened_at(
        &row,
        "open_broker_connection",
        "leaky.c",
        line_of("leaky.c", "connect(fd,"),
    );
    // The text view says the same, in one line per code path.
    let fin = run.stop();
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
}

#[test]
fn c_server_accepting_with_frame_pointers() {
    let run = start(&["leaks", "--stacks", "--json", "--interval", "0.5"]);
    // Its clients (this test) close: its accepted sockets go to CLOSE_WAIT.
    let leak = Leaky::start(&programs().c, &["serve", "2"]);
    let row = row_with_stacks(&run, leak.holder, 2);
    assert_opened_at(
        &row,
        "accept_clients",
        "leaky.c",
        line_of("leaky.c", "accept(listener,"),
    );
}

#[test]
fn go_client() {
    let port = closing_server();
    let run = leaks(port);
    let leak = Leaky::start(&programs().go, &[&port.to_string(), "2"]);
    let row = row_with_stacks(&run, leak.holder, 2);
    assert_opened_at(
        &row,
        "main.openBrokerConnection",
        "leaky.go",
        line_of("leaky.go", "net.Dial("),
    );
}

#[test]
fn rust_client_with_frame_pointers_forced() {
    let port = closing_server();
    let run = leaks(port);
    let leak = Leaky::start(&programs().rust, &[&port.to_string(), "2"]);
    let row = row_with_stacks(&run, leak.holder, 2);
    assert_opened_at(
        &row,
        "leaky::open_broker_connection",
        "leaky.rs",
        line_of("leaky.rs", "TcpStream::connect("),
    );
}

/// JIT-compiled code (a JVM, Node, Python 3.12's `-X perf`) lives in
/// anonymous memory: the runtime's perf map (/tmp/perf-PID.map) names it.
#[test]
fn jit_code_is_named_from_the_runtimes_perf_map() {
    let port = closing_server();
    let run = leaks(port);
    let leak = Leaky::start(&programs().jit, &[&port.to_string(), "2"]);
    let row = row_with_stacks(&run, leak.holder, 2);
    // The native code it called, with its line, then the JIT frame by name.
    assert_opened_at(
        &row,
        "native_connect",
        "jit.c",
        line_of("jit.c", "connect(fd,"),
    );
    let frames = row["stacks"][0]["stack"]["frames"].as_array().unwrap();
    let names: Vec<&str> = frames
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    let at = |name: &str| names.iter().position(|n| *n == name);
    let jitted = at("LazyCompile:*openBrokerConnection broker.js:12");
    assert!(
        jitted.is_some() && at("native_connect") < jitted && jitted < at("main"),
        "{names:?}"
    );
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", leak.holder));
}

#[test]
fn without_frame_pointers_the_stack_says_it_is_incomplete() {
    let port = closing_server();
    let run = leaks(port);
    let leak = Leaky::start(&programs().c_no_frame_pointers, &[&port.to_string(), "2"]);
    let row = row_with_stacks(&run, leak.holder, 2);
    let stack = &row["stacks"][0]["stack"];
    let why = stack["incomplete"]
        .as_str()
        .unwrap_or_else(|| panic!("{stack}"));
    assert!(why.contains("frame pointers"), "{why}");
    let fin = run.stop();
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
}

/// The process that connected exits after forking: its child holds the leak
/// and shares its memory layout, so the stack is still named.
#[test]
fn a_leak_passed_to_a_forked_child_keeps_its_stack() {
    let port = closing_server();
    let run = leaks(port);
    let leak = Leaky::start(&programs().c, &[&port.to_string(), "2", "fork"]);
    let row = row_with_stacks(&run, leak.holder, 2);
    assert_opened_at(
        &row,
        "open_broker_connection",
        "leaky.c",
        line_of("leaky.c", "connect(fd,"),
    );
}

#[test]
fn sockets_older_than_tcptrace_say_they_have_no_stack() {
    let port = closing_server();
    let leak = Leaky::start(&programs().c, &[&port.to_string(), "2"]);
    let run = leaks(port);
    let found = run.wait_for(Duration::from_secs(30), |rows| {
        rows.iter().any(|r| r["pid"] == leak.holder)
    });
    assert!(found);
    let lines = run.lines.lock().unwrap().clone();
    let row: Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["pid"] == leak.holder)
        .unwrap();
    let stack = &row["stacks"][0]["stack"];
    assert_eq!(stack["frames"], serde_json::json!([]), "{row}");
    assert!(
        stack["missing"]
            .as_str()
            .is_some_and(|m| m.contains("before tcptrace started")),
        "{row}"
    );
}

#[test]
fn watch_prints_the_stack_entering_close_wait() {
    let port = closing_server();
    let run = start(&["watch", "--stacks", "--json", "-D", &port.to_string()]);
    let leak = Leaky::start(&programs().c, &[&port.to_string(), "1"]);
    assert!(run.wait_for(Duration::from_secs(30), |vals| {
        vals.iter().any(|v| v["newstate"] == "CLOSE_WAIT")
    }));
    let fin = run.stop();
    let v = fin
        .json()
        .into_iter()
        .find(|v| v["newstate"] == "CLOSE_WAIT")
        .unwrap();
    assert_eq!(v["pid"], leak.holder, "{v}");
    let frames = v["stack"]["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        frames
            .iter()
            .any(|f| f["function"] == "open_broker_connection"),
        "{v}"
    );
    // Other transitions carry no stack.
    assert!(
        fin.json()
            .iter()
            .filter(|v| v["newstate"] != "CLOSE_WAIT")
            .all(|v| v.get("stack").is_none())
    );
}

/// A storm of connections, each with its stack taken: the per-socket map
/// never holds more than --max-sockets entries and the stacks map its
/// fixed size; what does not fit is counted.
#[test]
fn stack_maps_stay_bounded_under_a_connection_storm() {
    let port = closing_server();
    let stats = std::env::temp_dir().join(format!("tcptrace-stacks-{}.json", std::process::id()));
    let run = start(&[
        "leaks",
        "--stacks",
        "--interval",
        "0.5",
        "--max-sockets",
        "256",
        "-D",
        &port.to_string(),
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    // 2000 connections the program keeps (so they stay in the map until
    // CLOSE), from a storm of processes.
    let leaks: Vec<Leaky> = (0..20)
        .map(|_| Leaky::start(&programs().c, &[&port.to_string(), "100"]))
        .collect();
    let (max, entries) = map_entries(run.pid(), "SOCKET_STACKS");
    assert_eq!(max, 256);
    assert!(entries <= 256, "SOCKET_STACKS holds {entries} entries");
    let (max, _) = map_entries(run.pid(), "STACKS");
    assert_eq!(max, 16384);
    drop(leaks);
    let fin = run.stop();
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(s["stacks_lost"].is_u64(), "{s}");
    let _ = std::fs::remove_file(stats);
}

/// (max_entries, entries) of the map `name` of the tracer `pid` (other
/// tests' tracers have maps of the same name): its id from the tracer's
/// /proc/PID/fdinfo, its entries from bpftool.
fn map_entries(pid: u32, name: &str) -> (u64, usize) {
    let bpftool = |args: &[&str]| -> Value {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for id in bpf_ids(pid, "map_id:").into_iter().map(|id| id.to_string()) {
        let map = bpftool(&["map", "show", "id", &id, "-j"]);
        if map["name"] == name {
            let dump = bpftool(&["map", "dump", "id", &id, "-j"]);
            // Distinct keys: a dump of a hash map that changes under it
            // starts over when its cursor's key is deleted, and repeats
            // keys (353 rows of a 256-entry map were seen).
            let keys: std::collections::HashSet<String> = dump
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    assert!(!e["key"].is_null(), "a dump row without a key: {e}");
                    e["key"].to_string()
                })
                .collect();
            return (map["max_entries"].as_u64().unwrap(), keys.len());
        }
    }
    panic!("no map {name} of {pid}")
}

#[test]
fn stacks_need_the_live_view() {
    let fin = crate::common::run(&["leaks", "--once", "--stacks"]);
    assert_eq!(fin.code, Some(2), "{}", fin.stderr);
    assert_eq!(fin.stderr.lines().count(), 1, "{}", fin.stderr);
}
