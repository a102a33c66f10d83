//! Command line: subcommands, shared filters and the value parsers, each
//! rejecting bad input with one line that says what was wrong.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tcptrace_common::{
    AF_INET, AF_INET6, DEFAULT_RING_BYTES, Filter, MAX_FILTER_PIDS, MAX_FILTER_PORTS,
};

use crate::{
    model::socket_table::DEFAULT_MAX_SOCKETS,
    model::state::TcpState,
    views::hist::{GroupBy, Handshake, parse_group_by, parse_handshake, parse_interval},
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
    0 success, 1 runtime or environment error, 2 bad usage, 3 leaks found (leaks --check)";

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
    /// Print the man page (roff) to stdout: `tcptrace man > tcptrace.1`.
    #[command(hide = true)]
    Man,
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
    /// Ring buffer size in bytes (a power of two, at least 4096).
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
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args, Debug)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
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

EXAMPLES:
    tcptrace serve                          # http://127.0.0.1:10180/metrics, this host only
    tcptrace serve --listen 0.0.0.0:10180   # every interface: a fleet's Prometheus scrapes it
    tcptrace serve --listen '[::1]:9999' --top 5 -L 80,443

EXIT STATUS:
    0 stopped by a signal, 1 runtime error (e.g. the port is in use), 2 bad usage (e.g. a bad --listen)";

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
    /// Split every histogram by: process, lport, rport or raddr.
    #[arg(long, value_name = "KEY", value_parser = parse_group_by)]
    pub by: Option<GroupBy>,
    /// Show the time spent in STATE (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    /// Show a handshake (repeatable): connect, active-close or passive-close.
    #[arg(long = "handshake", value_name = "NAME", value_parser = parse_handshake)]
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
    pub fn family(&self) -> u16 {
        if self.ipv4 {
            AF_INET
        } else if self.ipv6 {
            AF_INET6
        } else {
            0
        }
    }

    /// The part of the filter the kernel applies, so filtered traffic costs almost nothing.
    pub fn kernel_filter(&self) -> anyhow::Result<Filter> {
        let mut f = Filter::NONE;
        if self.pids.len() > MAX_FILTER_PIDS {
            anyhow::bail!("at most {MAX_FILTER_PIDS} --pid values");
        }
        for (slot, pid) in f.pids.iter_mut().zip(&self.pids) {
            *slot = *pid;
        }
        f.n_pids = self.pids.len() as u16;
        if let Some(PortList(ports)) = &self.lports {
            f.lports[..ports.len()].copy_from_slice(ports);
            f.n_lports = ports.len() as u16;
        }
        if let Some(PortList(ports)) = &self.rports {
            f.rports[..ports.len()].copy_from_slice(ports);
            f.n_rports = ports.len() as u16;
        }
        f.family = self.family();
        Ok(f)
    }
}

pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".into()),
        Ok(p) if p <= 4_194_304 => Ok(p),
        _ => Err(format!("'{s}' is not a process id")),
    }
}

pub fn parse_ports(s: &str) -> Result<PortList, String> {
    let mut ports = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let port: u16 = part
            .parse()
            .map_err(|_| format!("'{part}' is not a port number (1-65535)"))?;
        if port == 0 {
            return Err("port 0 cannot be traced".into());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() > MAX_FILTER_PORTS {
        return Err(format!("at most {MAX_FILTER_PORTS} ports in one list"));
    }
    Ok(PortList(ports))
}

pub fn parse_state(s: &str) -> Result<TcpState, String> {
    s.parse()
}

/// Seconds as a number (`2.5`) or with a unit (`10s`, `5m`, `1h30m`); must be > 0.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err("a duration must be greater than zero".into());
    }
    Ok(d)
}

pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("'{s}' is not a duration"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10, 2.5, 10s, 5m)"))
}

pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "ring size {n} must be a power of two of at least 4096 bytes"
        ));
    }
    Ok(n)
}

pub fn parse_max_sockets(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a positive number of sockets")),
    }
}

/// The metrics port when none is given. 9100-9999, the range of the
/// Prometheus wiki's "Default port allocations", is full; 10180 is clear of
/// Webmin (10000), Zabbix (10050-10051), Amanda (10080-10083) and the kubelet
/// and control plane (10248-10259), which matters under `hostNetwork`.
pub const DEFAULT_SERVE_PORT: u16 = 10180;

pub fn default_listen() -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, DEFAULT_SERVE_PORT).into()
}

