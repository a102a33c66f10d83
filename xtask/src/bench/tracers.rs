//! The configurations under test: how each tracer is started, how we know it
//! is attached, and what is read from it before, during and after a run.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::load::{free_port, which};
use super::stats::{RunStats, StatsFile};
use super::sys::{self, Proc, ProgStats};

/// The bpftrace one-liner that only counts transitions in a map.
pub const BPFTRACE_PROGRAM: &str =
    "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }";
pub const TCPSTATES: &str = "/usr/sbin/tcpstates";

/// How a floor program is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// A bpftrace program.
    Bpftrace(&'static str),
    /// One of tcptrace-ebpf's floor programs (src/floors.rs), by name.
    Own(&'static str),
}

/// The floor of a program on this tracepoint, piece by piece: programs
/// that do one thing each, whose kernel ns/event is what that thing costs
/// on this machine. The bpftrace ones' `if` keeps bpftrace from dropping
/// the work; its branch never runs. The own ones do what a tcptrace mode
/// cannot avoid, the way tcptrace does it.
pub const FLOOR_PROGRAMS: [(Config, &str, Floor); 12] = [
    (
        Config::FloorEmpty,
        "nothing (an empty program)",
        Floor::Bpftrace("tracepoint:sock:inet_sock_set_state { $x = 1; }"),
    ),
    (
        Config::FloorClock,
        "reads the clock (`bpf_ktime_get_ns`)",
        Floor::Bpftrace(
            "tracepoint:sock:inet_sock_set_state { if (nsecs == 1) { @n = count(); } }",
        ),
    ),
    (
        Config::FloorRead,
        "reads one kernel pointer (`bpf_probe_read_kernel`: `sk->sk_socket`)",
        Floor::Bpftrace(
            "tracepoint:sock:inet_sock_set_state { $s = (struct sock *)args->skaddr; if ($s->sk_socket == 0) { @n = count(); } }",
        ),
    ),
    (
        Config::FloorComm,
        "names the task (`bpf_get_current_comm`)",
        Floor::Bpftrace(
            "tracepoint:sock:inet_sock_set_state { if (comm == \"-\") { @n = count(); } }",
        ),
    ),
    (
        Config::FloorInodeWalk,
        "finds the inode of a socket entering CLOSE_WAIT (`sk->sk_socket`, its inode: two probe reads)",
        Floor::Bpftrace(
            "tracepoint:sock:inet_sock_set_state { if (args->newstate == 8) { $s = (struct sock *)args->skaddr; if (((struct socket_alloc *)$s->sk_socket)->vfs_inode.i_ino == 0) { @n = count(); } } }",
        ),
    ),
    (
        Config::FloorAcceptWalk,
        "an empty program, and at each `accept4()` exit the walk from the fd to its socket (`current->files->fdt->fd[fd]->private_data->sk`, its family: seven probe reads)",
        Floor::Bpftrace(
            "tracepoint:sock:inet_sock_set_state { $x = 1; } tracepoint:syscalls:sys_exit_accept4 { if (args->ret >= 0) { $f = *(((struct task_struct *)curtask)->files->fdt->fd + args->ret); $s = ((struct socket *)$f->private_data)->sk; if ($s->__sk_common.skc_family == 99) { @n = count(); } } }",
        ),
    ),
    (
        Config::FloorEntry,
        "`hist`'s least: the clock, the socket's entry in tcptrace's set-associative table (its dwell read, its state written), one per-CPU counter",
        Floor::Own("floor_entry"),
    ),
    (
        Config::FloorRing,
        "the clock and a 104-byte ring buffer record per transition, in one ring all CPUs share, read by a user process",
        Floor::Own("floor_ring"),
    ),
    (
        Config::FloorRingPerCpu,
        "the same record in a ring of its CPU's own, as tcptrace and the stream floors write it (`floor_ring`'s work without one shared ring's cross-CPU traffic)",
        Floor::Own("floor_ring_cpu"),
    ),
    (
        Config::FloorStream,
        "`watch`'s least in the program: the socket's entry, the task's pid and name in process context, a record per transition",
        Floor::Own("floor_stream"),
    ),
    (
        Config::FloorCloseWait,
        "below `leaks`'s least in the program: a record per transition into or out of CLOSE_WAIT, without the owner learning",
        Floor::Own("floor_cw"),
    ),
    (
        Config::FloorServe,
        "`serve`'s least in the program: `hist`'s least, and `leaks`'s records",
        Floor::Own("floor_serve"),
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Config {
    Baseline,
    Watch,
    WatchJson,
    Leaks,
    Hist,
    Serve,
    /// Leak provenance (issue 14): `leaks --stacks`, `watch --stacks`.
    LeaksStacks,
    WatchStacks,
    Tcpstates,
    Bpftrace,
    /// The modes above, run by tcptrace as built before the redesign
    /// (`--before REV`, [`BEFORE`]): the same rounds say whether a change
    /// made any mode slower.
    BeforeWatch,
    BeforeWatchJson,
    BeforeLeaks,
    BeforeHist,
    BeforeServe,
    /// The floor programs ([`FLOOR_PROGRAMS`]): measured once each, not in the rounds.
    FloorEmpty,
    FloorClock,
    FloorRead,
    FloorComm,
    FloorInodeWalk,
    FloorAcceptWalk,
    FloorEntry,
    FloorRing,
    FloorRingPerCpu,
    FloorStream,
    FloorCloseWait,
    FloorServe,
}

impl Config {
    pub const ALL: [Config; 15] = [
        Config::Baseline,
        Config::Watch,
        Config::WatchJson,
        Config::Leaks,
        Config::Hist,
        Config::Serve,
        Config::LeaksStacks,
        Config::WatchStacks,
        Config::Tcpstates,
        Config::Bpftrace,
        Config::BeforeWatch,
        Config::BeforeWatchJson,
        Config::BeforeLeaks,
        Config::BeforeHist,
        Config::BeforeServe,
    ];

    /// The name `--only` takes.
    pub fn key(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Watch => "watch",
            Config::WatchJson => "watch-json",
            Config::Leaks => "leaks",
            Config::Hist => "hist",
            Config::Serve => "serve",
            Config::LeaksStacks => "leaks-stacks",
            Config::WatchStacks => "watch-stacks",
            Config::Tcpstates => "tcpstates",
            Config::Bpftrace => "bpftrace",
            Config::BeforeWatch => "before-watch",
            Config::BeforeWatchJson => "before-watch-json",
            Config::BeforeLeaks => "before-leaks",
            Config::BeforeHist => "before-hist",
            Config::BeforeServe => "before-serve",
            Config::FloorEmpty => "floor-empty",
            Config::FloorClock => "floor-clock",
            Config::FloorRead => "floor-read",
            Config::FloorComm => "floor-comm",
            Config::FloorInodeWalk => "floor-inode-walk",
            Config::FloorAcceptWalk => "floor-accept-walk",
            Config::FloorEntry => "floor-entry",
            Config::FloorRing => "floor-ring",
            Config::FloorRingPerCpu => "floor-ring-per-cpu",
            Config::FloorStream => "floor-stream",
            Config::FloorCloseWait => "floor-close-wait",
            Config::FloorServe => "floor-serve",
        }
    }

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Config::Baseline => "no tracer",
            Config::Watch => "`tcptrace watch` > /dev/null",
            Config::WatchJson => "`tcptrace watch --json` > /dev/null",
            Config::Leaks => "`tcptrace leaks` > /dev/null",
            Config::Hist => "`tcptrace hist` > /dev/null",
            Config::Serve => "`tcptrace serve`, scraped every 1 s",
            Config::LeaksStacks => "`tcptrace leaks --stacks` > /dev/null",
            Config::WatchStacks => "`tcptrace watch --stacks` > /dev/null",
            Config::Tcpstates => "libbpf-tools `tcpstates` > /dev/null",
            Config::Bpftrace => "bpftrace counting one-liner",
            Config::BeforeWatch => "`tcptrace watch`, before the redesign",
            Config::BeforeWatchJson => "`tcptrace watch --json`, before the redesign",
            Config::BeforeLeaks => "`tcptrace leaks`, before the redesign",
            Config::BeforeHist => "`tcptrace hist`, before the redesign",
            Config::BeforeServe => "`tcptrace serve`, before the redesign",
            _ => FLOOR_PROGRAMS
                .iter()
                .find(|f| f.0 == self)
                .map_or("?", |f| f.1),
        }
    }

    pub fn is_tcptrace(self) -> bool {
        matches!(
            self,
            Config::Watch
                | Config::WatchJson
                | Config::Leaks
                | Config::Hist
                | Config::Serve
                | Config::LeaksStacks
                | Config::WatchStacks
        )
    }

    /// The tcptrace mode it runs: itself, or a `Before*`'s current twin.
    pub fn mode(self) -> Config {
        BEFORE
            .iter()
            .find(|(_, before)| *before == self)
            .map_or(self, |(now, _)| *now)
    }

    pub fn is_before(self) -> bool {
        self.mode() != self
    }

    /// How it runs, if it is a floor program.
    pub fn floor(self) -> Option<Floor> {
        FLOOR_PROGRAMS.iter().find(|f| f.0 == self).map(|f| f.2)
    }

    pub fn from_key(key: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|c| c.key() == key)
    }
}

