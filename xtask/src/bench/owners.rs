//! Owner truth (issue 11): how often `tcptrace watch --json` names a
//! socket's true holder when both ends are local processes and clients
//! close on EOF at once, the case where the task on the CPU is the peer.
//!
//! Two processes of this binary on loopback: a server (`bench
//! --owner-server PRE`) and a client (`bench --owner-client ADDR/PRE`).
//! Before tcptrace starts, the client opens PRE connections and the server
//! holds them; then, traced, the server closes those (the client closes
//! each as soon as it reads EOF) while the client runs the in-repo storm
//! against it (the server writes two bytes and closes first, the client
//! reads to EOF and closes). Every transition on the server's port is then
//! judged against the pid of the process that held that end.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::report::thousands;
use super::stats::{RunStats, StatsFile};
use super::storm::Storm;
use super::sys::{self, Helper, Proc};
use super::tracers::{self, Poker, Tools};

/// Connections opened before tcptrace starts: the reduced case had 60.
pub const PRE_CONNECTIONS: usize = 60;
pub const PRE_CONNECTIONS_QUICK: usize = 20;
/// Wrong owners quoted in the report, at most.
const EXAMPLES: usize = 5;

/// Which end of a connection a transition is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// What tcptrace said about one transition's owner, against the truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The holder's pid, found as the socket's holder.
    Holder,
    /// The holder's pid, as the listener's owner (a server socket not
    /// accepted yet: the server's, which is right).
    Listener,
    /// No owner (`pid` null): said, not guessed.
    Unknown,
    /// The process at the other end.
    Peer,
    /// Any other process.
    Other,
}

/// The verdict on an owner: `pid` as tcptrace gave it, `truth` the pid of
/// the process holding this end, `peer` the other end's.
pub fn verdict(owner: &str, pid: Option<u32>, truth: u32, peer: u32) -> Verdict {
    match pid {
        None => Verdict::Unknown,
        Some(p) if p == truth && owner == "listener" => Verdict::Listener,
        Some(p) if p == truth => Verdict::Holder,
        Some(p) if p == peer => Verdict::Peer,
        Some(_) => Verdict::Other,
    }
}

/// Counts of verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub holder: u64,
    pub listener: u64,
    pub unknown: u64,
    pub peer: u64,
    pub other: u64,
}

impl Tally {
    pub fn add(&mut self, v: Verdict) {
        *match v {
            Verdict::Holder => &mut self.holder,
            Verdict::Listener => &mut self.listener,
            Verdict::Unknown => &mut self.unknown,
            Verdict::Peer => &mut self.peer,
            Verdict::Other => &mut self.other,
        } += 1;
    }

    pub fn plus(self, o: Tally) -> Tally {
        Tally {
            holder: self.holder + o.holder,
            listener: self.listener + o.listener,
            unknown: self.unknown + o.unknown,
            peer: self.peer + o.peer,
            other: self.other + o.other,
        }
    }

    pub fn total(&self) -> u64 {
        self.holder + self.listener + self.unknown + self.peer + self.other
    }

    pub fn right(&self) -> u64 {
        self.holder + self.listener
    }

    pub fn wrong(&self) -> u64 {
        self.peer + self.other
    }
}

/// The fields of one `watch --json` line that a verdict needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub skaddr: String,
    /// `ipv4`, `ipv6`, or `ipv6 (IPv4-mapped)`.
    pub family: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub owner: String,
    pub lport: u16,
    pub rport: u16,
    pub transition: String,
}

pub fn parse_line(text: &str) -> Option<Line> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let port = |k: &str| v.get(k)?.as_u64().and_then(|p| u16::try_from(p).ok());
    let state = |k: &str| v.get(k)?.as_str().map(str::to_owned);
    let mapped = state("laddr")?.starts_with("::ffff:");
    Some(Line {
        skaddr: state("skaddr")?,
        family: state("family")? + if mapped { " (IPv4-mapped)" } else { "" },
        pid: v
            .get("pid")?
            .as_u64()
            .map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        comm: v.get("comm")?.as_str().map(str::to_owned),
        owner: state("owner")?,
        lport: port("lport")?,
        rport: port("rport")?,
        transition: format!("{} -> {}", state("oldstate")?, state("newstate")?),
    })
}

