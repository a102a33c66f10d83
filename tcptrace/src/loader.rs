//! Checks the host can run us, loads the embedded kernel program with its
//! filters and offsets set, and attaches it. Dropping [`Probe`] detaches and
//! unloads everything.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tcptrace_common::{DROPS_SLOT, Filter, Offsets};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

// Capability numbers from linux/capability.h.
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
}

pub struct Probe {
    // Keeps the program and its link alive; dropping it detaches.
    _ebpf: Ebpf,
    /// Taken by the reader.
    pub events: Option<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    pub offsets: Offsets,
}

impl Probe {
    pub fn load(cfg: &ProbeConfig) -> anyhow::Result<Self> {
        check_privileges()?;
        ensure_tracefs()?;
        raise_memlock_rlimit();
        let offsets = if cfg.inodes {
            crate::btf::socket_inode_offsets().context("reading struct offsets from kernel BTF")?
        } else {
            Offsets::NONE
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER", &cfg.filter, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKEUP_BYTES", &cfg.wakeup_bytes, true)
            .map_max_entries("EVENTS", cfg.ring_bytes)
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
        let events = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("map EVENTS missing"))?,
        )
        .context("opening the ring buffer (needs a kernel >= 5.8)")?;
        let drops = PerCpuArray::try_from(
            ebpf.take_map("DROPS")
                .ok_or_else(|| anyhow!("map DROPS missing"))?,
        )?;
        Ok(Self {
            _ebpf: ebpf,
            events: Some(events),
            drops,
            offsets,
        })
    }

    /// Records the kernel could not write because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.drops
            .get(&DROPS_SLOT, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
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
        return Ok(());
    }
    bail!(
        "permission denied: tracing needs root or the capabilities CAP_BPF and CAP_PERFMON (try: sudo tcptrace ...)"
    )
}

/// The tracepoint is found through tracefs; mount it when it is missing.
fn ensure_tracefs() -> anyhow::Result<()> {
    let event = format!("events/{}/{}", TRACEPOINT.0, TRACEPOINT.1);
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
