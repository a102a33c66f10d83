//! Scale figures: tcptrace's memory with 100,000 tracked sockets, the time
//! of `leaks --once` next to `ss` over 10,000 CLOSE_WAIT sockets held by one
//! process and by 2,000 processes of 5 each (a Kubernetes node's shape), and
//! the time from start to attached.
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::stats::StatsFile;
use super::sys::{self, Proc};
use super::tracers::{self, Poker, Tools};

/// Sockets held open while tcptrace watch tracks them (both ends of half as many connections).
pub const TRACKED_SOCKETS: usize = 100_000;
pub const CLOSE_WAIT_SOCKETS: usize = 10_000;
/// The same sockets over many processes: this many, of [`SPREAD_PER`] each.
pub const SPREAD_PROCESSES: usize = 2_000;
pub const SPREAD_PER: usize = CLOSE_WAIT_SOCKETS / SPREAD_PROCESSES;

pub struct Figures {
    pub tracked: Result<Tracked>,
    pub leaks_once: Result<LeaksOnce>,
    /// The same over [`SPREAD_PROCESSES`] processes.
    pub leaks_spread: Result<LeaksOnce>,
    pub attach: Result<Vec<Duration>>,
}

pub struct Tracked {
    pub sockets: usize,
    /// RSS of an attached, idle `tcptrace watch` before the sockets exist.
    pub rss_idle_kib: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub events: Option<u64>,
    pub lost: Option<u64>,
    pub evicted: Option<u64>,
    pub open_secs: f64,
    /// A second `tcptrace watch` started with the sockets already open (it
    /// seeds its table from a sock_diag dump): start to attached, and peak RSS.
    pub seeded_attach: Option<Duration>,
    pub seeded_hwm_kib: Option<u64>,
}

impl Tracked {
    pub fn bytes_per_socket(&self) -> f64 {
        (self.rss_kib.saturating_sub(self.rss_idle_kib) * 1024) as f64 / self.sockets as f64
    }
}

pub struct LeaksOnce {
    pub sockets: usize,
    /// Processes holding them.
    pub processes: usize,
    /// Processes `leaks --once --json` named with all their sockets.
    pub processes_found: Option<usize>,
    /// CLOSE_WAIT sockets `ss` listed (all on the machine).
    pub ss_listed: usize,
    /// CLOSE_WAIT sockets `leaks --once --json` attributed to the bench.
    pub leaks_found: Option<u64>,
    pub leaks: Vec<Duration>,
    pub ss: Vec<Duration>,
    /// `perf record -g` of one `leaks --once`.
    pub profile: Result<String, String>,
}

pub fn run(tools: &Tools, poker: &Poker, repeats: usize, dir: &Path) -> Figures {
    let mut figures = Figures {
        tracked: Err(anyhow::anyhow!("not run")),
        leaks_once: Err(anyhow::anyhow!("not run")),
        leaks_spread: Err(anyhow::anyhow!("not run")),
        attach: Err(anyhow::anyhow!("not run")),
    };
    eprintln!("bench: scale: start to attached, {repeats} runs of `tcptrace watch`");
    figures.attach = attach_times(tools, repeats);
    if sys::interrupted() {
        return figures;
    }
    eprintln!("bench: scale: `tcptrace watch` while {TRACKED_SOCKETS} sockets open");
    figures.tracked = tracked(tools, poker);
    if sys::interrupted() {
        return figures;
    }
    eprintln!(
        "bench: scale: `leaks --once` and `ss -tanp state close-wait` over {CLOSE_WAIT_SOCKETS} CLOSE_WAIT sockets, {repeats} runs each"
    );
    figures.leaks_once = leaks_once(tools, repeats.max(5), dir);
    if sys::interrupted() {
        return figures;
    }
    eprintln!(
        "bench: scale: the same over {SPREAD_PROCESSES} processes of {SPREAD_PER}, {repeats} runs each"
    );
    figures.leaks_spread = leaks_spread(tools, repeats.max(5), dir);
    figures
}