/// The pids of the two ends.
#[derive(Clone, Copy, Debug)]
pub struct Truth {
    pub server: u32,
    pub client: u32,
}

/// Every transition on one port, judged.
#[derive(Debug, Default)]
pub struct Classified {
    pub client: Tally,
    pub server: Tally,
    /// Both sides of the connections opened before tcptrace started.
    pub pre: Tally,
    pub by_transition: BTreeMap<(Side, String), Tally>,
    /// Transitions per address family and side.
    pub families: BTreeMap<(Side, String), u64>,
    /// The first few wrong owners, as `side transition: pid (comm), the peer`.
    pub wrong_examples: Vec<String>,
    /// Lines of the trace read (any port), and those that were not a transition.
    pub lines: u64,
    pub unparsed: u64,
    /// A pid with owner `unknown`, or no pid with a known owner: the JSON
    /// contradicting itself.
    pub inconsistent: u64,
}

impl Classified {
    pub fn total(&self) -> Tally {
        self.client.plus(self.server)
    }
}

/// Judges every transition of `trace` (NDJSON from `watch --json`) on
/// `port`: the server's end has it as local port, the client's as remote.
/// `pre` holds the client ports of the connections opened before the trace.
pub fn classify(
    trace: impl BufRead,
    port: u16,
    truth: Truth,
    pre: &HashSet<u16>,
) -> Result<Classified> {
    let mut c = Classified::default();
    // A port of an early connection is soon reused by the storm: each end
    // of an early connection is the first socket seen with its port, up to
    // its CLOSE. (side, port) -> that socket's address, and whether it closed.
    let mut early: HashMap<(Side, u16), (String, bool)> = HashMap::new();
    for line in trace.lines() {
        let line = line.context("reading the trace")?;
        c.lines += 1;
        let Some(l) = parse_line(&line) else {
            c.unparsed += 1;
            continue;
        };
        let (side, own, peer, client_port) = if l.lport == port {
            (Side::Server, truth.server, truth.client, l.rport)
        } else if l.rport == port {
            (Side::Client, truth.client, truth.server, l.lport)
        } else {
            continue;
        };
        if (l.pid.is_some()) == (l.owner == "unknown") {
            c.inconsistent += 1;
        }
        let v = verdict(&l.owner, l.pid, own, peer);
        match side {
            Side::Client => c.client.add(v),
            Side::Server => c.server.add(v),
        }
        if pre.contains(&client_port) {
            let (skaddr, closed) = early
                .entry((side, client_port))
                .or_insert_with(|| (l.skaddr.clone(), false));
            if *skaddr == l.skaddr && !*closed {
                c.pre.add(v);
                *closed = l.transition.ends_with("-> CLOSE");
            }
        }
        c.by_transition
            .entry((side, l.transition.clone()))
            .or_default()
            .add(v);
        *c.families.entry((side, l.family.clone())).or_default() += 1;
        if matches!(v, Verdict::Peer | Verdict::Other) && c.wrong_examples.len() < EXAMPLES {
            c.wrong_examples.push(format!(
                "{} `{}`: pid {} ({}, owner `{}`), {}",
                side.name(),
                l.transition,
                l.pid.map_or("?".to_owned(), |p| p.to_string()),
                l.comm.as_deref().unwrap_or("?"),
                l.owner,
                if v == Verdict::Peer {
                    "the peer"
                } else {
                    "another process"
                }
            ));
        }
    }
    Ok(c)
}

/// One run of the loopback figure.
pub struct OwnerTruth {
    pub pre: usize,
    pub secs: u64,
    pub client_threads: usize,
    pub port: u16,
    pub truth: Truth,
    /// Storm connections completed, and failed.
    pub connections: u64,
    pub errors: u64,
    /// Connections opened before the trace that the client closed on EOF.
    pub pre_closed: usize,
    pub classified: Classified,
    pub stats: Result<RunStats, String>,
}

