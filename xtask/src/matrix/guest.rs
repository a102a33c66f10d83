//! One guest: qemu (TCG) boots the kernel with the initramfs, the console
//! streams through prefixed with the kernel's name, and the init script's
//! lines say what ran and how it ended.
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Lines the init script prints, so the host can follow along.
pub const RUN_MARK: &str = "tcptrace-matrix: run ";
pub const FACT_MARK: &str = "facts: ";
pub const DONE_MARK: &str = "tcptrace-matrix: done ";

/// What a guest run showed.
#[derive(Default)]
pub struct Console {
    /// `binary::test` -> passed, for every result line seen.
    pub results: BTreeMap<String, bool>,
    /// `binary::test` -> the test's captured output, for failures.
    pub failures: BTreeMap<String, Vec<String>>,
    /// The `facts: ` lines, without the prefix.
    pub facts: Vec<String>,
    /// The init script's overall status, from its closing line.
    pub exit: Option<i32>,
    /// Why the run ended without that line: a timeout, qemu's own end.
    pub problem: Option<String>,
    /// The last console lines, for a guest that never reached the tests.
    pub tail: Vec<String>,
    /// The guest kernel's first Oops, BUG or panic line, if it crashed.
    pub crash: Option<String>,
    pub elapsed: Duration,
}

pub struct Boot<'a> {
    pub tag: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub nonce: &'a str,
    pub timeout: Duration,
    pub log: &'a Path,
    /// vCPUs (see `GUEST_CPUS`).
    pub cpus: u32,
}

impl Boot<'_> {
    pub fn run(&self) -> Result<Console> {
        let mut qemu = Command::new("qemu-system-x86_64");
        // thread=single: the vCPUs take turns on one host thread, so none
        // runs kernel text while another patches it.
        qemu.args(["-accel", "tcg,thread=single", "-cpu", "max", "-m", "2048"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            // panic=-1: a dying init reboots, and -no-reboot turns that into exit.
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        println!("[{}] $ {}", self.tag, cmd::display(&qemu));
        let started = Instant::now();
        let mut child = qemu.spawn().context("cannot run qemu-system-x86_64")?;
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().context("qemu stdout")?) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().context("qemu stderr")?),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    if tx.send(printable(&buf)).is_err() {
                        break;
                    }
                    buf.clear();
                }
            });
        }
        drop(tx);
        let mut log = fs::File::create(self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        let mut parser = Parser::new(self.nonce);
        let deadline = started + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    println!("[{}] {line}", self.tag);
                    let _ = writeln!(log, "{line}");
                    parser.line(&line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let problem = format!(
                        "no end within {} s (the guest hung or TCG is slower than allowed; --timeout): stopping it",
                        self.timeout.as_secs()
                    );
                    println!("[{}] {problem}", self.tag);
                    parser.out.problem = Some(problem);
                    break;
                }
            }
        }
        // After its closing line the guest powers off; otherwise stop it.
        let grace = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for qemu")? {
                break Some(status);
            }
            if parser.out.problem.is_some() || Instant::now() > grace {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let mut out = parser.out;
        out.elapsed = started.elapsed();
        if out.exit.is_none() && out.problem.is_none() {
            out.problem = Some(match status {
                Some(s) => format!("qemu ended ({s}) before the init script's closing line"),
                None => "qemu did not end".to_owned(),
            });
        }
        Ok(out)
    }
}

