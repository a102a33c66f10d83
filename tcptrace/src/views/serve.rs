//! `tcptrace serve`: a Prometheus exporter. The kernel counts and times every
//! transition (aggregate mode, as `hist`), and streams only CLOSE_WAIT's
//! comings and goings; [`ServeSink`] copies the kernel's figures, sock_diag's
//! sockets per state and the CLOSE_WAIT holders into the metrics (see
//! [`crate::views::metrics`]) on ticks, and an HTTP/1.1 server answers `/metrics`,
//! `/healthz` and `/`.
//!
//! The server has a thread of its own: in a connection storm the tracer's
//! loop can stay busy draining the ring buffer for seconds, and a scrape or
//! a liveness probe must not time out then (measured: 10 s without it).

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    fs, io,
    net::SocketAddr,
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use tcptrace_common::transition_index;

use crate::{
    host::sockdiag,
    kernel::loader::AggregateMaps,
    model::clock::{Clock, monotonic_ns},
    model::socket_table::{Socket, SocketTable},
    model::state::TcpState,
    pipeline::tracer::{Context, Sink, Transition},
    views::hist::total_entry,
    views::leaks::{Collector, LeakFilter, LeakSocket, ProcessLeaks, group},
    views::metrics::{
        self, Exposition, Handshake, KernelHist, KernelSnapshot, Metrics, SOCKET_STATES,
    },
};

/// How often the kernel's figures and the socket gauges are refreshed.
const SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);
/// The sockets-per-state dump costs in proportion to the host's sockets: it
/// runs at most once per this many times its own duration (1% of a CPU).
const DUMP_DUTY: u32 = 100;
/// Scrapers hold one connection each; more than this is not a scraper.
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const TEXT: &str = "text/plain; charset=utf-8";
const ROOT_TEXT: &str = "tcptrace exporter: metrics at /metrics, health at /healthz\n";

/// Binds the metrics port, with a one-line reason when it cannot.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::AddrInUse => {
                "the port is in use (another exporter, or tcptrace serve already running?); choose another with --listen".to_owned()
            }
            io::ErrorKind::AddrNotAvailable => "no local interface has this address".to_owned(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_owned()
            }
            _ => e.to_string(),
        };
        anyhow!("cannot listen on {addr}: {why}")
    })
}

/// Serves the metrics from a thread of its own (with its own small runtime);
/// returns the address actually bound (port 0 picks a free one).
pub fn spawn_http(
    listener: std::net::TcpListener,
    exposition: Exposition,
) -> io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tcptrace-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, Arc::new(exposition)).await,
                    Err(e) => eprintln!("tcptrace: warning: serving metrics: {e}"),
                }
            });
        })?;
    Ok(addr)
}

async fn accept_loop(listener: tokio::net::TcpListener, exposition: Arc<Exposition>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            log::debug!("more than {MAX_CONNECTIONS} metrics connections: closing a new one");
            continue;
        }
        let guard = Open::new(&open);
        let exposition = exposition.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&exposition, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let result = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}

/// Counts a connection while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// GET (or HEAD) `/metrics`, `/healthz` and `/`; 404 elsewhere, 405 for other methods.
pub fn respond(exposition: &Exposition, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if !matches!(path, "/" | "/metrics" | "/healthz") {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: metrics are at /metrics\n",
        );
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => match exposition.render() {
            Ok(body) => reply(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("encoding metrics: {e}\n"),
            ),
        },
        // The tracer runs in this process, which exits when it stops.
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        _ => reply(StatusCode::OK, TEXT, ROOT_TEXT),
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Which sockets `tcptrace_sockets` counts: the port and family filters
/// (the table also holds sockets found at start, which the kernel filter never saw).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub family: Option<u16>,
}

impl Scope {
    pub fn keeps(&self, s: &Socket) -> bool {
        self.keeps_ports(s.tuple.lport, s.tuple.rport, s.family.af())
    }

    pub fn keeps_ports(&self, lport: u16, rport: u16, family: u16) -> bool {
        (self.lports.is_empty() || self.lports.contains(&lport))
            && (self.rports.is_empty() || self.rports.contains(&rport))
            && self.family.is_none_or(|f| f == family)
    }
}

