//! What the bench reads from and does to the system: /proc, BPF program
//! statistics, sysctls, signals, rlimits, and child processes whose stderr
//! is watched line by line.
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Sends `sig` to `pid`; false when the process is gone.
pub fn send_signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a positive pid touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag that the bench checks between runs, so it stops
/// cleanly: nginx stopped, sysctls restored, temporary files removed.
pub fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn bail_if_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// RLIMIT_NOFILE: (soft, hard).
pub fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// The most files one process may open here: the hard RLIMIT_NOFILE, or
/// fs.nr_open when we may raise the hard limit (CAP_SYS_RESOURCE, which
/// containers often drop).
pub fn nofile_reachable() -> u64 {
    let (_, hard) = nofile();
    let nr_open = read_trimmed("/proc/sys/fs/nr_open")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let probe = libc::rlimit {
        rlim_cur: nofile().0,
        rlim_max: nr_open,
    };
    // SAFETY: setrlimit reads one struct rlimit. Raising the hard limit
    // only succeeds with CAP_SYS_RESOURCE; then nr_open is reachable.
    if hard < nr_open && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &probe) } == 0 {
        return nr_open;
    }
    hard.min(nr_open)
}

/// Raises the soft RLIMIT_NOFILE (and the hard one when allowed) towards
/// `want`; returns the soft limit now, which may be less than `want`.
pub fn raise_nofile(want: u64) -> u64 {
    let (cur, _) = nofile();
    if cur >= want {
        return cur;
    }
    let target = want.min(nofile_reachable());
    let (_, hard) = nofile();
    let new = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard.max(target),
    };
    // SAFETY: setrlimit reads one struct rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
    nofile().0
}

pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

pub fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The machine's idle and total CPU time so far, in clock ticks (the
/// `cpu` line of /proc/stat; idle counts iowait, steal is left out of both).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(stat.lines().next()?)
}

fn parse_machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal ...
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let (idle, steal) = (v.get(3)? + v.get(4)?, *v.get(7).unwrap_or(&0));
    Some((idle, v.iter().sum::<u64>() - steal))
}

/// How often the threads of `pid` have gone to sleep and been woken
/// (their voluntary context switches, summed).
pub fn wakeups(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let status = fs::read_to_string(task.path().join("status")).ok()?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse::<u64>()
            .ok()?;
    }
    Some(total)
}

/// utime + stime of every thread of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of /proc/PID/status, e.g. `VmHWM` (peak RSS) or `VmRSS`.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// A process's proportional set size (`Pss` of /proc/PID/smaps_rollup):
/// its memory with the pages it shares divided among their sharers, so the
/// sum over many processes of one binary is what they take together.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|l| {
        let v = l.strip_prefix("Pss:")?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// One BPF program's counters, as `bpftool prog show` reports them (the
/// kernel fills `run_time_ns`/`run_cnt` only while `kernel.bpf_stats_enabled=1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub prog_type: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The BPF programs `pid` holds open, found through its fds' fdinfo rather
/// than by name: tcptrace's and bpftrace's programs are both called
/// `inet_sock_set_s` in the kernel, and tests running next to the bench
/// load tcptrace's program too.
pub fn bpf_progs(pid: u32) -> Vec<ProgStats> {
    let mut progs: Vec<ProgStats> = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return progs;
    };
    for fd in fds.flatten() {
        let Ok(link) = fs::read_link(fd.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let info_path = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info_path) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(':')?;
                v.trim().parse().ok()
            })
        };
        let Some(id) = field("prog_id").and_then(|v| u32::try_from(v).ok()) else {
            continue;
        };
        if progs.iter().any(|p| p.id == id) {
            continue;
        }
        progs.push(ProgStats {
            id,
            prog_type: field("prog_type")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            run_time_ns: field("run_time_ns").unwrap_or(0),
            run_cnt: field("run_cnt").unwrap_or(0),
        });
    }
    progs.sort_by_key(|p| p.id);
    progs
}

/// The BPF objects a process holds open, by kernel id, from its fds'
/// fdinfo (`prog_id`, `map_id`, `link_id`), and how many fds it has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub fds: usize,
    pub progs: Vec<u32>,
    pub maps: Vec<u32>,
    pub links: Vec<u32>,
}

/// What `pid` holds now; `None` when its fds cannot be read (it is gone).
pub fn held(pid: u32) -> Option<Held> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut held = Held::default();
    for fd in fds.flatten() {
        held.fds += 1;
        let Ok(link) = fs::read_link(fd.path()) else {
            continue;
        };
        let (field, ids) = match link.to_str() {
            Some("anon_inode:bpf-prog") => ("prog_id", &mut held.progs),
            Some("anon_inode:bpf-map") => ("map_id", &mut held.maps),
            Some("anon_inode:bpf_link") => ("link_id", &mut held.links),
            _ => continue,
        };
        let info_path = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info_path) else {
            continue;
        };
        let id = info.lines().find_map(|l| {
            let v = l.strip_prefix(field)?.strip_prefix(':')?;
            v.trim().parse::<u32>().ok()
        });
        if let Some(id) = id
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    for ids in [&mut held.progs, &mut held.maps, &mut held.links] {
        ids.sort_unstable();
    }
    Some(held)
}