/// The line without its line end and with control characters (the
/// firmware's and the console's escape sequences) dropped.
fn printable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI (ESC [ params final-byte) or a two-character escape (ESC c).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

struct Parser {
    out: Console,
    done: String,
    binary: String,
    /// The test whose captured output is being read (`---- name stdout ----`).
    capturing: Option<String>,
    /// A test whose `test name ... ` line was cut by a child's own output
    /// (not captured by libtest); its verdict comes on a line of its own.
    pending: Option<String>,
}

impl Parser {
    fn verdict(&mut self, key: String, passed: bool) {
        self.out.results.insert(key, passed);
        self.pending = None;
    }

    fn new(nonce: &str) -> Self {
        Self {
            out: Console::default(),
            done: format!("{DONE_MARK}{nonce} exit="),
            binary: String::new(),
            capturing: None,
            pending: None,
        }
    }

    fn line(&mut self, line: &str) {
        self.out.tail.push(line.to_owned());
        if self.out.tail.len() > 40 {
            self.out.tail.remove(0);
        }
        if self.out.crash.is_none()
            && ["] Oops: ", "] BUG: ", "Kernel panic - not syncing"]
                .iter()
                .any(|m| line.contains(m))
        {
            self.out.crash = Some(line.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix(&self.done) {
            self.out.exit = rest.trim().parse().ok();
            return;
        }
        if let Some(binary) = line.strip_prefix(RUN_MARK) {
            self.binary = binary.trim().to_owned();
            self.capturing = None;
            return;
        }
        if let Some(fact) = line.strip_prefix(FACT_MARK) {
            self.out.facts.push(fact.to_owned());
            return;
        }
        // libtest: `test name ... ok` / `... FAILED` / `... ignored`
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, verdict)) = rest.split_once(" ... ")
        {
            let key = format!("{}::{}", self.binary, name.trim());
            match verdict.trim() {
                "ok" => self.verdict(key, true),
                "FAILED" => self.verdict(key, false),
                "ignored" => {}
                _ => self.pending = Some(key),
            }
            return;
        }
        if let Some(key) = self.pending.clone()
            && matches!(line.trim(), "ok" | "FAILED")
        {
            self.verdict(key, line.trim() == "ok");
            return;
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.capturing = Some(format!("{}::{}", self.binary, name));
            return;
        }
        if line == "failures:" || line.starts_with("test result:") {
            self.capturing = None;
            return;
        }
        if let Some(test) = &self.capturing {
            self.out
                .failures
                .entry(test.clone())
                .or_default()
                .push(line.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Console {
        let mut p = Parser::new("n0");
        for l in lines {
            p.line(l);
        }
        p.out
    }

    #[test]
    fn verdicts_failures_facts_and_the_closing_line() {
        let out = parse(&[
            "facts: uname -r: 6.1.0-57-cloud-amd64",
            "tcptrace-matrix: run integration",
            "test watch::a ... ok",
            // A child's stderr (not captured by libtest) cuts the line.
            "test leaks::b ... Traceback (most recent call last):",
            "OSError: [Errno 24] Too many open files",
            "FAILED",
            "test hist::c ... FAILED",
            "test cli::d ... ignored",
            "failures:",
            "---- hist::c stdout ----",
            "thread 'hist::c' panicked at x.rs:1:1:",
            "left: 0",
            "failures:",
            "test result: FAILED. 1 passed; 2 failed",
            "tcptrace-matrix: done n0 exit=1",
        ]);
        let results: Vec<(&str, bool)> =
            out.results.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            results,
            [
                ("integration::hist::c", false),
                ("integration::leaks::b", false),
                ("integration::watch::a", true),
            ]
        );
        assert_eq!(
            out.failures["integration::hist::c"],
            ["thread 'hist::c' panicked at x.rs:1:1:", "left: 0"]
        );
        assert_eq!(out.facts, ["uname -r: 6.1.0-57-cloud-amd64"]);
        assert_eq!(out.exit, Some(1));
    }

    #[test]
    fn the_first_oops_is_the_crash() {
        let out = parse(&[
            "test watch::e ... [  217.289112] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[  217.300700] Kernel panic - not syncing: Fatal exception in interrupt",
        ]);
        assert_eq!(
            out.crash.as_deref(),
            Some("test watch::e ... [  217.289112] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        assert!(out.results.is_empty());
        assert_eq!(out.exit, None);
    }

    #[test]
    fn a_closing_line_with_another_nonce_is_not_ours() {
        let out = parse(&["tcptrace-matrix: done other exit=0"]);
        assert_eq!(out.exit, None);
    }

    #[test]
    fn escape_sequences_and_line_ends_are_dropped() {
        assert_eq!(printable(b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n"), "SeaBIOS");
    }
}
