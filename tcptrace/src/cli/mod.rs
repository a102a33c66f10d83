//! Command line: subcommands, shared filters and the value parsers, each
//! rejecting bad input with one line that says what was wrong.

mod parse;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tcptrace_common::{DEFAULT_RING_BYTES, TcpState};

pub use parse::*;

use crate::{
    model::{event::Family, owner::Comm, selection::Selection, socket_table::DEFAULT_MAX_SOCKETS},
    views::hist::{GroupBy, Handshake},
};

const EXAMPLES: &str = "\
EXAMPLES:
    tcptrace watch                      # every TCP state change, with its owner
    tcptrace watch -T --state CLOSE_WAIT  # only transitions into or out of CLOSE_WAIT
    tcptrace watch -D 61616 --json      # NDJSON for connections to port 61616
    tcptrace watch -p 1234 -4           # IPv4 sockets owned by pid 1234
    tcptrace leaks                      # who holds CLOSE_WAIT sockets, live
    tcptrace leaks --once --json        # one snapshot of existing leaks, as JSON
    tcptrace leaks --check --min-age 5m # exit 3 if a leak is older than 5 minutes
    tcptrace hist                       # time spent in each state and handshake, at Ctrl-C
    tcptrace hist 1 10 --by lport       # ten one-second summaries, per local port
    tcptrace hist --handshake passive-close --json  # passive closes as NDJSON
    tcptrace serve                      # Prometheus metrics at http://127.0.0.1:10180/metrics
    tcptrace serve --listen 0.0.0.0:10180 --top 50  # every interface, for a fleet's Prometheus

EXIT STATUS:
    0 success, 1 runtime or environment error, 2 bad usage, 3 leaks found (leaks --check),
    4 leaks --check cannot tell (sockets of unknown age)";

#[derive(Parser, Debug)]
#[command(
    name = "tcptrace",
    version,
    about = "Trace TCP state transitions with eBPF and name the process that owns each socket",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Show diagnostics, including the kernel program's (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// At the end, write the run's statistics to FILE as one JSON object, for
    /// scripts and benchmarks: events, lost, evicted, undecodable, missed,
    /// dropped, stacks_lost, and measured (hist's dwell times; else null).
    #[arg(long, value_name = "FILE", global = true)]
    pub stats_json: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream every TCP state transition with the time spent in the previous state.
    #[command(after_help = EXAMPLES)]
    Watch(WatchArgs),
    /// Show which processes hold sockets in CLOSE_WAIT, how many, how old, to which peers.
    #[command(after_help = EXAMPLES)]
    Leaks(LeaksArgs),
    /// Log2 histograms of the time spent in each TCP state and handshake (bcc style).
    #[command(after_help = HIST_NOTES)]
    Hist(HistArgs),
    /// Export Prometheus metrics over HTTP: transitions, state durations, CLOSE_WAIT holders.
    #[command(after_help = SERVE_NOTES)]
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write it and one page per
    /// subcommand (tcptrace-watch.1, ...) into DIR, for packages.
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Only sockets owned by this process (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Only sockets whose owner's command name is exactly NAME.
    #[arg(short = 'c', long = "comm", value_name = "NAME")]
    pub comm: Option<String>,
    /// Only these local ports (comma list, e.g. 80,443).
    #[arg(short = 'L', long = "lport", value_name = "PORTS", value_parser = parse_ports)]
    pub lports: Option<PortList>,
    /// Only these remote ports (comma list).
    #[arg(short = 'D', long = "rport", value_name = "PORTS", value_parser = parse_ports)]
    pub rports: Option<PortList>,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TuningArgs {
    /// Ring buffer bytes in all (a power of two, at least 4096), split over
    /// one ring per CPU (up to 8; more CPUs share them), each at least a page.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Most sockets tracked at once; the oldest are evicted (and counted) beyond it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS, value_parser = parse_max_sockets)]
    pub max_sockets: usize,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only transitions into or out of STATE (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    /// Print wall-clock timestamps (HH:MM:SS.micros) instead of seconds since start.
    #[arg(short = 'T', long = "timestamp")]
    pub timestamp: bool,
    /// Stop after this long (e.g. 10, 2.5, 10s, 5m).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON object per line (NDJSON).
    #[arg(long)]
    pub json: bool,
    /// Show the code that opened each socket entering CLOSE_WAIT (the user
    /// stack of the thread that connected or accepted it).
    #[arg(long)]
    pub stacks: bool,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args, Debug)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Group each process's CLOSE_WAIT sockets by the code that opened them
    /// (the user stack of the thread that connected or accepted each one,
    /// for sockets opened while tcptrace runs).
    #[arg(long, conflicts_with_all = ["once", "check"])]
    pub stacks: bool,
    /// Refresh period of the live view.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one snapshot of the sockets that exist now and exit.
    #[arg(long)]
    pub once: bool,
    /// One JSON object per process per refresh.
    #[arg(long)]
    pub json: bool,
    /// Exit 3 when a process holds at least --min-count CLOSE_WAIT sockets older than --min-age.
    #[arg(long)]
    pub check: bool,
    /// Age from which a CLOSE_WAIT socket counts as a leak (e.g. 30s, 5m).
    #[arg(long, value_name = "AGE", default_value = "0", value_parser = parse_duration_or_zero)]
    pub min_age: Duration,
    /// With --check: how many old CLOSE_WAIT sockets make a leak.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_count: u64,
    /// Stop after this long.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

const SERVE_NOTES: &str = "\
ENDPOINTS:
    /metrics   Prometheus text format 0.0.4 (tcptrace_* metrics)
    /healthz   'ok' while the tracer runs
    /          a one-line pointer to /metrics

WEB CONFIGURATION (--web-config FILE):
    The exporter-toolkit's file, as node_exporter's --web.config.file reads it:
      tls_server_config:            # HTTPS; paths are relative to FILE
        cert_file: tls.crt
        key_file: tls.key
        client_ca_file: ca.crt      # with client_auth_type: RequireAndVerifyClientCert (mTLS)
      basic_auth_users:             # user: bcrypt hash (htpasswd -nBC 10 USER)
        prometheus: $2y$10$...
      auth_excluded_paths: [/healthz]
      http_server_config:
        headers: {X-Content-Type-Options: nosniff}
    SIGHUP reads it again; a bad file then keeps the one in force.

LIMITS:
    8 connections per client address (IPv6: per /64), 64 in all; past either an
    idle one is closed, the most crowded address's first. A client has 3 s for its
    TLS handshake and for each request's head.

EXAMPLES:
    tcptrace serve                          # http://127.0.0.1:10180/metrics, this host only
    tcptrace serve --listen 0.0.0.0:10180   # every interface: a fleet's Prometheus scrapes it
    tcptrace serve --listen 0.0.0.0:10180 --web-config /etc/tcptrace/web.yml
    tcptrace serve --listen '[::1]:9999' --top 5 -L 80,443

EXIT STATUS:
    0 stopped by a signal, 1 runtime error (e.g. the port is in use), 2 bad usage (e.g. a bad
    --listen, or a --web-config file that cannot be used)";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where to serve: IP:PORT, IP (port 10180) or PORT (on 127.0.0.1); 0.0.0.0 or :: only when
    /// asked. Port 0 picks a free one, printed at start.
    #[arg(long, value_name = "ADDR", default_value_t = default_listen(), value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Processes named in the per-process CLOSE_WAIT series; the rest are summed under comm="other".
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = parse_top)]
    pub top: usize,
    /// How often the CLOSE_WAIT holders are recomputed (sock_diag and a /proc scan).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_duration)]
    pub interval: Duration,
    /// TLS, basic authentication and headers, from a Prometheus exporter-toolkit web
    /// configuration file (YAML); reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