/// The program's name as the kernel stores it (15 characters at most), from
/// `bpftool prog show id ID`.
pub fn prog_name(id: u32) -> Option<String> {
    let out = crate::cmd::stdout(Command::new("bpftool").args([
        "prog",
        "show",
        "id",
        &id.to_string(),
        "-j",
    ]))?;
    let rest = &out[out.find("\"name\":\"")? + 8..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// A sysctl set for the bench's lifetime, restored on drop.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(name: &str, value: &str) -> Result<Self> {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = read_trimmed(&path).with_context(|| format!("reading {name}"))?;
        fs::write(&path, value).with_context(|| format!("setting {name}={value}"))?;
        Ok(Self { path, old })
    }

    pub fn old(&self) -> &str {
        &self.old
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!(
                "xtask: restoring {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tcptrace-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stderr lines are collected as they come, stopped
/// (SIGINT, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    started: Instant,
    rx: Receiver<(Instant, String)>,
    reader: Option<JoinHandle<()>>,
    lines: Vec<String>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin closed, stdout to /dev/null unless the caller
    /// chose, and stderr captured.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            started,
            rx,
            reader: Some(reader),
            lines: Vec::new(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`; the time from spawn to
    /// that line. `None` on timeout or when the process ends first.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok((at, line)) => {
                    let hit = line.contains(needle);
                    self.lines.push(line);
                    if hit {
                        return Some(at.duration_since(self.started));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline || interrupted() {
                        return None;
                    }
                }
            }
        }
    }

    /// The stderr lines that came since the last look, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let mut new = Vec::new();
        while let Ok((_, line)) = self.rx.try_recv() {
            new.push(line);
        }
        self.lines.extend(new.iter().cloned());
        new
    }

    pub fn running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// SIGINT (the way a user stops a tracer, so it prints its summary),
    /// SIGKILL after `grace`; returns every stderr line.
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        if self.running() {
            send_signal(self.pid(), libc::SIGINT);
            let deadline = Instant::now() + grace;
            while self.running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if self.running() {
                let _ = self.child.kill();
                self.status = self.child.wait().ok();
            }
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        while let Ok((_, line)) = self.rx.try_recv() {
            self.lines.push(line);
        }
        self.lines.clone()
    }

    /// Stops with SIGTERM instead (servers such as nginx).
    pub fn terminate(&mut self, grace: Duration) {
        if self.running() {
            send_signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        self.stop(Duration::ZERO);
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// This very program, for the bench's helper processes: `/proc/self/exe`
/// rather than its path, which a `cargo build` running meanwhile (another
/// task, a test) replaces, leaving ours deleted.
pub fn own_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// A child that talks in lines: the bench's own hidden helpers (`cargo
/// xtask bench --hold ...`) and the Java client. Its stdout lines are
/// collected as they come and its last stderr lines kept for errors;
/// closing its stdin tells it to exit, and dropping it does that, waits a
/// little, then kills it.
pub struct Helper {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Helper {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", crate::cmd::display(cmd)))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let keep = Arc::clone(&stderr);
        let err = child.stderr.take().expect("stderr is piped");
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut kept = keep.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.len() == 5 {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Ok(Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            rx,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its last stderr lines, for an error message.
    pub fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.is_empty() {
            "nothing on stderr".to_owned()
        } else {
            kept.iter().cloned().collect::<Vec<_>>().join(" | ")
        }
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin already closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "{}: telling it `{line}` ({})",
                    self.name,
                    self.stderr_tail()
                )
            })
    }

    /// Waits for a stdout line starting with `prefix` (others are skipped);
    /// the rest of that line.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({}) before saying `{prefix}`: {}",
                        self.name,
                        status.map_or("?".to_owned(), |s| s.to_string()),
                        self.stderr_tail()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    if interrupted() {
                        bail!("interrupted");
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "{} did not say `{prefix}` within {} s: {}",
                            self.name,
                            timeout.as_secs(),
                            self.stderr_tail()
                        );
                    }
                }
            }
        }
    }

    /// Tells it to exit, without waiting.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.close_stdin();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_count_iowait_as_idle_and_leave_steal_out() {
        let line = "cpu  100 5 50 800 20 3 2 40 0 0";
        assert_eq!(parse_machine_ticks(line), Some((820, 980)));
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn own_process_facts() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(status_kib(me, "VmHWM").is_some_and(|k| k > 0));
        assert!(pss_kib(me).is_some_and(|k| k > 0));
        assert!(clk_tck() > 0);
    }
}
