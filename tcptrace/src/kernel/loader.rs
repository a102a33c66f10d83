//! Checks the host can run us, loads the embedded kernel program with its
//! filters and offsets set, and attaches it. Dropping [`Probe`] detaches and
//! unloads everything.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePoint,
};
use tcptrace_common::{
    AggregateConfig, DROPS_SLOT, EVICTED_SLOT, Filter, GROUP_NONE, GROUP_PROCESS, HIST_FULL_SLOT,
    HIST_MAX_KEYS, HistKey, ListenerOwner, MODE_AGGREGATE, MODE_STREAM, Offsets, SOCKET_WAYS,
    TASK_COMM_LEN, TOTAL_KINDS, TotalHist,
};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

// Capability numbers from linux/capability.h.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub struct ProbeConfig {
    pub filter: Filter,
    pub ring_bytes: u32,
    /// Pending bytes that wake the reader; 0 wakes it on every record.
    pub wakeup_bytes: u64,
    /// Read socket inodes in the kernel (needed to name owners from /proc).
    pub inodes: bool,
    /// `Some`: aggregate histograms in the kernel (hist) instead of streaming
    /// every transition (`None`: watch, leaks).
    pub aggregate: Option<AggregateProbe>,
}

/// The kernel's aggregate mode: what it groups by, and for how many sockets
/// it keeps timestamps (rounded up to a power of two; beyond that the oldest
/// entries make room).
pub struct AggregateProbe {
    pub config: AggregateConfig,
    pub max_sockets: u32,
}

pub struct Probe {
    // Keeps the program and its link alive; dropping it detaches.
    _ebpf: Ebpf,
    /// Taken by the reader.
    pub events: Option<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    pub offsets: Offsets,
    /// The aggregate mode's maps.
    pub aggregate: Option<AggregateMaps>,
    /// The loaded program's fd (owned by `_ebpf`), for its run statistics.
    program_fd: std::os::fd::RawFd,
}

pub struct AggregateMaps {
    /// The histograms when not grouping: per kind and interval parity.
    pub totals: PerCpuArray<MapData, TotalHist>,
    /// The histograms when grouping: one counter per key.
    pub hist: PerCpuHashMap<MapData, HistKey, u64>,
    /// Listening port -> owner; seeded with the listeners that predate the probe.
    pub listen_owners: HashMap<MapData, u16, ListenerOwner>,
    /// Owner tgid -> comm, learnt in process context (grouping by process).
    pub comms: HashMap<MapData, u32, [u8; TASK_COMM_LEN]>,
    /// Transitions per (old, new) state ([`tcptrace_common::transition_index`]).
    pub transitions: PerCpuArray<MapData, u64>,
}