fn attach_times(tools: &Tools, repeats: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..repeats {
        sys::bail_if_interrupted()?;
        let mut proc = watch(tools, None)?;
        let at = proc.wait_line("attached", Duration::from_secs(30));
        let lines = proc.stop(Duration::from_secs(10));
        times.push(at.with_context(|| format!("never attached: {}", tracers::tail(&lines)))?);
        // Let the detach finish before the next start.
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "bench: scale: attached after {}",
        times
            .iter()
            .map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(times)
}

fn watch(tools: &Tools, stats: Option<&StatsFile>) -> Result<Proc> {
    let mut cmd = Command::new(&tools.tcptrace);
    if let Some(stats) = stats {
        cmd.args(stats.args());
    }
    Proc::spawn("tcptrace watch", cmd.arg("watch").stdout(Stdio::null()))
}

fn tracked(tools: &Tools, poker: &Poker) -> Result<Tracked> {
    let stats_file = StatsFile::new();
    let mut proc = watch(tools, Some(&stats_file))?;
    if proc
        .wait_line("attached", Duration::from_secs(30))
        .is_none()
    {
        let lines = proc.stop(Duration::from_secs(2));
        bail!("tcptrace watch never attached: {}", tracers::tail(&lines));
    }
    poker.poke();
    tracers::settle(proc.pid(), Duration::from_secs(5));
    let pid = proc.pid();
    let rss_idle_kib = sys::status_kib(pid, "VmRSS").context("VmRSS")?;
    let start = Instant::now();
    let helpers = Helpers::spawn(TRACKED_SOCKETS / 2)?;
    let open_secs = start.elapsed().as_secs_f64();
    eprintln!(
        "bench: scale: {} sockets open in {open_secs:.1} s ({} helper processes); waiting for tcptrace to catch up",
        helpers.sockets,
        helpers.procs.len()
    );
    tracers::settle(pid, Duration::from_secs(30));
    let rss_kib = sys::status_kib(pid, "VmRSS").context("VmRSS")?;
    let hwm_kib = sys::status_kib(pid, "VmHWM").context("VmHWM")?;
    // A second tracer that finds the sockets already there.
    let (seeded_attach, seeded_hwm_kib) = match watch(tools, None) {
        Ok(mut second) => {
            let at = second.wait_line("attached", Duration::from_secs(60));
            if at.is_some() {
                tracers::settle(second.pid(), Duration::from_secs(10));
            }
            let hwm = sys::status_kib(second.pid(), "VmHWM");
            second.stop(Duration::from_secs(10));
            (at, hwm)
        }
        Err(_) => (None, None),
    };
    proc.stop(Duration::from_secs(15));
    let stats = stats_file.read().ok();
    let sockets = helpers.sockets;
    drop(helpers);
    Ok(Tracked {
        sockets,
        rss_idle_kib,
        rss_kib,
        hwm_kib,
        events: stats.as_ref().map(|s| s.events),
        lost: stats.as_ref().map(|s| s.lost),
        evicted: stats.as_ref().map(|s| s.evicted),
        open_secs,
        seeded_attach,
        seeded_hwm_kib,
    })
}

/// Child processes (this binary, `bench --hold N`) that each hold both
/// ends of N loopback connections: one process may not be allowed enough
/// files for all of them (RLIMIT_NOFILE's hard limit, which only
/// CAP_SYS_RESOURCE raises).
struct Helpers {
    procs: Vec<sys::Helper>,
    sockets: usize,
}

impl Helpers {
    fn spawn(connections: usize) -> Result<Self> {
        let exe = sys::own_exe();
        // Both ends of each connection, a few spare fds, and one listener's
        // share of the ephemeral ports at most.
        let per = ((sys::nofile_reachable().saturating_sub(64)) / 2).min(25_000) as usize;
        if per < 100 {
            bail!("RLIMIT_NOFILE allows too few files to hold connections");
        }
        let mut helpers = Self {
            procs: Vec::new(),
            sockets: 0,
        };
        let mut left = connections;
        while left > 0 {
            sys::bail_if_interrupted()?;
            let n = left.min(per);
            let mut helper = sys::Helper::spawn(
                "a socket-holding helper",
                Command::new(&exe).args(["bench", "--hold", &n.to_string()]),
            )?;
            let held = helper.expect("held ", Duration::from_secs(300))?;
            helpers.procs.push(helper);
            helpers.sockets += held
                .parse::<usize>()
                .with_context(|| format!("helper: held {held}"))?;
            left -= n;
        }
        Ok(helpers)
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        // All told first, so they exit together.
        for p in &mut self.procs {
            p.close_stdin();
        }
    }
}

/// `bench --hold N`: holds both ends of N loopback connections until stdin
/// closes, after printing `held <sockets>`.
pub fn hold(n: usize) -> Result<()> {
    let have = sys::raise_nofile((2 * n + 64) as u64);
    if have < (2 * n + 16) as u64 {
        bail!("RLIMIT_NOFILE is {have}, too low for {n} connections");
    }
    let held = Held::connect(n, 1, true, Duration::from_millis(8))?;
    println!("held {}", held.sockets());
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    drop(held);
    Ok(())
}

/// Loopback connections held open by this process: the client ends, and
/// the server ends unless they were closed at once.
struct Held {
    clients: Vec<TcpStream>,
    servers: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
}

impl Held {
    /// `n` connections spread over `listeners` ports, made in small
    /// batches (connect a batch, then accept it) so no backlog overflows,
    /// with `pause` after each batch so a tracer is not flooded. With
    /// `keep_servers` false, the accepted ends are closed at once: the
    /// client ends then sit in CLOSE_WAIT.
    fn connect(n: usize, listeners: usize, keep_servers: bool, pause: Duration) -> Result<Self> {
        let ls: Vec<TcpListener> = (0..listeners.max(1))
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let mut held = Self {
            clients: Vec::with_capacity(n),
            servers: Vec::new(),
            _listeners: Vec::new(),
        };
        const BATCH: usize = 64;
        let mut made = 0;
        let mut turn = 0;
        while made < n {
            sys::bail_if_interrupted()?;
            let l = &ls[turn % ls.len()];
            turn += 1;
            let addr = l.local_addr()?;
            let batch = BATCH.min(n - made);
            for _ in 0..batch {
                held.clients.push(
                    TcpStream::connect(addr)
                        .with_context(|| format!("connection {} to {addr}", made + 1))?,
                );
            }
            for _ in 0..batch {
                let server = l.accept().context("accept")?.0;
                if keep_servers {
                    held.servers.push(server);
                }
            }
            made += batch;
            thread::sleep(pause);
        }
        held._listeners = ls;
        Ok(held)
    }

    fn sockets(&self) -> usize {
        self.clients.len() + self.servers.len()
    }
}

fn leaks_once(tools: &Tools, repeats: usize, dir: &Path) -> Result<LeaksOnce> {
    let want = (CLOSE_WAIT_SOCKETS + 256) as u64;
    let have = sys::raise_nofile(want);
    if have < want {
        bail!("RLIMIT_NOFILE is {have}, too low for {CLOSE_WAIT_SOCKETS} sockets");
    }
    // The servers close at once; the clients receive a FIN and, never
    // closing, sit in CLOSE_WAIT.
    let held = Held::connect(CLOSE_WAIT_SOCKETS, 1, false, Duration::ZERO)?;
    let ss_listed = wait_close_wait(CLOSE_WAIT_SOCKETS)?;
    let me = std::process::id();
    let (t_leaks, t_ss, json) = time_against_ss(tools, repeats)?;
    let leaks_found = json.as_deref().map(|j| close_wait_of(j, me));
    let profile =
        super::profile::command(&mut leaks_command(tools), dir).map_err(|e| format!("{e:#}"));
    drop(held);
    Ok(LeaksOnce {
        sockets: CLOSE_WAIT_SOCKETS,
        processes: 1,
        processes_found: leaks_found.map(|n| usize::from(n == CLOSE_WAIT_SOCKETS as u64)),
        ss_listed,
        leaks_found,
        leaks: t_leaks,
        ss: t_ss,
        profile,
    })
}

fn leaks_command(tools: &Tools) -> Command {
    let mut c = Command::new(&tools.tcptrace);
    c.args(["leaks", "--once"]);
    c
}

/// `leaks --once` and `ss -tanp state close-wait`, after one warm-up run
/// each, alternating `repeats` times; then `leaks --once --json` once.
fn time_against_ss(
    tools: &Tools,
    repeats: usize,
) -> Result<(Vec<Duration>, Vec<Duration>, Option<String>)> {
    let ss = || {
        let mut c = Command::new("ss");
        c.args(["-tanp", "state", "close-wait"]);
        c
    };
    time(&mut leaks_command(tools))?;
    time(&mut ss())?;
    let mut t_leaks = Vec::new();
    let mut t_ss = Vec::new();
    for _ in 0..repeats {
        sys::bail_if_interrupted()?;
        t_ss.push(time(&mut ss())?);
        t_leaks.push(time(&mut leaks_command(tools))?);
    }
    let json =
        crate::cmd::stdout(Command::new(&tools.tcptrace).args(["leaks", "--once", "--json"]));
    Ok((t_leaks, t_ss, json))
}

/// Waits until `ss` lists at least `n` CLOSE_WAIT sockets; how many it listed.
fn wait_close_wait(n: usize) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = count_close_wait();
        if listed >= n {
            return Ok(listed);
        }
        if Instant::now() > deadline {
            bail!("only {listed} CLOSE_WAIT sockets after 30 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// [`CLOSE_WAIT_SOCKETS`] held [`SPREAD_PER`] each by [`SPREAD_PROCESSES`]
/// processes (children of one helper, `bench --hold-spread`).
fn leaks_spread(tools: &Tools, repeats: usize, dir: &Path) -> Result<LeaksOnce> {
    let mut helper = sys::Helper::spawn(
        "the many-holders helper",
        Command::new(sys::own_exe()).args([
            "bench",
            "--hold-spread",
            &format!("{SPREAD_PROCESSES}/{SPREAD_PER}"),
        ]),
    )?;
    let pids: Vec<u32> = helper
        .expect("held ", Duration::from_secs(600))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if pids.len() != SPREAD_PROCESSES {
        bail!("the helper holds sockets in {} processes", pids.len());
    }
    let ss_listed = wait_close_wait(CLOSE_WAIT_SOCKETS)?;
    let (t_leaks, t_ss, json) = time_against_ss(tools, repeats)?;
    let found: Option<Vec<u64>> = json
        .as_deref()
        .map(|j| pids.iter().map(|&p| close_wait_of(j, p)).collect());
    let profile =
        super::profile::command(&mut leaks_command(tools), dir).map_err(|e| format!("{e:#}"));
    drop(helper);
    Ok(LeaksOnce {
        sockets: CLOSE_WAIT_SOCKETS,
        processes: SPREAD_PROCESSES,
        processes_found: found
            .as_ref()
            .map(|f| f.iter().filter(|&&n| n == SPREAD_PER as u64).count()),
        ss_listed,
        leaks_found: found.map(|f| f.iter().sum()),
        leaks: t_leaks,
        ss: t_ss,
        profile,
    })
}

/// `bench --hold-spread PROCS/PER`: forks PROCS children that each hold PER
/// client sockets in CLOSE_WAIT (this process accepts and closes the
/// server ends), prints `held PID...`, and waits for stdin to close, which
/// ends the children too (they read the same stdin).
pub fn hold_spread(spec: &str) -> Result<()> {
    let (procs, per) = spec
        .split_once('/')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .with_context(|| format!("--hold-spread {spec}: PROCS/PER"))?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a listener")?;
    let addr = listener.local_addr()?;
    let mut pids = Vec::with_capacity(procs);
    for _ in 0..procs {
        let mut ready = [0 as libc::c_int; 2];
        // SAFETY: a valid array of two fds.
        if unsafe { libc::pipe(ready.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe");
        }
        // SAFETY: this helper is single-threaded (nothing else runs here).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // The child: its own sockets only, then wait for stdin to close.
            drop(listener);
            // SAFETY: the read end is ours and unused here.
            unsafe { libc::close(ready[0]) };
            let held: Vec<TcpStream> = (0..per)
                .filter_map(|_| TcpStream::connect(addr).ok())
                .collect();
            // SAFETY: writes one byte from a valid buffer to our pipe end.
            unsafe {
                libc::write(ready[1], b"x".as_ptr().cast(), 1);
                libc::close(ready[1]);
            }
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            drop(held);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: the write end belongs to the child now.
        unsafe { libc::close(ready[1]) };
        for _ in 0..per {
            // The server end closes at once: the child's end goes to CLOSE_WAIT.
            drop(listener.accept().context("accept")?);
        }
        let mut byte = [0u8; 1];
        // SAFETY: reads one byte into a valid buffer, then closes our end.
        unsafe {
            libc::read(ready[0], byte.as_mut_ptr().cast(), 1);
            libc::close(ready[0]);
        }
        pids.push(pid.to_string());
    }
    println!("held {}", pids.join(" "));
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    Ok(())
}

fn count_close_wait() -> usize {
    crate::cmd::stdout(Command::new("ss").args(["-tanH", "state", "close-wait"]))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Wall time of one run with stdout to /dev/null; an error (with its
/// stderr) unless it exits 0.
pub fn time(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", crate::cmd::display(cmd)))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            crate::cmd::display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// The `close_wait` count of `pid`'s rows in `leaks --json` output.
fn close_wait_of(json: &str, pid: u32) -> u64 {
    let pid_key = format!("\"pid\":{pid},");
    json.lines()
        .filter(|l| l.contains(&pid_key))
        .filter_map(|l| {
            let rest = &l[l.find("\"close_wait\":")? + 13..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaks_json_count() {
        let json = "{\"time\":\"t\",\"pid\":42,\"comm\":\"x\",\"close_wait\":17,\"oldest_s\":1.0}\n\
                    {\"time\":\"t\",\"pid\":7,\"comm\":\"y\",\"close_wait\":3}\n";
        assert_eq!(close_wait_of(json, 42), 17);
        assert_eq!(close_wait_of(json, 4), 0);
    }

    #[test]
    fn held_connections() {
        let held = Held::connect(200, 2, true, Duration::ZERO).unwrap();
        assert_eq!(held.sockets(), 400);
        let half = Held::connect(100, 1, false, Duration::ZERO).unwrap();
        assert_eq!(half.sockets(), 100);
    }
}