/// Each mode and its run by the build from before the redesign.
pub const BEFORE: [(Config, Config); 5] = [
    (Config::Watch, Config::BeforeWatch),
    (Config::WatchJson, Config::BeforeWatchJson),
    (Config::Leaks, Config::BeforeLeaks),
    (Config::Hist, Config::BeforeHist),
    (Config::Serve, Config::BeforeServe),
];

/// Where each tracer is and which tcptrace subcommands exist.
pub struct Tools {
    pub tcptrace: PathBuf,
    /// tcptrace as built at `--before REV`: (the binary, its revision).
    pub before: Option<(PathBuf, String)>,
    pub tcpstates: Option<PathBuf>,
    pub bpftrace: Option<PathBuf>,
    pub hist: bool,
    pub serve: bool,
    /// The floor programs' object, or why there is none.
    pub floors: Result<PathBuf, String>,
}

impl Tools {
    pub fn find(tcptrace: PathBuf) -> Self {
        let has = |sub: &str| {
            Command::new(&tcptrace)
                .args([sub, "--help"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        Self {
            hist: has("hist"),
            serve: has("serve"),
            tcpstates: Some(PathBuf::from(TCPSTATES))
                .filter(|p| p.is_file())
                .or_else(|| which("tcpstates")),
            bpftrace: which("bpftrace"),
            tcptrace,
            before: None,
            floors: Err("not looked for".to_owned()),
        }
    }

    /// Why a configuration cannot run here, if it cannot.
    pub fn unavailable(&self, config: Config) -> Option<String> {
        match config {
            Config::Hist if !self.hist => {
                Some("not available: `tcptrace hist --help` fails in this build".to_owned())
            }
            Config::Serve if !self.serve => {
                Some("not available: `tcptrace serve --help` fails in this build".to_owned())
            }
            Config::Tcpstates if self.tcpstates.is_none() => {
                Some("not available: libbpf-tools' tcpstates is not installed".to_owned())
            }
            Config::Bpftrace if self.bpftrace.is_none() => {
                Some("not available: bpftrace is not installed".to_owned())
            }
            c if c.is_before() && self.before.is_none() => {
                Some("not available: no build from before (--before REV)".to_owned())
            }
            _ => match config.floor() {
                Some(Floor::Bpftrace(_)) if self.bpftrace.is_none() => {
                    Some("not available: bpftrace is not installed".to_owned())
                }
                Some(Floor::Own(_)) => self
                    .floors
                    .as_ref()
                    .err()
                    .map(|e| format!("not available: no floor programs ({e})")),
                _ => None,
            },
        }
    }

    fn command(
        &self,
        config: Config,
        serve_addr: Option<SocketAddr>,
        stats: Option<&StatsFile>,
    ) -> Command {
        let mut cmd = match (config, config.floor()) {
            (Config::Tcpstates, _) => Command::new(self.tcpstates.as_ref().expect("checked")),
            (Config::Bpftrace, _) => {
                let mut c = Command::new(self.bpftrace.as_ref().expect("checked"));
                c.args(["-e", BPFTRACE_PROGRAM]);
                c
            }
            (_, Some(Floor::Bpftrace(program))) => {
                let mut c = Command::new(self.bpftrace.as_ref().expect("checked"));
                c.args(["-e", program]);
                c
            }
            (_, Some(Floor::Own(program))) => {
                let mut c = Command::new(sys::own_exe());
                c.args(["bench", "--floor", program, "--floor-object"]);
                c.arg(self.floors.as_ref().expect("checked"));
                c
            }
            (c, _) if c.is_before() => Command::new(&self.before.as_ref().expect("checked").0),
            _ => Command::new(&self.tcptrace),
        };
        if let Some(stats) = stats {
            cmd.args(stats.args());
        }
        match config.mode() {
            Config::Watch => {
                cmd.arg("watch");
            }
            Config::WatchJson => {
                cmd.args(["watch", "--json"]);
            }
            Config::Leaks => {
                cmd.arg("leaks");
            }
            Config::LeaksStacks => {
                cmd.args(["leaks", "--stacks"]);
            }
            Config::WatchStacks => {
                cmd.args(["watch", "--stacks"]);
            }
            Config::Hist => {
                cmd.arg("hist");
            }
            Config::Serve => {
                let addr = serve_addr.expect("serve has an address");
                cmd.args(["serve", "--listen", &addr.to_string()]);
            }
            _ => {}
        }
        cmd.stdout(Stdio::null());
        cmd
    }
}

/// Makes one loopback connection on demand, to see a freshly loaded
/// program's run count move: proof that it is attached, whatever the tracer.
pub struct Poker {
    listener: TcpListener,
}

impl Poker {
    pub fn new() -> Result<Self> {
        Ok(Self {
            listener: TcpListener::bind("127.0.0.1:0")?,
        })
    }

    pub fn poke(&self) {
        let addr = match self.listener.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        if let Ok(client) = TcpStream::connect(addr) {
            let server = self.listener.accept();
            drop(client);
            drop(server);
        }
    }
}

/// A tracer started and attached.
pub struct Running {
    pub proc: Proc,
    scraper: Option<Scraper>,
    /// Where a tcptrace mode writes its statistics at exit.
    stats: Option<StatsFile>,
}

pub fn start(tools: &Tools, config: Config, poker: &Poker) -> Result<Running> {
    let serve_addr = if config.mode() == Config::Serve {
        Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
    } else {
        None
    };
    let stats = config.is_tcptrace().then(StatsFile::new);
    let mut cmd = tools.command(config, serve_addr, stats.as_ref());
    let mut proc = Proc::spawn(config.key(), &mut cmd)?;
    if config.is_tcptrace()
        && proc
            .wait_line("attached", Duration::from_secs(30))
            .is_none()
    {
        let lines = proc.stop(Duration::from_secs(2));
        bail!("no \"attached\" line within 30 s: {}", tail(&lines));
    }
    wait_attached(&mut proc, poker, Duration::from_secs(30))?;
    let scraper = match serve_addr {
        Some(addr) => {
            wait_metrics(addr, &mut proc, Duration::from_secs(10))?;
            Some(Scraper::start(addr))
        }
        None => None,
    };
    Ok(Running {
        proc,
        scraper,
        stats,
    })
}

/// The last few stderr lines, for an error message.
pub fn tail(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(3);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "no output".to_owned()
    } else {
        t
    }
}

/// Waits until a test connection moves the run count of a BPF program the
/// tracer holds: proof that it is attached.
pub fn wait_attached(proc: &mut Proc, poker: &Poker, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        sys::bail_if_interrupted()?;
        if !proc.running() {
            let lines = proc.stop(Duration::ZERO);
            bail!(
                "{} exited ({:?}) before attaching: {}",
                proc.name,
                proc.exit_status(),
                tail(&lines)
            );
        }
        let progs = sys::bpf_progs(proc.pid());
        if !progs.is_empty() {
            let before: u64 = progs.iter().map(|p| p.run_cnt).sum();
            poker.poke();
            thread::sleep(Duration::from_millis(20));
            let after: u64 = sys::bpf_progs(proc.pid()).iter().map(|p| p.run_cnt).sum();
            if after > before {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_millis(30));
    }
    let lines = proc.stop(Duration::from_secs(2));
    bail!(
        "{}: its BPF program did not run on a test connection within {} s: {}",
        proc.name,
        timeout.as_secs(),
        tail(&lines)
    )
}

fn wait_metrics(addr: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if http_get(addr, "/metrics").is_ok_and(|(code, _)| code == 200) {
            return Ok(());
        }
        if !proc.running() || Instant::now() > deadline {
            let lines = proc.stop(Duration::from_secs(1));
            bail!(
                "serve did not answer GET /metrics on {addr}: {}",
                tail(&lines)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET; the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Scrapes serve's /metrics every second while the load runs.
struct Scraper {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ScrapeStats>,
}

#[derive(Default)]
pub struct ScrapeStats {
    pub ok: u32,
    pub failed: u32,
}

impl Scraper {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut stats = ScrapeStats::default();
            while !flag.load(Ordering::Relaxed) {
                match http_get(addr, "/metrics") {
                    Ok((200, _)) => stats.ok += 1,
                    _ => stats.failed += 1,
                }
                for _ in 0..20 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
            stats
        });
        Self { stop, handle }
    }

    fn finish(self) -> ScrapeStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Counters read from a tracer at one instant.
pub struct Snapshot {
    pub cpu_ticks: Option<u64>,
    pub progs: Vec<ProgStats>,
}

impl Snapshot {
    pub fn take(pid: u32) -> Self {
        Self {
            cpu_ticks: sys::cpu_ticks(pid),
            progs: sys::bpf_progs(pid),
        }
    }
}

/// Kernel time of a tracer's programs between two snapshots.
#[derive(Clone, Debug)]
pub struct KernelCost {
    /// Runs of the program that ran most: one per state change.
    pub events: u64,
    /// All of the tracer's programs' run time over those events.
    pub ns_per_event: f64,
}

pub fn kernel_cost(before: &Snapshot, after: &Snapshot) -> Option<KernelCost> {
    let deltas: Vec<(u64, u64)> = after
        .progs
        .iter()
        .map(|a| {
            let b = before.progs.iter().find(|b| b.id == a.id);
            let time = a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns));
            let cnt = a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt));
            (time, cnt)
        })
        .collect();
    let events = deltas.iter().map(|d| d.1).max()?;
    if events == 0 {
        return None;
    }
    let time: u64 = deltas.iter().map(|d| d.0).sum();
    Some(KernelCost {
        events,
        ns_per_event: time as f64 / events as f64,
    })
}