pub struct ServeOptions {
    /// Processes named in the per-process series; the rest are "other".
    pub top: usize,
    /// How often the CLOSE_WAIT rows are recomputed (sock_diag + /proc scan).
    pub interval: Duration,
    pub leak_filter: LeakFilter,
    pub scope: Scope,
}

/// Feeds the metrics from the trace: transitions as they come, snapshots on ticks.
pub struct ServeSink {
    metrics: Metrics,
    /// The kernel's counters and histograms.
    maps: AggregateMaps,
    collector: Collector,
    /// Holders of the CLOSE_WAIT sockets sock_diag cannot list.
    opts: ServeOptions,
    last_snapshot: Option<Instant>,
    /// When the sockets per state were last dumped, and how long it took.
    last_dump: Option<(Instant, Duration)>,
    last_rows: Option<Instant>,
    bpf_run_time_ns: Option<u64>,
    warned: bool,
}

impl ServeSink {
    /// The sink and what to serve.
    pub fn new(opts: ServeOptions, maps: AggregateMaps) -> (Self, Exposition) {
        let (metrics, exposition) = Metrics::new();
        let sink = Self {
            metrics,
            maps,
            collector: Collector::new(opts.leak_filter.clone()),
            opts,
            last_snapshot: None,
            last_dump: None,
            last_rows: None,
            bpf_run_time_ns: None,
            warned: false,
        };
        (sink, exposition)
    }

    fn refresh_rows(&mut self, ctx: &Context<'_>) {
        let now_ns = monotonic_ns();
        match self.collector.collect(ctx.table, now_ns) {
            Ok(mut rows) => {
                self.add_unlisted(&mut rows, ctx.table, now_ns);
                self.metrics.set_close_wait(&rows, self.opts.top);
            }
            // Keep the last rows: a gap would reset alerts' `for:` clocks.
            Err(e) if !self.warned => {
                eprintln!("tcptrace: warning: listing CLOSE_WAIT sockets: {e:#}");
                self.warned = true;
            }
            Err(e) => log::debug!("listing CLOSE_WAIT sockets: {e:#}"),
        }
    }
}

impl ServeSink {
    /// Adds the sockets the tracer saw enter CLOSE_WAIT that the sock_diag
    /// dump did not list: those in other network namespaces (containers), which
    /// a dump in tcptrace's own namespace cannot see. The tracepoint sees every
    /// namespace and /proc names the holders. (Sockets already in CLOSE_WAIT
    /// in another namespace when tcptrace started stay unseen.)
    fn add_unlisted(&mut self, rows: &mut Vec<ProcessLeaks>, table: &SocketTable, now_ns: u64) {
        let listed: HashSet<u64> = rows
            .iter()
            .flat_map(|r| r.sockets.iter().map(|s| s.inode))
            .collect();
        // The collector has just rescanned /proc: its index is fresh.
        let (scope, collector) = (&self.opts.scope, &self.collector);
        let unlisted: Vec<LeakSocket> = table
            .iter()
            .map(|(_, s)| s)
            .filter(|s| {
                s.state == TcpState::CloseWait
                    && s.inode != 0
                    && !listed.contains(&s.inode)
                    && scope.keeps(s)
            })
            .filter_map(|s| {
                let holders = collector.holders(s.inode);
                // No holder: it closed since the dump; not a leak.
                (!holders.is_empty()).then(|| LeakSocket {
                    tuple: s.tuple,
                    inode: s.inode,
                    age: Duration::from_nanos(now_ns.saturating_sub(s.since_ns)),
                    age_estimated: s.since_estimated,
                    server_side: false,
                    holders,
                })
            })
            .collect();
        if unlisted.is_empty() {
            return;
        }
        let filter = &self.opts.leak_filter;
        for mut new in group(unlisted) {
            if !filter.process_passes(&new) {
                continue;
            }
            match rows
                .iter_mut()
                .find(|r| (r.pid, r.start_time) == (new.pid, new.start_time))
            {
                Some(row) => {
                    row.sockets.append(&mut new.sockets);
                    row.sockets.sort_by_key(|s| std::cmp::Reverse(s.age));
                }
                None => {
                    new.fill_process_facts();
                    rows.push(new);
                }
            }
        }
        // Worst first, as `leaks::group` orders them.
        rows.sort_by(|a, b| {
            b.sockets
                .len()
                .cmp(&a.sockets.len())
                .then_with(|| b.oldest().map(|s| s.age).cmp(&a.oldest().map(|s| s.age)))
                .then(a.pid.cmp(&b.pid))
        });
    }
}

