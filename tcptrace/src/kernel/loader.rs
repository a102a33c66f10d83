//! Checks the host can run us, loads the embedded kernel program with its
//! configuration and the running kernel's layout set, and attaches it.
//! Dropping [`Probe`] detaches and unloads everything.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{TracePoint, trace_point::TracePointLink},
};
use tcptrace_common::{
    Config, DROPS_SLOT, EVICTED_SLOT, GROUP_NONE, GROUP_PROCESS, HIST_FULL_SLOT, HIST_MAX_KEYS,
    INET_SOCK_SET_STATE_FIELDS, KernelLayout, KnownOwner, ListenKey, MODE_AGGREGATE,
    OWNERS_BY_INODE, OWNERS_TRACK, RINGS, RecordLayout, SOCKET_WAYS, STACKS_CALLER,
    STACKS_LOST_SLOT, STACKS_ON, TOTAL_KINDS, TRANSITION_SLOTS,
};

use crate::{
    host::sys,
    kernel::{
        layout,
        maps::AggregateMaps,
        refusals::{
            PERF_EVENT_PARANOID, check_kernel_features, check_privileges, explain_load_error,
            paranoid_refusal, verifier_error,
        },
        tracefs,
    },
};

/// The `accept()` exits whose sockets get the accepting process as owner.
const ACCEPT_EXITS: [(&str, &str, &str); 2] = [
    ("sys_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("sys_exit_accept", "syscalls", "sys_exit_accept"),
];

/// Batch wake-ups: the reader drains every tick anyway, so a wake-up only
/// guards against a ring filling between ticks: a storm wakes us once a
/// sixteenth of a ring is pending. Each wake-up is a self-IPI from the
/// program (a VM exit here), so waking less often costs the program less;
/// but a reader that rarely wakes lets the vCPUs halt, and the traced load
/// pays for waking a halted vCPU. `watch --json` under nginx + wrk, Intel
/// host, 3 alternating rounds, 2 MiB rings (untraced 39.9k conns/s, the
/// bpftrace counter 0.921 of it at 80 ns/event): woken at a quarter,
/// 227 ns/event and 0.860 of the untraced throughput; a sixteenth, 236 ns
/// and 0.899; a 32nd, 245 ns and 0.914; a 64th, 263 ns and 0.918. Tracer
/// CPU was 0.13-0.14 µs/event in each. The other side, measured on an AMD host
/// with one shared 4 MiB ring: waking at 64 KiB, the wake-ups were a third
/// of `bpf_ringbuf_submit`'s time in watch's profile.
const WAKEUP_FRACTION: u64 = 16;

/// The ring buffers' map names; CPU n writes to `RING_MAPS[n % RINGS]`.
const RING_MAPS: [&str; RINGS as usize] = [
    "EVENTS_0", "EVENTS_1", "EVENTS_2", "EVENTS_3", "EVENTS_4", "EVENTS_5", "EVENTS_6", "EVENTS_7",
];

pub struct ProbeConfig {
    /// What the program does; the loader fills in `layout`, `socket_sets`
    /// and `wakeup_bytes`.
    pub config: Config,
    /// The ring buffers' bytes together, split over the rings CPUs write to.
    pub ring_bytes: u32,
    /// Sockets `SOCKETS` keeps entries for (rounded up to a power of two;
    /// beyond that the oldest entries make room, counted).
    pub max_sockets: u32,
    /// Aggregate mode: count transitions per (old, new) state in
    /// `TRANSITIONS` (serve's `tcptrace_transitions_total`). Without, the
    /// map has one entry that no transition's index reaches: the program
    /// touches no counter line for it (12 ns per event of `hist`'s 200).
    pub transitions: bool,
}

impl ProbeConfig {
    fn aggregate(&self) -> bool {
        self.config.mode == MODE_AGGREGATE
    }

    fn owners(&self) -> bool {
        self.config.owners & OWNERS_TRACK != 0
    }

    fn stacks(&self) -> bool {
        self.config.stacks & STACKS_ON != 0
    }
}

/// Distinct user stacks `STACKS` keeps (its buckets; a stack whose bucket
/// is taken is lost, and counted).
const STACK_BUCKETS: u32 = 16384;

pub struct Probe {
    // Keeps the programs and the maps not taken out alive.
    _ebpf: Ebpf,
    /// The attachments, apart from the programs so that [`Probe::detach`]
    /// can stop them while their statistics stay readable.
    links: Vec<TracePointLink>,
    /// The rings some CPU writes to; taken by the reader.
    pub events: Vec<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    /// The aggregate mode's maps.
    pub aggregate: Option<AggregateMaps>,
    /// Where owners are seeded, when they are tracked.
    pub owners: Option<OwnerMaps>,
    /// The user stacks that opened sockets, with stacks on.
    pub stacks: Option<StackTraceMap<MapData>>,
    /// The loaded programs' fds (owned by `_ebpf`), for their statistics.
    program_fds: Vec<RawFd>,
    /// When the state-change program was attached: nothing is counted
    /// before (loading and verifying can take seconds on a slow machine).
    pub attached: std::time::Instant,
}

/// The maps userspace fills with what it found at start.
pub struct OwnerMaps {
    /// Listening port per network namespace -> owner.
    pub listeners: HashMap<MapData, ListenKey, KnownOwner>,
    /// Socket inode -> a holder (with [`OWNERS_BY_INODE`]).
    pub inodes: Option<HashMap<MapData, u64, KnownOwner>>,
    /// How many sockets `inodes` takes: one entry more is kept for the
    /// mark that seeding is complete, which must fit when the sockets do not.
    pub inode_room: usize,
}

impl Probe {
    pub fn load(cfg: &ProbeConfig) -> anyhow::Result<Self> {
        check_privileges()?;
        tracefs::ensure_mounted()?;
        let (record, moved) = record_layout(cfg.owners() || cfg.stacks())?;
        let memlock = sys::raise_memlock_rlimit().err();
        if let Some(e) = &memlock {
            log::debug!("could not raise RLIMIT_MEMLOCK ({e}); fine on kernels >= 5.11");
        }
        check_kernel_features()?;
        let mut config = cfg.config;
        config.record = record;
        config.layout =
            kernel_layout(cfg.owners() || cfg.stacks() || config.filter.inode_states != 0);
        config.socket_sets = socket_entries(cfg.max_sockets) / SOCKET_WAYS;
        let rings = RingSplit::of(cfg.ring_bytes, possible_cpus()?, sys::page_size());
        config.wakeup_bytes = u64::from(rings.bytes) / WAKEUP_FRACTION;
        if cfg.stacks() {
            config.stacks |= stack_callers(&config.layout);
        }
        let mut loader = EbpfLoader::new();
        loader.override_global("CONFIG", &config, true);
        for (map, entries) in map_sizes(cfg, &rings) {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/tcptrace"
            )))
            .map_err(|e| explain_load_error(&e, memlock.as_ref()))?;
        if log::log_enabled!(log::Level::Debug) {
            // Kernel-side diagnostics, shown under -v.
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => spawn_kernel_logger(logger),
                Err(e) => log::debug!("kernel log unavailable: {e}"),
            }
        }
        let (mut program_fds, mut links) = (Vec::new(), Vec::new());
        if cfg.owners() || cfg.stacks() {
            attach_accept_exits(&mut ebpf, &config, moved, &mut program_fds, &mut links)?;
        }
        let (fd, link) = attach(
            &mut ebpf,
            if moved {
                "inet_sock_set_state_moved"
            } else {
                "inet_sock_set_state"
            },
            tracefs::STATE_CHANGE,
        )?;
        program_fds.push(fd);
        links.push(link);
        let attached = std::time::Instant::now();
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the kernel program"))
        };
        let events = RING_MAPS[..rings.used as usize]
            .iter()
            .map(|name| {
                RingBuf::try_from(take(name)?)
                    .context("opening the ring buffer (needs a kernel >= 5.8)")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let drops = PerCpuArray::try_from(take("DROPS")?)?;
        let aggregate = if cfg.aggregate() {
            Some(AggregateMaps {
                totals: PerCpuArray::try_from(take("TOTALS")?)?,
                hist: aya::maps::PerCpuHashMap::try_from(take("HIST")?)?,
                comms: HashMap::try_from(take("COMMS")?)?,
                transitions: PerCpuArray::try_from(take("TRANSITIONS")?)?,
            })
        } else {
            None
        };
        let owners = if cfg.owners() {
            Some(OwnerMaps {
                listeners: HashMap::try_from(take("LISTEN_OWNERS")?)?,
                inodes: if cfg.config.owners & OWNERS_BY_INODE != 0 {
                    Some(HashMap::try_from(take("INODE_OWNERS")?)?)
                } else {
                    None
                },
                inode_room: cfg.max_sockets as usize,
            })
        } else {
            None
        };
        let stacks = if cfg.stacks() {
            Some(StackTraceMap::try_from(take("STACKS")?)?)
        } else {
            None
        };
        Ok(Self {
            _ebpf: ebpf,
            links,
            events,
            drops,
            aggregate,
            owners,
            stacks,
            program_fds,
            attached,
        })
    }

    /// Stops every program, and returns once none is still running: from
    /// then on the rings hold every record the programs will ever write,
    /// committed. Their statistics stay readable (the programs stay loaded).
    pub fn detach(&mut self) {
        self.links.clear();
        // A run that saw the attachment before it went is inside an RCU
        // read-side section (trace_call_bpf's), so one grace period later it
        // has committed its record.
        if let Err(e) = sys::synchronize_rcu() {
            log::debug!("membarrier: {e}; waiting 50 ms for the last runs instead");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn drops(&self, slot: u32) -> u64 {
        self.drops
            .get(&slot, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Records the kernel could not write because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.drops(DROPS_SLOT)
    }

    /// Histogram updates the kernel dropped because `HIST` was full.
    pub fn hist_full(&self) -> u64 {
        self.drops(HIST_FULL_SLOT)
    }

    /// Sockets whose entry the kernel evicted from a full `SOCKETS` set.
    pub fn evicted(&self) -> u64 {
        self.drops(EVICTED_SLOT)
    }

    /// User stacks the kernel could not keep.
    pub fn stacks_lost(&self) -> u64 {
        self.drops(STACKS_LOST_SLOT)
    }

    /// Runs of the programs the kernel skipped because a BPF program (ours or
    /// another tool's) was already running on that CPU, typically a softirq
    /// transition interrupting a process-context one: those transitions are
    /// neither streamed nor counted. The kernel's `recursion_misses` (5.12+),
    /// 0 where it is not reported.
    pub fn missed(&self) -> u64 {
        self.program_fds
            .iter()
            .filter_map(|fd| fdinfo_field(*fd, "recursion_misses"))
            .sum()
    }

    /// CPU time in our programs, when the kernel's BPF statistics are on
    /// (`sysctl kernel.bpf_stats_enabled=1`, or any process holding a
    /// `BPF_ENABLE_STATS` fd): `None` while they have never been timed.
    pub fn run_time_ns(&self) -> Option<u64> {
        let (mut ns, mut runs) = (0, 0);
        for fd in &self.program_fds {
            ns += fdinfo_field(*fd, "run_time_ns")?;
            runs += fdinfo_field(*fd, "run_cnt")?;
        }
        let on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|s| s.trim() == "1");
        (on || runs > 0).then_some(ns)
    }
}

/// A `key:\tvalue` number from an fdinfo file.
pub fn parse_fdinfo(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

fn fdinfo_field(fd: RawFd, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_fdinfo(&text, key)
}

/// Loads and attaches one tracepoint program; returns its fd and the attachment.
fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    (group, name): (&str, &str),
) -> anyhow::Result<(RawFd, TracePointLink)> {
    let p: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("kernel program {program} missing from the object"))?
        .try_into()?;
    // The moved-record programs serve both accept exits: loaded once.
    if p.fd().is_err() {
        p.load().map_err(|e| verifier_error(program, &e))?;
        // How close the verifier came to its limit (1,000,000 instructions,
        // and minutes on a slow machine long before): kernels >= 5.16 say.
        if let Some(n) = p.info().ok().and_then(|i| i.verified_instruction_count()) {
            log::debug!("{program}: the verifier checked {n} instructions");
        }
    }
    let link = p.attach(group, name).map_err(|e| {
        paranoid_refusal(&e, group, name).unwrap_or_else(|| {
            anyhow::Error::new(e).context(format!(
                "attaching to tracepoint {group}:{name} (needs a kernel >= 4.16 with CONFIG_TRACEPOINTS)"
            ))
        })
    })?;
    let link = p.take_link(link)?;
    Ok((p.fd()?.as_fd().as_raw_fd(), link))
}

/// The `accept()` exits, so that accepted sockets are owned by the process
/// that accepted them. Missing syscall tracepoints cost precision, not the
/// trace: the owner then stays the listener's until the socket's next
/// transition in process context, and a warning says so.
fn attach_accept_exits(
    ebpf: &mut Ebpf,
    config: &Config,
    moved: bool,
    fds: &mut Vec<RawFd>,
    links: &mut Vec<TracePointLink>,
) -> anyhow::Result<()> {
    if config.layout.socket_sk == KernelLayout::UNKNOWN {
        return Ok(()); // kernel_layout warned already.
    }
    let ret_at = config.record.sys_exit_ret;
    for (program, group, name) in ACCEPT_EXITS {
        let attached = tracefs::format((group, name))
            .and_then(|f| match tracefs::sys_exit_ret_offset(&f)? {
                at if at == ret_at => Ok(()),
                at => {
                    anyhow::bail!("ret is at offset {at}, not at {ret_at} as in sys_exit_accept4")
                }
            })
            .and_then(|()| {
                let program = if moved {
                    "sys_exit_accept_moved"
                } else {
                    program
                };
                attach(ebpf, program, (group, name))
            });
        match attached {
            Ok((fd, link)) => {
                links.push(link);
                if !fds.contains(&fd) {
                    fds.push(fd);
                }
            }
            // The state change's tracepoint would be refused the same way:
            // one line, not two warnings and then that line.
            Err(e) if format!("{e}").contains(PERF_EVENT_PARANOID) => return Err(e),
            Err(e) => eprintln!(
                "tcptrace: warning: {group}:{name}: {e:#}; sockets accepted meanwhile are shown with their listener's owner"
            ),
        }
    }
    Ok(())
}

/// Set to read every tracepoint record through a copy at the offsets of the
/// running kernel's `format` files, as on a kernel that moved a field: how
/// the tests run that path on kernels that moved none.
const COPY_RECORDS_ENV: &str = "TCPTRACE_COPY_RECORDS";

/// Where the running kernel's tracepoint records hold what the programs
/// read, and whether any field moved: then the `*_moved` programs copy each
/// record to read it at the offsets found, which costs a helper call per
/// event and says so.
fn record_layout(accept_exits: bool) -> anyhow::Result<(RecordLayout, bool)> {
    let mut record = RecordLayout::COMPILED;
    record.state_change = tracefs::state_change_offsets(&tracefs::format(tracefs::STATE_CHANGE)?)?;
    if accept_exits {
        // An unreadable or odd format is refused, with its warning, at attach.
        let (_, group, name) = ACCEPT_EXITS[0];
        if let Ok(at) =
            tracefs::format((group, name)).and_then(|f| tracefs::sys_exit_ret_offset(&f))
        {
            record.sys_exit_ret = at;
        }
    }
    let moved: Vec<String> = INET_SOCK_SET_STATE_FIELDS
        .iter()
        .zip(record.state_change)
        .filter(|((_, compiled, _), at)| usize::from(*at) != *compiled)
        .map(|((name, compiled, _), at)| format!("{name} at {at} (built for {compiled})"))
        .chain(
            (record.sys_exit_ret != RecordLayout::COMPILED.sys_exit_ret).then(|| {
                format!(
                    "the accept exits' ret at {} (built for {})",
                    record.sys_exit_ret,
                    RecordLayout::COMPILED.sys_exit_ret
                )
            }),
        )
        .collect();
    let forced = std::env::var_os(COPY_RECORDS_ENV).is_some_and(|v| v == "1");
    let copied = !moved.is_empty() || forced;
    if copied {
        let why = if moved.is_empty() {
            format!("{COPY_RECORDS_ENV}=1")
        } else {
            format!("this kernel's records put {}", moved.join(", "))
        };
        eprintln!(
            "tcptrace: note: {why}: each record is copied to be read (one bpf_probe_read_kernel per event, 50-150 ns more)"
        );
    }
    Ok((record, copied))
}

/// The running kernel's layout. Without BTF (or a member), what needs it
/// is lost, and a warning says what.
fn kernel_layout(needed: bool) -> KernelLayout {
    if !needed {
        return KernelLayout::NONE;
    }
    match layout::kernel_layout() {
        Ok((layout, missing)) => {
            for m in missing {
                eprintln!("tcptrace: warning: not found in the kernel's BTF, for {m}");
            }
            layout
        }
        Err(e) => {
            eprintln!(
                "tcptrace: warning: {e:#}; owners of sockets older than tcptrace, of accepted sockets and names of threads' processes may be unknown (a kernel with CONFIG_DEBUG_INFO_BTF fixes this)"
            );
            KernelLayout::NONE
        }
    }
}

/// [`STACKS_CALLER`] where the kernel can give the user stack pointer at the
/// system call (`bpf_task_pt_regs`, Linux 5.15) and BTF says where it is.
fn stack_callers(layout: &KernelLayout) -> u32 {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    let helper = is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_task_pt_regs)
        .unwrap_or(false);
    if helper && layout.pt_regs_sp != KernelLayout::UNKNOWN {
        return STACKS_CALLER;
    }
    eprintln!(
        "tcptrace: warning: this kernel cannot give the user stack pointer at a system call (bpf_task_pt_regs needs Linux 5.15): the function that called the C library's connect() or accept() may be missing from stacks"
    );
    0
}