impl Probe {
    pub fn load(cfg: &ProbeConfig) -> anyhow::Result<Self> {
        check_privileges()?;
        ensure_tracefs()?;
        raise_memlock_rlimit();
        check_kernel_features()?;
        let offsets = if cfg.inodes {
            // Without BTF, owners still come from process context, listeners
            // and sock_diag; only the /proc lookup by inode is lost.
            crate::kernel::btf::socket_inode_offsets().unwrap_or_else(|e| {
                eprintln!(
                    "tcptrace: warning: {e:#}; socket owners seen in softirq may be unknown (a kernel with CONFIG_DEBUG_INFO_BTF fixes this)"
                );
                Offsets::NONE
            })
        } else {
            Offsets::NONE
        };
        let (mode, aggregate) = match &cfg.aggregate {
            Some(a) => (
                MODE_AGGREGATE,
                AggregateConfig {
                    socket_sets: socket_entries(a.max_sockets) / SOCKET_WAYS,
                    ..a.config
                },
            ),
            None => (MODE_STREAM, AggregateConfig::NONE),
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global("FILTER", &cfg.filter, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKEUP_BYTES", &cfg.wakeup_bytes, true)
            .override_global("MODE", &mode, true)
            .override_global("AGGREGATE", &aggregate, true);
        for (map, entries) in map_sizes(cfg) {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/tcptrace"
            )))
            .map_err(|e| explain_load_error(&e))?;
        if log::log_enabled!(log::Level::Debug) {
            // Kernel-side diagnostics, shown under -v.
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => spawn_kernel_logger(logger),
                Err(e) => log::debug!("kernel log unavailable: {e}"),
            }
        }
        let program: &mut TracePoint = ebpf
            .program_mut("inet_sock_set_state")
            .ok_or_else(|| anyhow!("kernel program inet_sock_set_state missing from the object"))?
            .try_into()?;
        program.load().map_err(|e| verifier_error(&e))?;
        program.attach(TRACEPOINT.0, TRACEPOINT.1).with_context(|| {
            format!(
                "attaching to tracepoint {}:{} (needs a kernel >= 4.16 with CONFIG_TRACEPOINTS)",
                TRACEPOINT.0, TRACEPOINT.1
            )
        })?;
        let program_fd = {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            program.fd()?.as_fd().as_raw_fd()
        };
        let events = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("map EVENTS missing"))?,
        )
        .context("opening the ring buffer (needs a kernel >= 5.8)")?;
        let drops = PerCpuArray::try_from(
            ebpf.take_map("DROPS")
                .ok_or_else(|| anyhow!("map DROPS missing"))?,
        )?;
        let aggregate = match cfg.aggregate {
            Some(_) => {
                let mut take = |name| {
                    ebpf.take_map(name)
                        .ok_or_else(|| anyhow!("map {name} missing"))
                };
                Some(AggregateMaps {
                    totals: PerCpuArray::try_from(take("TOTALS")?)?,
                    hist: PerCpuHashMap::try_from(take("HIST")?)?,
                    listen_owners: HashMap::try_from(take("LISTEN_OWNERS")?)?,
                    comms: HashMap::try_from(take("COMMS")?)?,
                    transitions: PerCpuArray::try_from(take("TRANSITIONS")?)?,
                })
            }
            None => None,
        };
        Ok(Self {
            _ebpf: ebpf,
            events: Some(events),
            drops,
            offsets,
            aggregate,
            program_fd,
        })
    }

    /// Records the kernel could not write because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.drops
            .get(&DROPS_SLOT, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Runs of the program the kernel skipped because a BPF program (ours or
    /// another tool's) was already running on that CPU, typically a softirq
    /// transition interrupting a process-context one: those transitions are
    /// neither streamed nor counted. The kernel's `recursion_misses` (5.12+),
    /// 0 where it is not reported.
    pub fn missed(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.program_fd))
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Histogram updates the kernel dropped because `HIST` was full.
    pub fn hist_full(&self) -> u64 {
        self.drops
            .get(&HIST_FULL_SLOT, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Sockets whose timestamps the kernel evicted from a full `SOCKETS` set.
    pub fn evicted(&self) -> u64 {
        self.drops
            .get(&EVICTED_SLOT, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// Entries of `SOCKETS` for `max_sockets` sockets: a power of two, whole sets.
fn socket_entries(max_sockets: u32) -> u32 {
    max_sockets.clamp(SOCKET_WAYS, 1 << 30).next_power_of_two()
}

/// Sizes of the maps that depend on the mode: each mode shrinks the maps it
/// never touches to their minimum, as several are preallocated.
fn map_sizes(cfg: &ProbeConfig) -> Vec<(&'static str, u32)> {
    let Some(a) = &cfg.aggregate else {
        return vec![
            ("EVENTS", cfg.ring_bytes),
            ("SOCKETS", SOCKET_WAYS),
            ("LISTEN_OWNERS", 1),
            ("COMMS", 1),
            ("TOTALS", 1),
            ("HIST", 1),
            ("TRANSITIONS", 1),
        ];
    };
    let by = a.config.group_by;
    let owners = by == GROUP_PROCESS || cfg.filter.n_pids != 0 || a.config.has_comm != 0;
    vec![
        // Unless some states are streamed too, the ring buffer stays unused:
        // its smallest size is a page.
        (
            "EVENTS",
            if a.config.stream_states == 0 {
                page_size()
            } else {
                cfg.ring_bytes
            },
        ),
        ("SOCKETS", socket_entries(a.max_sockets)),
        // The stream's pid filter maps.
        ("OWNERS", 1),
        ("LISTENERS", 1),
        ("LISTEN_OWNERS", if owners { 4096 } else { 1 }),
        ("COMMS", if by == GROUP_PROCESS { 16384 } else { 1 }),
        ("TOTALS", if by == GROUP_NONE { TOTAL_KINDS * 2 } else { 1 }),
        ("HIST", if by == GROUP_NONE { 1 } else { HIST_MAX_KEYS }),
    ]
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).unwrap_or(4096)
}

fn explain_load_error(e: &aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") {
        anyhow!(
            "loading the kernel program was refused ({text}): run as root, or grant CAP_BPF and CAP_PERFMON"
        )
    } else {
        anyhow!("loading the kernel program: {text}")
    }
}

/// The verifier's log is pages long: keep its verdict on one line, the
/// whole log under -v.
fn verifier_error(e: &aya::programs::ProgramError) -> anyhow::Error {
    let text = format!("{e:#}");
    log::debug!("verifier log: {text}");
    let verdict = text
        .lines()
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.trim().is_empty())
        .last()
        .unwrap_or("no verifier output");
    anyhow!(
        "the kernel verifier rejected the tracepoint program: {verdict} (run with -v for the full log)"
    )
}

fn spawn_kernel_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the logger owns its buffer's fd for as long as the AsyncFd holds it.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Says which kernel feature is missing before the loader fails obscurely.
fn check_kernel_features() -> anyhow::Result<()> {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{is_map_supported, is_program_supported},
    };
    if !is_program_supported(ProgramType::TracePoint).unwrap_or(false) {
        bail!(
            "this kernel cannot load BPF tracepoint programs (needs CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS)"
        );
    }
    if !is_map_supported(MapType::RingBuf).unwrap_or(false) {
        bail!("this kernel has no BPF ring buffer (needs Linux >= 5.8)");
    }
    Ok(())
}

/// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN implies both on older kernels).
fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| cap_eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        if !(has(CAP_SYS_PTRACE) && has(CAP_DAC_READ_SEARCH)) && unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "tcptrace: warning: without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH the owners of other users' sockets cannot be read from /proc"
            );
        }
        return Ok(());
    }
    bail!(
        "permission denied: tracing needs root or the capabilities CAP_BPF and CAP_PERFMON (try: sudo tcptrace ...)"
    )
}