fn due(last: Option<Instant>, period: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= period)
}

impl ServeSink {
    /// Sockets per state from sock_diag, within the port and family filters,
    /// unless the last dump was too recent for its cost.
    fn refresh_sockets(&mut self, now: Instant) {
        if let Some((at, took)) = self.last_dump
            && now.duration_since(at) < took.saturating_mul(DUMP_DUTY)
        {
            return;
        }
        let states = u32::from(TcpState::mask(&SOCKET_STATES));
        let started = Instant::now();
        match sockdiag::dump_tcp(states, self.opts.scope.family) {
            Ok(dump) => {
                let mut counts = [0i64; metrics::STATES];
                for d in dump
                    .iter()
                    .filter(|d| self.opts.scope.keeps_ports(d.sport, d.dport, d.family))
                {
                    if let Some(n) = counts.get_mut(usize::from(d.state)) {
                        *n += 1;
                    }
                }
                self.metrics.set_sockets(&counts);
            }
            Err(e) => log::warn!("sock_diag dump of sockets per state: {e:#}"),
        }
        self.last_dump = Some((now, started.elapsed()));
    }
}

/// What the kernel has counted since it was attached.
fn read_kernel(maps: &AggregateMaps) -> anyhow::Result<KernelSnapshot> {
    let mut snapshot = KernelSnapshot::default();
    for old in TcpState::ALL {
        for new in TcpState::ALL {
            let per_cpu = maps
                .transitions
                .get(&transition_index(old as u8, new as u8), 0)?;
            let n: u64 = per_cpu.iter().sum();
            if n > 0 {
                snapshot.transitions.push((old, new, n));
            }
        }
    }
    // Interval 0 never ends: serve's histograms are cumulative.
    let all = 0..=u64::MAX;
    let hist = |kind: u8| -> anyhow::Result<Option<KernelHist>> {
        let Some(index) = tcptrace_common::total_index(kind, 0) else {
            return Ok(None);
        };
        Ok(total_entry(&maps.totals, index, &all)?.map(|t| KernelHist {
            buckets: t.buckets,
            sum_ns: t.sum_ns,
        }))
    };
    for state in TcpState::ALL {
        if let Some(h) = hist(state as u8)? {
            snapshot.states.push((state, h));
        }
    }
    for handshake in Handshake::ALL {
        let h = hist(handshake.kernel_kind())?.unwrap_or_default();
        snapshot.handshakes.push((handshake, h));
    }
    Ok(snapshot)
}