/// Entries of `SOCKETS` for `max_sockets` sockets: a power of two, whole sets.
fn socket_entries(max_sockets: u32) -> u32 {
    max_sockets.clamp(SOCKET_WAYS, 1 << 30).next_power_of_two()
}

/// How the ring buffers' bytes are split.
#[derive(Debug, PartialEq, Eq)]
struct RingSplit {
    /// Rings some CPU writes to: the first `used` of [`RING_MAPS`].
    used: u32,
    /// Bytes of each: a power of two, at least a page.
    bytes: u32,
}

impl RingSplit {
    /// `total` (a power of two) split over the rings `cpus` possible CPUs write to.
    fn of(total: u32, cpus: u32, page: u32) -> Self {
        let used = cpus.clamp(1, RINGS);
        let share = total / used;
        // The largest power of two that fits the share, so the total is kept.
        let bytes = if share == 0 { 0 } else { 1 << share.ilog2() };
        Self {
            used,
            bytes: bytes.max(page),
        }
    }
}

/// CPUs `bpf_get_smp_processor_id` can return: the possible ones, not the online.
fn possible_cpus() -> anyhow::Result<u32> {
    let n = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
    u32::try_from(n).context("CPU count")
}

/// Sizes of the maps: each mode shrinks the maps it never touches to their
/// minimum, as several are preallocated.
fn map_sizes(cfg: &ProbeConfig, rings: &RingSplit) -> Vec<(&'static str, u32)> {
    let c = &cfg.config;
    let aggregate = cfg.aggregate();
    let grouped = aggregate && c.aggregate.group_by != GROUP_NONE;
    let streams = !aggregate || c.aggregate.stream_states != 0;
    // Unless some states are streamed, the rings stay unused, as do those
    // no CPU writes to: a ring's smallest size is a page.
    let mut sizes: Vec<(&'static str, u32)> = RING_MAPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let written = streams && (i as u32) < rings.used;
            (
                *name,
                if written {
                    rings.bytes
                } else {
                    sys::page_size()
                },
            )
        })
        .collect();
    sizes.extend([
        ("STACKS", if cfg.stacks() { STACK_BUCKETS } else { 1 }),
        (
            "SOCKET_STACKS",
            if cfg.stacks() {
                cfg.max_sockets.max(1)
            } else {
                1
            },
        ),
        (
            "SOCKETS",
            if aggregate || cfg.owners() {
                socket_entries(cfg.max_sockets)
            } else {
                SOCKET_WAYS
            },
        ),
        ("LISTEN_OWNERS", if cfg.owners() { 4096 } else { 1 }),
        // Allocated as filled (BPF_F_NO_PREALLOC): the bound costs nothing.
        // One more than the sockets seeded: the mark that seeding is done.
        (
            "INODE_OWNERS",
            if c.owners & OWNERS_BY_INODE != 0 {
                cfg.max_sockets.saturating_add(1)
            } else {
                1
            },
        ),
        (
            "COMMS",
            if aggregate && c.aggregate.group_by == GROUP_PROCESS {
                16384
            } else {
                1
            },
        ),
        (
            "TOTALS",
            if aggregate && !grouped {
                TOTAL_KINDS * 2
            } else {
                1
            },
        ),
        (
            "TRANSITIONS",
            if aggregate && cfg.transitions {
                TRANSITION_SLOTS
            } else {
                1
            },
        ),
        ("HIST", if grouped { HIST_MAX_KEYS } else { 1 }),
    ]);
    sizes
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_numbers() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t42\nrun_time_ns:\t1234\nrun_cnt:\t7\n";
        assert_eq!(parse_fdinfo(text, "prog_id"), Some(42));
        assert_eq!(parse_fdinfo(text, "run_time_ns"), Some(1234));
        assert_eq!(parse_fdinfo(text, "run_cnt"), Some(7));
        assert_eq!(parse_fdinfo(text, "missing"), None);
        assert_eq!(parse_fdinfo("run_time_ns:\tx\n", "run_time_ns"), None);
    }

    #[test]
    fn ring_bytes_are_split_over_the_rings_cpus_write_to() {
        let split = |total, cpus| {
            let s = RingSplit::of(total, cpus, 4096);
            (s.used, s.bytes)
        };
        assert_eq!(split(1 << 22, 1), (1, 1 << 22));
        assert_eq!(split(1 << 22, 2), (2, 1 << 21));
        // Not a power of two of rings: each takes the power of two that fits.
        assert_eq!(split(1 << 22, 3), (3, 1 << 20));
        // More CPUs than rings: they share the rings.
        assert_eq!(split(1 << 22, 64), (RINGS, 1 << 19));
        // Never below a page.
        assert_eq!(split(4096, 2), (2, 4096));
    }
}