pub fn run(tools: &Tools, poker: &Poker, secs: u64, pre: usize, dir: &Path) -> Result<OwnerTruth> {
    let exe = sys::own_exe();
    let mut server = Helper::spawn(
        "the owner-truth server",
        Command::new(&exe).args(["bench", "--owner-server", &pre.to_string()]),
    )?;
    let port: u16 = server
        .expect("listening ", Duration::from_secs(30))?
        .parse()
        .context("the owner-truth server's port")?;
    let mut client = Helper::spawn(
        "the owner-truth client",
        Command::new(&exe).args([
            "bench",
            "--owner-client",
            &format!("127.0.0.1:{port}/{pre}"),
        ]),
    )?;
    let ready = client.expect("ready", Duration::from_secs(60))?;
    let pre_ports: HashSet<u16> = ready
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the owner-truth client's ports: {ready}"))?;
    server.expect("held ", Duration::from_secs(30))?;
    let truth = Truth {
        server: server.pid(),
        client: client.pid(),
    };

    let trace_path = dir.join("owner-truth.ndjson");
    let stats_file = StatsFile::new();
    let mut watch = Proc::spawn(
        "tcptrace watch --json",
        Command::new(&tools.tcptrace)
            .args(stats_file.args())
            .args(["watch", "--json"])
            .stdout(File::create(&trace_path).context("creating the trace file")?),
    )?;
    if watch
        .wait_line("attached", Duration::from_secs(30))
        .is_none()
    {
        let lines = watch.stop(Duration::from_secs(2));
        bail!("tcptrace watch never attached: {}", tracers::tail(&lines));
    }
    tracers::wait_attached(&mut watch, poker, Duration::from_secs(30))?;

    let threads = super::load::storm_clients();
    eprintln!(
        "bench: owners: server pid {} on 127.0.0.1:{port} closes {pre} connections opened before tcptrace; client pid {} ({threads} threads) storms it for {secs} s",
        truth.server, truth.client
    );
    server.send("release")?;
    client.send(&format!("storm {secs} {threads}"))?;
    let stormed = client.expect("stormed ", Duration::from_secs(secs + 60))?;
    let nums: Vec<u64> = stormed
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the owner-truth client said `stormed {stormed}`"))?;
    let [connections, errors, pre_closed] = nums[..] else {
        bail!("the owner-truth client said `stormed {stormed}`");
    };
    tracers::settle(watch.pid(), Duration::from_secs(10));
    let lines = watch.stop(Duration::from_secs(15));
    let stats = stats_file
        .read()
        .map_err(|e| format!("{e:#} ({})", tracers::tail(&lines)));
    drop(client);
    drop(server);
    let trace = File::open(&trace_path).context("opening the trace")?;
    let classified = classify(BufReader::new(trace), port, truth, &pre_ports)?;
    // It can be hundreds of MB.
    let _ = std::fs::remove_file(&trace_path);
    Ok(OwnerTruth {
        pre,
        secs,
        client_threads: threads,
        port,
        truth,
        connections,
        errors,
        pre_closed: pre_closed as usize,
        classified,
        stats,
    })
}

/// `bench --owner-server PRE`: listens on loopback and says `listening
/// PORT`; accepts PRE connections and holds them (`held PRE`); on `release`
/// serves the storm and closes what it held; exits when stdin closes.
pub fn server(pre: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a listener")?;
    say(&format!("listening {}", listener.local_addr()?.port()))?;
    let held: Vec<TcpStream> = (0..pre)
        .map(|_| listener.accept().map(|(s, _)| s))
        .collect::<Result<_, _>>()
        .context("accepting the connections made before the trace")?;
    say(&format!("held {}", held.len()))?;
    let mut lines = std::io::stdin().lock().lines();
    if !matches!(lines.next(), Some(Ok(l)) if l.trim() == "release") {
        return Ok(());
    }
    let storm = Storm::serve(listener, 1, 1)?;
    // The server closes first, as in the storm.
    drop(held);
    for _ in lines {}
    drop(storm);
    Ok(())
}