/// The tracepoint is found through tracefs; mount it when it is missing.
fn ensure_tracefs() -> anyhow::Result<()> {
    let event = format!("events/{}/{}", TRACEPOINT.0, TRACEPOINT.1);
    // tracefs is mode 0700: without root, reading it takes CAP_DAC_READ_SEARCH.
    if let Err(e) = std::fs::read_dir(TRACEFS)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        bail!(
            "cannot read {TRACEFS} (permission denied): run as root or grant CAP_DAC_READ_SEARCH"
        );
    }
    if Path::new(TRACEFS).join(&event).exists() || Path::new(DEBUGFS_TRACING).join(&event).exists()
    {
        return Ok(());
    }
    if !Path::new(TRACEFS).join("events").exists() {
        let rc = unsafe {
            // SAFETY: static NUL-terminated strings.
            libc::mount(
                c"nodev".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            bail!(
                "tracefs is not mounted and mounting it failed ({err}): run `mount -t tracefs nodev {TRACEFS}`"
            );
        }
    }
    if !Path::new(TRACEFS).join(&event).exists() {
        bail!(
            "tracepoint {}:{} not found in {TRACEFS}/events: the kernel needs CONFIG_TRACEPOINTS and version >= 4.16",
            TRACEPOINT.0,
            TRACEPOINT.1
        );
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