/// Waits until the tracer has used no CPU for 300 ms (it has drained what
/// the load left in its buffers), at most `max`.
pub fn settle(pid: u32, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = sys::cpu_ticks(pid);
    let mut still = 0;
    while Instant::now() < deadline && still < 3 {
        thread::sleep(Duration::from_millis(100));
        let now = sys::cpu_ticks(pid);
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
}

/// What stopping a tracer told us.
pub struct Stopped {
    pub lines: Vec<String>,
    /// What a tcptrace mode wrote to `--stats-json` at exit; `None` for
    /// the other tracers, an error when tcptrace wrote none.
    pub stats: Option<Result<RunStats, String>>,
    pub scrapes: Option<ScrapeStats>,
    pub exited_early: bool,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn stop(mut self) -> Stopped {
        let exited_early = !self.proc.running();
        let scrapes = self.scraper.take().map(Scraper::finish);
        let lines = self.proc.stop(Duration::from_secs(15));
        Stopped {
            stats: self
                .stats
                .as_ref()
                .map(|f| f.read().map_err(|e| format!("{e:#}"))),
            lines,
            scrapes,
            exited_early,
        }
    }
}

impl Stopped {
    /// tcptrace's statistics, when it wrote them.
    pub fn run_stats(&self) -> Option<RunStats> {
        self.stats.as_ref()?.as_ref().ok().cloned()
    }

    /// Events the tracer says it handled: the records it read, or for
    /// `hist` (which reads none: it counts in the kernel) the dwell times
    /// the kernel measured.
    pub fn events(&self, config: Config) -> Option<u64> {
        if config == Config::Hist {
            return hist_measured(&self.lines);
        }
        self.run_stats().map(|s| s.events)
    }

    /// Events the tracer says it lost: tcptrace's statistics (records the
    /// ring buffer could not queue, and histogram updates dropped),
    /// libbpf-tools' "lost N events" warnings; `None` when it reports
    /// nothing we can read.
    pub fn lost(&self, config: Config) -> Option<u64> {
        if config.is_tcptrace() {
            return self.run_stats().map(|s| s.lost_or_dropped());
        }
        match config {
            Config::Tcpstates => Some(
                self.lines
                    .iter()
                    .filter_map(|l| {
                        let rest = l.trim().strip_prefix("lost ")?;
                        rest.split_whitespace().next()?.parse::<u64>().ok()
                    })
                    .sum(),
            ),
            _ => None,
        }
    }
}

/// `tcptrace hist`'s closing line, `tcptrace: N dwell times measured in the
/// kernel`: the one count of its own that `--stats-json` does not carry.
fn hist_measured(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        let rest = l.strip_prefix("tcptrace: ")?;
        let (n, _) = rest.split_once(" dwell times measured")?;
        n.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for c in Config::ALL {
            assert_eq!(Config::from_key(c.key()), Some(c));
        }
    }

    #[test]
    fn kernel_cost_from_deltas() {
        let p = |id, t, c| ProgStats {
            id,
            prog_type: 5,
            run_time_ns: t,
            run_cnt: c,
        };
        let before = Snapshot {
            cpu_ticks: None,
            progs: vec![p(1, 100, 10)],
        };
        let after = Snapshot {
            cpu_ticks: None,
            progs: vec![p(1, 1100, 20)],
        };
        let k = kernel_cost(&before, &after).unwrap();
        assert_eq!(k.events, 10);
        assert!((k.ns_per_event - 100.0).abs() < 1e-9);
    }

    #[test]
    fn hist_closing_line() {
        let lines = vec![
            "tcptrace: 134890 dwell times measured in the kernel".to_owned(),
            "tcptrace: 0 events, 0 lost, 0 evicted, 2 dropped, 0 missed".to_owned(),
        ];
        assert_eq!(hist_measured(&lines), Some(134890));
        assert_eq!(hist_measured(&lines[1..]), None);
    }
}