/// `bench --owner-client ADDR/PRE`: opens PRE connections to ADDR, each
/// closed by a thread of its own as soon as it reads EOF, and says `ready
/// PORT,PORT,...` (their local ports); on `storm SECS THREADS` runs the
/// storm's clients against ADDR and says `stormed COMPLETED FAILED
/// CLOSED_ON_EOF`; exits when stdin closes.
pub fn client(spec: &str) -> Result<()> {
    let (addr, pre) = spec
        .split_once('/')
        .with_context(|| format!("--owner-client {spec}: ADDR/PRE"))?;
    let addr: SocketAddr = addr.parse().context("--owner-client: the address")?;
    let pre: usize = pre.parse().context("--owner-client: PRE")?;
    let closed = Arc::new(AtomicUsize::new(0));
    let mut ports = Vec::with_capacity(pre);
    for i in 0..pre {
        let mut conn =
            TcpStream::connect(addr).with_context(|| format!("connection {} to {addr}", i + 1))?;
        ports.push(conn.local_addr()?.port().to_string());
        let closed = Arc::clone(&closed);
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            drop(conn);
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
    say(&format!("ready {}", ports.join(",")))?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some(rest) = line.strip_prefix("storm ") else {
            continue;
        };
        let (secs, threads) = rest
            .split_once(' ')
            .with_context(|| format!("`{line}`: storm SECS THREADS"))?;
        let secs: u64 = secs.parse().context("storm: SECS")?;
        let threads: usize = threads.parse().context("storm: THREADS")?;
        let run = Storm::to(addr, threads).run(Duration::from_secs(secs));
        say(&format!(
            "stormed {} {} {}",
            run.completed,
            run.errors,
            closed.load(Ordering::SeqCst)
        ))?;
    }
    Ok(())
}

/// One line to the bench, at once.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn share(n: u64, of: u64) -> String {
    if of == 0 {
        "—".to_owned()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

/// The table head for tallies, shared with the broker's figure.
pub const TALLY_HEAD: &str = "| | transitions | right: holder | right: listener | unknown | wrong: the peer | wrong: another process | right | right or unknown |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";

pub fn tally_row(label: &str, t: &Tally) -> String {
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        thousands(t.total() as f64),
        thousands(t.holder as f64),
        thousands(t.listener as f64),
        thousands(t.unknown as f64),
        if t.peer > 0 {
            format!("**{}**", thousands(t.peer as f64))
        } else {
            "0".to_owned()
        },
        if t.other > 0 {
            format!("**{}**", thousands(t.other as f64))
        } else {
            "0".to_owned()
        },
        share(t.right(), t.total()),
        share(t.right() + t.unknown, t.total()),
    )
}