/// `127.0.0.1:10180`, `[::1]:10180`, `0.0.0.0` (default port), `10180`
/// (loopback), `localhost[:PORT]`. An address is required: `:PORT` would
/// silently mean every interface.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let t = s.trim();
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' in '{s}' is not a port (0-65535)"))
    };
    if t.is_empty() {
        return Err("an empty --listen address".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((Ipv4Addr::LOCALHOST, port(t)?).into());
    }
    if t.starts_with(':') && !t.starts_with("::") {
        return Err(format!(
            "'{s}' has no address: use 127.0.0.1{t} for this host or 0.0.0.0{t} for every interface"
        ));
    }
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok((ip, DEFAULT_SERVE_PORT).into());
    }
    if let Some(ip) = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<Ipv6Addr>().ok())
    {
        return Ok((ip, DEFAULT_SERVE_PORT).into());
    }
    let (host, p) = match t.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (t, None),
    };
    let p = p.map(port).transpose()?.unwrap_or(DEFAULT_SERVE_PORT);
    if host.eq_ignore_ascii_case("localhost") {
        return Ok((Ipv4Addr::LOCALHOST, p).into());
    }
    Err(format!(
        "'{host}' is not an IP address (e.g. 127.0.0.1:{DEFAULT_SERVE_PORT}, 0.0.0.0:{DEFAULT_SERVE_PORT}, [::1]:{DEFAULT_SERVE_PORT})"
    ))
}

pub fn parse_top(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a number of processes from 1 to 1000")),
    }
}

/// clap's errors are several lines; users and scripts get one.
pub fn one_line_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad usage");
    first.trim_start_matches("error: ").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80,443, 80"), Ok(PortList(vec![80, 443])));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports("80,,81").is_err());
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("").is_err());
        let many: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        assert!(parse_ports(&many.join(",")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        for bad in ["0", "-1", "nan", "inf", "abc", "", "1e300"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn pids_and_sizes() {
        assert_eq!(parse_pid("1234"), Ok(1234));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-3").is_err());
        assert!(parse_pid("99999999").is_err());
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("2048").is_err());
        assert!(parse_max_sockets("0").is_err());
    }

    #[test]
    fn cli_errors_are_one_line() {
        for argv in [
            &["tcptrace", "watch", "-4", "-6"][..],
            &["tcptrace", "watch", "--state", "CLOSE_WAT"],
            &["tcptrace", "watch", "-L", "80,x"],
            &["tcptrace", "watch", "--duration", "soon"],
            &["tcptrace", "bogus"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
            let line = one_line_error(&err);
            assert!(!line.is_empty() && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn listen_addresses() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:9999"), "127.0.0.1:9999");
        assert_eq!(ok("0.0.0.0"), "0.0.0.0:10180");
        assert_eq!(ok("9999"), "127.0.0.1:9999");
        assert_eq!(ok("0"), "127.0.0.1:0");
        assert_eq!(ok("[::1]:9999"), "[::1]:9999");
        assert_eq!(ok("::"), "[::]:10180");
        assert_eq!(ok("[::1]"), "[::1]:10180");
        assert_eq!(ok("localhost"), "127.0.0.1:10180");
        assert_eq!(ok("LOCALHOST:81"), "127.0.0.1:81");
        for bad in [
            "",
            ":9999",
            "300.1.1.1:80",
            "127.0.0.1:99999",
            "127.0.0.1:http",
            "example.com:80",
            "foo",
            "[::1]:x",
            "1.2.3.4:",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        assert!(parse_listen(":9999").unwrap_err().contains("0.0.0.0:9999"));
        let cli = Cli::try_parse_from(["tcptrace", "serve"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(a.listen, default_listen());
        assert_eq!((a.top, a.interval), (20, Duration::from_secs(5)));
        assert!(parse_top("0").is_err() && parse_top("1001").is_err());
    }

    #[test]
    fn kernel_filter_carries_the_flags() {
        let cli = Cli::try_parse_from([
            "tcptrace", "watch", "-p", "7", "-L", "80,443", "-D", "61616", "-6",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("not watch")
        };
        let f = w.filter.kernel_filter().unwrap();
        assert_eq!((f.n_pids, f.pids[0]), (1, 7));
        assert_eq!((f.n_lports, &f.lports[..2]), (2, &[80, 443][..]));
        assert_eq!((f.n_rports, f.rports[0]), (1, 61616));
        assert_eq!(f.family, AF_INET6);
    }
}