impl Sink for ServeSink {
    /// The streamed transitions (CLOSE_WAIT's) only feed the socket table.
    fn transition(&mut self, _t: &Transition<'_>, _clock: &Clock) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Context<'_>) -> io::Result<ControlFlow<()>> {
        let now = Instant::now();
        if due(self.last_snapshot, SNAPSHOT_PERIOD, now) {
            self.last_snapshot = Some(now);
            self.bpf_run_time_ns = bpf_run_time_ns();
            match read_kernel(&self.maps) {
                Ok(snapshot) => self.metrics.set_kernel(snapshot),
                Err(e) => log::warn!("reading the kernel's counters: {e:#}"),
            }
            self.refresh_sockets(now);
        }
        // Every tick, so events_total keeps up with transitions_total.
        self.metrics.set_own(ctx.stats, self.bpf_run_time_ns);
        if due(self.last_rows, self.opts.interval, now) {
            self.last_rows = Some(now);
            self.refresh_rows(ctx);
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Total `run_time_ns` of this process's BPF programs, or `None` while the
/// kernel has never timed them: statistics are on with the sysctl
/// `kernel.bpf_stats_enabled=1` or while any process holds a
/// `BPF_ENABLE_STATS` fd (which the sysctl does not show), so a program that
/// has run under statistics (`run_cnt` > 0) counts too. Read from
/// /proc/self/fdinfo of our own program fds: the counters aya's
/// `ProgramInfo` reads, without reaching into the loader, and never another
/// tool's programs.
pub fn bpf_run_time_ns() -> Option<u64> {
    let sysctl_on =
        fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1");
    let mut by_prog: HashMap<u64, (u64, u64)> = HashMap::new();
    for entry in fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let is_prog =
            fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fdinfo = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(fdinfo) else {
            continue;
        };
        if let (Some(id), Some(ns), Some(runs)) = (
            fdinfo_field(&text, "prog_id"),
            fdinfo_field(&text, "run_time_ns"),
            fdinfo_field(&text, "run_cnt"),
        ) {
            // Several fds can name one program.
            by_prog.insert(id, (ns, runs));
        }
    }
    let timed = by_prog.values().any(|(_, runs)| *runs > 0);
    (!by_prog.is_empty() && (sysctl_on || timed)).then(|| by_prog.values().map(|(ns, _)| ns).sum())
}

/// A `key:\tvalue` number from an fdinfo file.
pub fn fdinfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::{kernel::decode::Family, model::socket_table::Tuple};

    fn body(r: Response<Full<Bytes>>) -> (StatusCode, String, String) {
        let status = r.status();
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let bytes = futures_body(r.into_body());
        (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn futures_body(b: Full<Bytes>) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { b.collect().await.unwrap().to_bytes() })
    }

    #[test]
    fn routes_methods_and_content_types() {
        let (_m, reg) = Metrics::new();
        let (s, ct, text) = body(respond(&reg, &Method::GET, "/metrics"));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(text.contains("tcptrace_build_info"), "{text}");
        let (s, _, text) = body(respond(&reg, &Method::GET, "/"));
        assert_eq!((s, text.lines().count()), (StatusCode::OK, 1));
        assert_eq!(body(respond(&reg, &Method::GET, "/healthz")).2, "ok\n");
        assert_eq!(
            respond(&reg, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        let r = respond(&reg, &Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        assert_eq!(
            respond(&reg, &Method::HEAD, "/metrics").status(),
            StatusCode::OK
        );
    }

    #[test]
    fn fdinfo_numbers() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t42\nrun_time_ns:\t1234\nrun_cnt:\t7\n";
        assert_eq!(fdinfo_field(text, "prog_id"), Some(42));
        assert_eq!(fdinfo_field(text, "run_time_ns"), Some(1234));
        assert_eq!(fdinfo_field(text, "run_cnt"), Some(7));
        assert_eq!(fdinfo_field(text, "missing"), None);
        assert_eq!(fdinfo_field("run_time_ns:\tx\n", "run_time_ns"), None);
    }

    #[test]
    fn scope_applies_ports_and_family() {
        let s = Socket {
            state: TcpState::Established,
            since_ns: 0,
            since_estimated: false,
            family: Family::V4,
            tuple: Tuple {
                laddr: Ipv4Addr::LOCALHOST.into(),
                lport: 80,
                raddr: Ipv4Addr::LOCALHOST.into(),
                rport: 5000,
            },
            inode: 0,
            owner: None,
        };
        assert!(Scope::default().keeps(&s));
        let only = |lports: &[u16], rports: &[u16], family| Scope {
            lports: lports.to_vec(),
            rports: rports.to_vec(),
            family,
        };
        assert!(only(&[80], &[], None).keeps(&s));
        assert!(!only(&[81], &[], None).keeps(&s));
        assert!(!only(&[], &[80], None).keeps(&s));
        assert!(!only(&[], &[], Some(tcptrace_common::AF_INET6)).keeps(&s));
    }

    #[test]
    fn a_busy_port_is_one_line() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(l.local_addr().unwrap()).unwrap_err().to_string();
        assert!(err.contains("in use") && !err.contains('\n'), "{err}");
    }
}