/// `## Owner truth`'s loopback part.
pub fn render(r: &mut String, o: &OwnerTruth) {
    let c = &o.classified;
    let _ = writeln!(
        r,
        "Two processes of the bench on loopback, 127.0.0.1:{}: a server (pid {}) and a client (pid {}). Before tcptrace starts, the client opens {} connections and the server holds them. Then `tcptrace watch --json` runs while the server closes those (the client closes each on EOF at once, from a thread of its own) and the client runs the in-repo storm against the server for {} s with {} threads: connect, read to EOF, close at once; the server writes 2 bytes and closes first. Every transition on the server's port is judged against the pid of the process holding that end: its own pid is right (as the holder, or, for a server socket not accepted yet, as the listener's owner), `pid: null` is unknown, the other end's pid or any other is wrong. Both ends are multi-threaded; a pid is a process (thread group).\n",
        o.port, o.truth.server, o.truth.client, o.pre, o.secs, o.client_threads
    );
    r.push_str(TALLY_HEAD);
    r.push_str(&tally_row("client side", &c.client));
    r.push_str(&tally_row("server side", &c.server));
    r.push_str(&tally_row("**total**", &c.total()));
    r.push_str(&tally_row(
        &format!(
            "… of which the {} connections opened before tcptrace",
            o.pre
        ),
        &c.pre,
    ));
    let _ = writeln!(
        r,
        "\n{} storm connections ({} failed); {} of the {} early connections closed by the client on EOF; {} lines traced on every port{}.",
        thousands(o.connections as f64),
        thousands(o.errors as f64),
        o.pre_closed,
        o.pre,
        thousands(c.lines as f64),
        match &o.stats {
            Ok(s) => format!(
                "; tcptrace's statistics: `{}`{}",
                s.text,
                if s.lost > 0 {
                    " (transitions lost in the ring buffer are not judged)"
                } else {
                    ""
                }
            ),
            Err(e) => format!("; no statistics from tcptrace: {e}"),
        }
    );
    if c.unparsed > 0 || c.inconsistent > 0 {
        let _ = writeln!(
            r,
            "\n**{} lines were not transitions; {} lines gave a pid with owner `unknown` or no pid with a known owner.**",
            c.unparsed, c.inconsistent
        );
    }
    if !c.wrong_examples.is_empty() {
        r.push_str("\nWrong owners (the first few):\n\n");
        for e in &c.wrong_examples {
            let _ = writeln!(r, "- {e}");
        }
    }
    r.push_str("\n<details><summary>By transition</summary>\n\n");
    r.push_str(TALLY_HEAD);
    for ((side, transition), t) in &c.by_transition {
        r.push_str(&tally_row(&format!("{} `{transition}`", side.name()), t));
    }
    r.push_str("\n</details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(pid: Option<u32>, owner: &str, lport: u16, rport: u16, old: &str, new: &str) -> String {
        format!(
            "{{\"time\":\"t\",\"skaddr\":\"{lport}{rport}{}\",\"pid\":{},\"comm\":{},\"owner\":\"{owner}\",\"family\":\"ipv4\",\"laddr\":\"127.0.0.1\",\"lport\":{lport},\"raddr\":\"127.0.0.1\",\"rport\":{rport},\"oldstate\":\"{old}\",\"newstate\":\"{new}\",\"ms\":null}}",
            if new == "SYN_SENT" { "s" } else { "" },
            pid.map_or("null".to_owned(), |p| p.to_string()),
            pid.map_or("null".to_owned(), |_| "\"x\"".to_owned()),
        )
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict("holder", Some(1), 1, 2), Verdict::Holder);
        assert_eq!(verdict("listener", Some(1), 1, 2), Verdict::Listener);
        assert_eq!(verdict("unknown", None, 1, 2), Verdict::Unknown);
        assert_eq!(verdict("holder", Some(2), 1, 2), Verdict::Peer);
        assert_eq!(verdict("listener", Some(2), 1, 2), Verdict::Peer);
        assert_eq!(verdict("holder", Some(3), 1, 2), Verdict::Other);
    }

    #[test]
    fn classifies_each_side() {
        let truth = Truth {
            server: 10,
            client: 20,
        };
        let trace = [
            json(Some(20), "holder", 0, 5000, "CLOSE", "SYN_SENT"),
            json(Some(10), "listener", 5000, 40001, "SYN_RECV", "ESTABLISHED"),
            json(Some(10), "holder", 40001, 5000, "ESTABLISHED", "CLOSE_WAIT"),
            json(None, "unknown", 40002, 5000, "ESTABLISHED", "CLOSE_WAIT"),
            json(Some(10), "holder", 5000, 40001, "ESTABLISHED", "FIN_WAIT1"),
            json(Some(99), "holder", 5000, 40002, "FIN_WAIT1", "FIN_WAIT2"),
            json(Some(99), "holder", 7000, 7001, "ESTABLISHED", "CLOSE_WAIT"),
            "tcptrace: not a transition".to_owned(),
            json(Some(20), "holder", 40002, 5000, "CLOSE_WAIT", "LAST_ACK"),
            json(Some(20), "holder", 40002, 5000, "LAST_ACK", "CLOSE"),
            // The storm reusing the early connection's port.
            json(Some(20), "holder", 40002, 5000, "ESTABLISHED", "CLOSE_WAIT"),
        ]
        .join("\n");
        let pre: HashSet<u16> = [40002].into();
        let c = classify(trace.as_bytes(), 5000, truth, &pre).unwrap();
        assert_eq!(
            c.client,
            Tally {
                holder: 4,
                unknown: 1,
                peer: 1,
                ..Tally::default()
            }
        );
        assert_eq!(
            c.server,
            Tally {
                holder: 1,
                listener: 1,
                other: 1,
                ..Tally::default()
            }
        );
        assert_eq!(
            c.pre,
            Tally {
                holder: 2,
                unknown: 1,
                other: 1,
                ..Tally::default()
            }
        );
        assert_eq!(c.total().right(), 6);
        assert_eq!(c.total().wrong(), 2);
        assert_eq!((c.lines, c.unparsed, c.inconsistent), (11, 1, 0));
        assert_eq!(c.wrong_examples.len(), 2);
        assert!(
            c.wrong_examples[0].contains("the peer"),
            "{:?}",
            c.wrong_examples
        );
        assert_eq!(
            c.by_transition[&(Side::Client, "ESTABLISHED -> CLOSE_WAIT".to_owned())],
            Tally {
                holder: 1,
                unknown: 1,
                peer: 1,
                ..Tally::default()
            }
        );
    }
}