const HIST_NOTES: &str = "\
HISTOGRAMS:
    state = S          time sockets spent in S, measured when they leave it
    connect.client     SYN_SENT -> ESTABLISHED
    connect.server     SYN_RECV -> ESTABLISHED
    active_close       FIN_WAIT1 -> CLOSE (TIME_WAIT shows as CLOSE)
    passive_close      CLOSE_WAIT -> CLOSE, split into its CLOSE_WAIT part
                       (waiting for the application to close) and its LAST_ACK
                       part (waiting for the last ACK)

EXAMPLES:
    tcptrace hist                          # one summary at Ctrl-C
    tcptrace hist 1 10                     # ten one-second summaries
    tcptrace hist 5 --by process --state CLOSE_WAIT
    tcptrace hist --by lport -L 80,443 --handshake connect
    tcptrace hist 10 --json --exact        # percentiles from every value

EXIT STATUS:
    0 success, 1 runtime or environment error, 2 bad usage";

#[derive(Args, Debug)]
pub struct HistArgs {
    /// Print a summary every INTERVAL (e.g. 1, 2.5, 10s); without it, one summary at Ctrl-C.
    #[arg(value_name = "INTERVAL", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Stop after COUNT summaries.
    #[arg(value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Split every histogram by the socket's owning process, local port, remote port or address.
    #[arg(long, value_name = "KEY", value_enum, ignore_case = true)]
    pub by: Option<GroupBy>,
    /// Show the time spent in STATE (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    /// Show a handshake (repeatable).
    #[arg(
        long = "handshake",
        value_name = "NAME",
        value_enum,
        ignore_case = true
    )]
    pub handshakes: Vec<Handshake>,
    /// One JSON object per histogram per interval (NDJSON).
    #[arg(long)]
    pub json: bool,
    /// Percentiles from every value (HdrHistogram) instead of interpolated from
    /// the buckets; streams each transition to userspace, as watch does.
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FilterArgs {
    pub fn family(&self) -> Option<Family> {
        if self.ipv4 {
            Some(Family::V4)
        } else if self.ipv6 {
            Some(Family::V6)
        } else {
            None
        }
    }

    /// The one selection these flags make, for transitions into or out of `states`.
    pub fn selection(&self, states: &[TcpState]) -> Selection {
        Selection {
            pids: self.pids.clone(),
            comm: self.comm.as_deref().map(|c| Comm::new(c.as_bytes())),
            lports: self.lports.clone().map(|p| p.0).unwrap_or_default(),
            rports: self.rports.clone().map(|p| p.0).unwrap_or_default(),
            family: self.family(),
            states: states.to_vec(),
        }
    }
}
