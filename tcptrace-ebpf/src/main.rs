//! The kernel half of tcptrace: one tracepoint program that either copies
//! every TCP state change into a ring buffer (stream mode: watch, leaks) or
//! measures dwell times and counts them in per-CPU log2 histograms (aggregate
//! mode: hist), so a storm of connections never wakes userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm},
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, AF_INET6, AggregateConfig, DEFAULT_RING_BYTES, DROPS_SLOT, DROPS_SLOTS, EVICTED_SLOT,
    Filter, GROUP_LPORT, GROUP_NONE, GROUP_PROCESS, GROUP_RADDR, GROUP_RPORT, HIST_FULL_SLOT,
    HIST_MAX_KEYS, HistKey, IPPROTO_TCP, InetSockSetStateArgs, LOG2_BUCKETS, ListenerOwner,
    MAX_FILTER_PIDS, MAX_FILTER_PORTS, MODE_AGGREGATE, MODE_STREAM, Offsets, SLOT_MAX, SOCKET_WAYS,
    SockTimes, StateEvent, TASK_COMM_LEN, TOTAL_KINDS, TRANSITION_SLOTS, TotalHist,
    in_process_context, log2_bucket, measure, socket_set, total_index, transition_index,
};

// TCP states, as numbered by the kernel (include/net/tcp_states.h).
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// A record's footprint in the ring: the event and the kernel's 8-byte header.
const RECORD_BYTES: u64 = core::mem::size_of::<StateEvent>() as u64 + 8;

/// What a map update with BPF_NOEXIST returns when the key exists.
const EEXIST: i32 = -17;

#[unsafe(no_mangle)]
static FILTER: Global<Filter> = Global::new(Filter::NONE);
#[unsafe(no_mangle)]
static OFFSETS: Global<Offsets> = Global::new(Offsets::NONE);
/// Wake the reader only once this many bytes are pending; it also polls on a
/// timer. Waking per record would cap throughput (field notes: ringbuf bench).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);
/// `MODE_STREAM` or `MODE_AGGREGATE`.
#[unsafe(no_mangle)]
static MODE: Global<u32> = Global::new(MODE_STREAM);
#[unsafe(no_mangle)]
static AGGREGATE: Global<AggregateConfig> = Global::new(AggregateConfig::NONE);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per CPU: records that did not fit in the ring buffer, histogram updates
/// that did not fit in `HIST`.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROPS_SLOTS, 0);

/// Only used with a pid filter: socket -> owning tgid, learnt in process
/// context, so the socket's softirq transitions still pass the filter.
#[map]
static OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);
/// Only used with a pid filter: listening port -> owning tgid, so that
/// sockets a listener creates in softirq inherit its owner.
#[map]
static LISTENERS: LruHashMap<u16, u32> = LruHashMap::with_max_entries(4096, 0);

/// Aggregate mode: each socket's entry (when it entered its state, its
/// handshake), freed at CLOSE, in a set-associative table the loader sizes.
/// An array, not a hash map: finding an entry is a few loads and a socket's
/// arrival and departure are plain stores, where hash-map inserts and
/// deletes cost more than all the rest of the program. A full set evicts the
/// entry that changed state longest ago (counted), which also bounds the
/// entries of sockets whose CLOSE was missed.
#[map]
static SOCKETS: Array<SockTimes> = Array::with_max_entries(SOCKET_WAYS, 0);
/// Aggregate mode, when owners matter: listening port -> owner, for the
/// sockets a listener creates in softirq.
#[map]
static LISTEN_OWNERS: LruHashMap<u16, ListenerOwner> = LruHashMap::with_max_entries(4096, 0);
/// Aggregate mode, grouping by process: tgid -> comm, learnt in process
/// context, so a group is named even after its process exits.
#[map]
static COMMS: LruHashMap<u32, [u8; TASK_COMM_LEN]> = LruHashMap::with_max_entries(16384, 0);
/// Aggregate mode, not grouping: a histogram per kind, per CPU, per interval parity.
#[map]
static TOTALS: PerCpuArray<TotalHist> = PerCpuArray::with_max_entries(TOTAL_KINDS * 2, 0);
/// Aggregate mode: transitions counted per (old, new) state, per CPU.
#[map]
static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);
/// Aggregate mode, grouping: the histograms, one counter per key, per CPU.
/// Preallocated: allocating per-CPU values as keys appear cost 5-25 µs per
/// transition under a storm of new groups (measured here); the loader
/// shrinks it to one entry when not grouping.
#[map]
static HIST: PerCpuHashMap<HistKey, u64> = PerCpuHashMap::with_max_entries(HIST_MAX_KEYS, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let args = record(&ctx);
    if args.protocol != IPPROTO_TCP {
        return 0;
    }
    let filter = filter();
    if !family_passes(&ctx, args.family, load(&filter.family))
        || !port_passes(args.sport, &filter.lports, load(&filter.n_lports))
        || !port_passes(args.dport, &filter.rports, load(&filter.n_rports))
    {
        return 0;
    }
    if MODE.load() == MODE_AGGREGATE {
        aggregate(&ctx, &args, filter);
        let states = load(&aggregate_config().stream_states);
        if states & u32::from(state_bit(args.oldstate) | state_bit(args.newstate)) != 0 {
            emit(&args, bpf_get_current_pid_tgid());
        }
        return 0;
    }
    // `leaks` needs only CLOSE_WAIT's comings and goings: the rest never
    // reaches the ring buffer, and without `-p` it returns before any helper call.
    let states = load(&filter.states);
    let state_passes =
        states == 0 || states & (state_bit(args.oldstate) | state_bit(args.newstate)) != 0;
    let by_pid = load(&filter.n_pids) != 0;
    if !by_pid && !state_passes {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if by_pid && !owner_passes(&ctx, &args, (pid_tgid >> 32) as u32, filter) {
        return 0;
    }
    if state_passes {
        emit(&args, pid_tgid);
    }
    0
}

/// The tracepoint's record, read in place with plain context loads at the
/// format's offsets. A `bpf_probe_read_kernel` copy of it cost ~100 ns per
/// event here (a helper call behind the kernel's return-thunk mitigations),
/// as much as all the rest of `leaks`' path. Every load is at a constant
/// offset from the context pointer, the only form the verifier accepts.
fn record(ctx: &TracePointContext) -> InetSockSetStateArgs {
    let base = ctx.as_ptr() as *const u8;
    let at = |offset: usize| base.wrapping_add(offset);
    // SAFETY: in-bounds, aligned reads of the tracepoint record (its layout
    // is checked against the running kernel by a userspace test).
    unsafe {
        macro_rules! field {
            ($name:ident, $ty:ty) => {
                core::ptr::read_volatile(
                    at(core::mem::offset_of!(InetSockSetStateArgs, $name)) as *const $ty
                )
            };
        }
        let v6 = |offset: usize| -> [u8; 16] {
            let lo = core::ptr::read_volatile(at(offset) as *const u64);
            let hi = core::ptr::read_volatile(at(offset + 8) as *const u64);
            core::mem::transmute::<[u64; 2], [u8; 16]>([lo, hi])
        };
        InetSockSetStateArgs {
            common: 0,
            skaddr: field!(skaddr, u64),
            oldstate: field!(oldstate, i32),
            newstate: field!(newstate, i32),
            sport: field!(sport, u16),
            dport: field!(dport, u16),
            family: field!(family, u16),
            protocol: field!(protocol, u16),
            saddr: field!(saddr, u32).to_ne_bytes(),
            daddr: field!(daddr, u32).to_ne_bytes(),
            saddr_v6: v6(core::mem::offset_of!(InetSockSetStateArgs, saddr_v6)),
            daddr_v6: v6(core::mem::offset_of!(InetSockSetStateArgs, daddr_v6)),
        }
    }
}

/// The read-only filter, read field by field: copying it whole would not fit
/// the 512-byte BPF stack next to the record.
fn filter() -> &'static Filter {
    // SAFETY: Global<T> is a transparent wrapper around an initialised T.
    unsafe { &*(core::ptr::addr_of!(FILTER) as *const Filter) }
}

/// Volatile, so the compiler cannot fold the value the loader overrides.
fn load<T: Copy>(field: &T) -> T {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

/// Writes the event straight into the ring buffer: no stack copy. Inlined
/// in both callers: a BPF-to-BPF call costs a return thunk here.
#[inline(always)]
fn emit(args: &InetSockSetStateArgs, pid_tgid: u64) {
    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        bump(DROPS_SLOT);
        return;
    };
    let e = entry.as_mut_ptr();
    // Who is on the CPU says something only in process context: elsewhere the
    // event skips the helpers that name it (~100 ns each here).
    let in_process = in_process_context(args.newstate as u8);
    // SAFETY: `e` points at a reserved, writable StateEvent; every field is
    // written below, with plain stores (a zeroing loop would be a BPF call).
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).skaddr = args.skaddr;
        (*e).cgroup_id = if in_process {
            bpf_get_current_cgroup_id()
        } else {
            0
        };
        // A socket not accepted yet has no file (and SYN_RECV is all it does
        // before accept), so no walk for it; nor where the view does not want it.
        let wanted = load(&filter().inode_states);
        (*e).inode = if args.newstate == TCP_SYN_RECV
            || (wanted != 0 && wanted & state_bit(args.newstate) == 0)
        {
            0
        } else {
            socket_inode(args.skaddr, &OFFSETS.load())
        };
        let (saddr, daddr) = if args.family == AF_INET {
            (widen(args.saddr), widen(args.daddr))
        } else {
            (as_words(&args.saddr_v6), as_words(&args.daddr_v6))
        };
        write_words(core::ptr::addr_of_mut!((*e).saddr), saddr);
        write_words(core::ptr::addr_of_mut!((*e).daddr), daddr);
        (*e).tgid = (pid_tgid >> 32) as u32;
        (*e).tid = pid_tgid as u32;
        (*e).sport = args.sport;
        (*e).dport = args.dport;
        (*e).family = args.family;
        (*e).oldstate = args.oldstate as u8;
        (*e).newstate = args.newstate as u8;
        let comm = core::ptr::addr_of_mut!((*e).comm);
        if !in_process || bpf_get_current_comm(comm.cast(), TASK_COMM_LEN as u32) != 0 {
            write_words(comm, [0; 4]);
        }
    }
    // Wake the reader once, with the record that takes the backlog over the
    // threshold. Waking on every record past it (a reader falling behind)
    // costs an inter-processor interrupt each: on a VM, most of the program's time.
    let wakeup = WAKEUP_BYTES.load();
    let pending = EVENTS.query(0);
    let flags = if wakeup == 0 || (pending >= wakeup && pending < wakeup + RECORD_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}

fn state_bit(state: i32) -> u16 {
    if (0..16).contains(&state) {
        1 << state
    } else {
        0
    }
}

/// An IPv4 address as the first four bytes of sixteen, in 32-bit words.
fn widen(v4: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(v4), 0, 0, 0]
}

fn as_words(v6: &[u8; 16]) -> [u32; 4] {
    // SAFETY: same size, any bit pattern is valid.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*v6) }
}

/// Four word stores: LLVM turns a 16-byte copy or fill into a call to a
/// byte-loop `memset`/`memcpy`, a BPF-to-BPF call on the hot path.
///
/// # Safety
/// `dst` is valid for 16 bytes of writes and 4-byte aligned.
unsafe fn write_words(dst: *mut [u8; 16], words: [u32; 4]) {
    let dst = dst.cast::<u32>();
    for (i, w) in words.into_iter().enumerate() {
        // SAFETY: within the 16 bytes, per the contract.
        unsafe { core::ptr::write_volatile(dst.add(i), w) };
    }
}

/// `i_ino` of the socket's inode, 0 while it has no file (or offsets are
/// unknown). The kernel allocates a socket and its inode together
/// (`struct socket_alloc`), so the inode is at a fixed offset from the
/// socket: two reads, not the four of `sk_socket->file->f_inode->i_ino`.
fn socket_inode(skaddr: u64, off: &Offsets) -> u64 {
    if off.sock_sk_socket == Offsets::UNKNOWN {
        return 0;
    }
    let read = |base: u64, offset: u32| -> u64 {
        if base == 0 {
            return 0;
        }
        // SAFETY: bpf_probe_read_kernel checks the address; a fault yields 0.
        unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }.unwrap_or(0)
    };
    let socket = read(skaddr, off.sock_sk_socket);
    read(socket, off.socket_alloc_vfs_inode + off.inode_i_ino)
}

fn family_passes(ctx: &TracePointContext, family: u16, wanted: u16) -> bool {
    if family != AF_INET && family != AF_INET6 {
        warn!(ctx, "tcptrace: unexpected address family {}", family);
        return false;
    }
    wanted == 0 || wanted == family
}

fn port_passes(port: u16, list: &[u16; MAX_FILTER_PORTS], n: u16) -> bool {
    if n == 0 {
        return true;
    }
    for (i, p) in list.iter().enumerate() {
        if i >= usize::from(n) {
            break;
        }
        if load(p) == port {
            return true;
        }
    }
    false
}

fn pid_listed(tgid: u32, filter: &Filter) -> bool {
    let n = usize::from(load(&filter.n_pids));
    for (i, p) in filter.pids.iter().enumerate() {
        if i >= n || i >= MAX_FILTER_PIDS {
            break;
        }
        if load(p) == tgid {
            return true;
        }
    }
    false
}

/// The pid filter is about the socket's owner, not the task on the CPU:
/// remember owners seen in process context and let their sockets' softirq
/// transitions through. Userspace applies the exact owner filter afterwards.
fn owner_passes(
    ctx: &TracePointContext,
    args: &InetSockSetStateArgs,
    tgid: u32,
    filter: &Filter,
) -> bool {
    let sk = args.skaddr;
    let mut owner = if in_process_context(args.newstate as u8) && pid_listed(tgid, filter) {
        remember(ctx, &OWNERS, sk, tgid);
        Some(tgid)
    } else {
        // SAFETY: the value is a plain u32 copied out at once.
        unsafe { OWNERS.get(sk) }.copied()
    };
    if args.newstate == TCP_LISTEN && owner.is_some() {
        remember(ctx, &LISTENERS, args.sport, tgid);
    }
    if args.oldstate == TCP_LISTEN && args.newstate == TCP_SYN_RECV {
        // A child socket, cloned from its listener in softirq.
        // SAFETY: as above.
        if let Some(listener) = unsafe { LISTENERS.get(args.sport) }.copied() {
            remember(ctx, &OWNERS, sk, listener);
            owner = Some(listener);
        }
    }
    if args.newstate == TCP_CLOSE {
        let _ = OWNERS.remove(sk);
        if args.oldstate == TCP_LISTEN {
            let _ = LISTENERS.remove(args.sport);
        }
    }
    owner.is_some_and(|o| pid_listed(o, filter)) || pid_listed(tgid, filter)
}

fn remember<K>(ctx: &TracePointContext, map: &LruHashMap<K, u32>, key: K, tgid: u32) {
    if map.insert(&key, tgid, 0).is_err() {
        warn!(ctx, "tcptrace: owner map insert failed for tgid {}", tgid);
    }
}

/// Aggregate mode: measure the transition against the socket's entry in
/// `SOCKETS` and count it in `TOTALS` (or `HIST` when grouping). Nothing
/// goes to the ring buffer.
fn aggregate(ctx: &TracePointContext, args: &InetSockSetStateArgs, filter: &Filter) {
    let cfg = aggregate_config();
    // SAFETY: takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (old, new) = (args.oldstate as u8, args.newstate as u8);
    let Some((entry, found)) = socket_entry(args.skaddr, load(&cfg.socket_sets)) else {
        return;
    };
    // SAFETY: an array value; copied out at once (32 bytes).
    let prev = found.then(|| unsafe { *entry });
    let owner = if load(&cfg.group_by) == GROUP_PROCESS
        || load(&filter.n_pids) != 0
        || load(&cfg.has_comm) != 0
    {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        resolve_owner(ctx, args, tgid, prev.as_ref(), filter, cfg)
    } else {
        ListenerOwner { tgid: 0, passes: 1 }
    };
    let mut key = group_key(args, owner.tgid, cfg, now);
    let grouped = load(&cfg.group_by) != GROUP_NONE;
    if owner.passes != 0
        && let Some(n) = TRANSITIONS.get_ptr_mut(transition_index(old, new))
    {
        // SAFETY: this CPU's slot; the kernel never nests runs on one CPU.
        unsafe { *n += 1 };
    }
    let measured = measure(prev.as_ref(), old, new, now);
    if owner.passes != 0 {
        for (kind, ns) in measured.values() {
            count(&mut key, kind, ns, grouped);
        }
    }
    let (handshake, handshake_ns) = (measured.handshake, measured.handshake_ns);
    // The writes below: `entry` is the array value found above. TCP
    // serialises a socket's transitions; another socket taking the entry
    // meanwhile (a full set, on another CPU) loses a measurement, no more.
    if i32::from(new) == TCP_CLOSE {
        if found {
            // Free: no owner, the oldest time. Field stores, not a 32-byte
            // fill (a call to a byte-loop memset).
            // SAFETY: see above.
            unsafe {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*entry).skaddr), 0);
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*entry).entered_ns), 0);
            }
        }
        return;
    }
    // SAFETY: see above.
    if !found && unsafe { (*entry).skaddr } != 0 {
        bump(EVICTED_SLOT);
    }
    let next = SockTimes {
        skaddr: args.skaddr,
        entered_ns: now,
        handshake_ns,
        owner: owner.tgid,
        state: new,
        handshake,
        owner_passes: owner.passes as u8,
        _pad: 0,
    };
    // SAFETY: see above.
    unsafe { *entry = next };
}

/// The socket's entry in `SOCKETS` and whether it is its own: else the way
/// of its set to use for it, a free one (they have the oldest time, 0) or
/// the one that changed state longest ago.
fn socket_entry(skaddr: u64, sets: u32) -> Option<(*mut SockTimes, bool)> {
    let first = socket_set(skaddr, sets) * SOCKET_WAYS;
    let mut victim = None;
    let mut oldest = u64::MAX;
    for way in 0..SOCKET_WAYS {
        let p = SOCKETS.get_ptr_mut(first + way)?;
        // SAFETY: an array value, valid while the program runs.
        let (owner, entered) = unsafe { ((*p).skaddr, (*p).entered_ns) };
        if owner == skaddr {
            return Some((p, true));
        }
        if entered < oldest {
            oldest = entered;
            victim = Some(p);
        }
    }
    victim.map(|p| (p, false))
}

/// Adds one to this CPU's `DROPS` counter `slot`.
fn bump(slot: u32) {
    if let Some(n) = DROPS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; the kernel never nests runs on one CPU.
        unsafe { *n += 1 };
    }
}

fn aggregate_config() -> &'static AggregateConfig {
    // SAFETY: Global<T> is a transparent wrapper around an initialised T.
    unsafe { &*(core::ptr::addr_of!(AGGREGATE) as *const AggregateConfig) }
}

/// The socket's owner and whether it passes the pid and comm filters. The
/// task on the CPU is the owner only in process context; otherwise the owner
/// remembered for the socket (or its listener), else the task on the CPU.
fn resolve_owner(
    ctx: &TracePointContext,
    args: &InetSockSetStateArgs,
    tgid: u32,
    prev: Option<&SockTimes>,
    filter: &Filter,
    cfg: &AggregateConfig,
) -> ListenerOwner {
    let current = || ListenerOwner {
        tgid,
        passes: u32::from(owner_filters_pass(tgid, filter, cfg)),
    };
    let owner = if in_process_context(args.newstate as u8) && tgid != 0 {
        if load(&cfg.group_by) == GROUP_PROCESS {
            remember_comm(tgid);
        }
        current()
    } else if args.oldstate == TCP_LISTEN && args.newstate == TCP_SYN_RECV {
        // SAFETY: a plain value copied out at once.
        unsafe { LISTEN_OWNERS.get(args.sport) }
            .copied()
            .unwrap_or_else(current)
    } else if let Some(p) = prev.filter(|_| args.oldstate != TCP_CLOSE) {
        ListenerOwner {
            tgid: p.owner,
            passes: u32::from(p.owner_passes),
        }
    } else {
        current()
    };
    if args.newstate == TCP_LISTEN {
        if LISTEN_OWNERS.insert(args.sport, owner, 0).is_err() {
            warn!(
                ctx,
                "tcptrace: listener owner insert failed for port {}", args.sport
            );
        }
    } else if args.oldstate == TCP_LISTEN && args.newstate == TCP_CLOSE {
        let _ = LISTEN_OWNERS.remove(args.sport);
    }
    owner
}

/// Names `tgid` in `COMMS`; written only when the name is new (an LRU
/// insert costs more than the rest of the program).
fn remember_comm(tgid: u32) {
    let mut comm = [0u8; TASK_COMM_LEN];
    // SAFETY: a writable buffer of TASK_COMM_LEN bytes.
    if unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) } != 0 {
        return;
    }
    // SAFETY: a plain array compared at once.
    if unsafe { COMMS.get(tgid) } != Some(&comm) {
        let _ = COMMS.insert(tgid, comm, 0);
    }
}

/// Exact in aggregate mode: nothing downstream refines the pid or comm filter.
fn owner_filters_pass(tgid: u32, filter: &Filter, cfg: &AggregateConfig) -> bool {
    if load(&filter.n_pids) != 0 && !pid_listed(tgid, filter) {
        return false;
    }
    if load(&cfg.has_comm) == 0 {
        return true;
    }
    let mut comm = [0u8; TASK_COMM_LEN];
    // SAFETY: a writable buffer of TASK_COMM_LEN bytes.
    if unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) } != 0 {
        return false;
    }
    comm.iter().zip(cfg.comm.iter()).all(|(a, b)| *a == load(b))
}

/// The histogram key of this transition's group and interval.
fn group_key(args: &InetSockSetStateArgs, owner: u32, cfg: &AggregateConfig, now: u64) -> HistKey {
    let mut key = HistKey {
        group: [0; 16],
        epoch: 0,
        family: 0,
        kind: 0,
        slot: 0,
    };
    if let Some(epoch) = now
        .saturating_sub(load(&cfg.start_ns))
        .checked_div(load(&cfg.interval_ns))
    {
        key.epoch = epoch as u32;
    }
    match load(&cfg.group_by) {
        GROUP_PROCESS => key.group[..4].copy_from_slice(&owner.to_ne_bytes()),
        GROUP_LPORT => key.group[..2].copy_from_slice(&args.sport.to_ne_bytes()),
        GROUP_RPORT => key.group[..2].copy_from_slice(&args.dport.to_ne_bytes()),
        GROUP_RADDR => {
            key.family = args.family;
            key.group = if args.family == AF_INET {
                let mut g = [0; 16];
                g[..4].copy_from_slice(&args.daddr);
                g
            } else {
                args.daddr_v6
            };
        }
        _ => {}
    }
    key
}

/// One value into a histogram: its log2 bucket of microseconds, and the maximum.
#[inline(always)]
fn count(key: &mut HistKey, kind: u8, ns: u64, grouped: bool) {
    if !grouped {
        count_total(kind, key.epoch, ns);
        return;
    }
    key.kind = kind;
    key.slot = log2_bucket(ns / 1000);
    add(key, 1, |slot, n| *slot += n);
    key.slot = SLOT_MAX;
    add(key, ns, |slot, v| *slot = (*slot).max(v));
}

/// Not grouping: this CPU's histogram of `kind` for interval `epoch`, reset
/// when the interval is new to it.
#[inline(always)]
fn count_total(kind: u8, epoch: u32, ns: u64) {
    let Some(h) = total_index(kind, epoch).and_then(|i| TOTALS.get_ptr_mut(i)) else {
        return;
    };
    // SAFETY: this CPU's copy; the kernel never nests runs on one CPU.
    let h = unsafe { &mut *h };
    if h.epoch != u64::from(epoch) {
        *h = TotalHist {
            epoch: u64::from(epoch),
            max_ns: 0,
            sum_ns: 0,
            buckets: [0; LOG2_BUCKETS as usize],
        };
    }
    // The mask bounds the index for the verifier; buckets are below 64 anyway.
    h.buckets[usize::from(log2_bucket(ns / 1000) & (LOG2_BUCKETS - 1))] += 1;
    h.max_ns = h.max_ns.max(ns);
    h.sum_ns += ns;
}

/// Applies `update` to this CPU's counter for `key`, creating it when missing.
fn add(key: &HistKey, value: u64, update: impl Fn(&mut u64, u64)) {
    for _ in 0..2 {
        if let Some(slot) = HIST.get_ptr_mut(key) {
            // SAFETY: this CPU's copy; the kernel never nests runs on one CPU.
            unsafe { update(&mut *slot, value) };
            return;
        }
        match HIST.insert(key, value, u64::from(BPF_NOEXIST)) {
            Ok(()) => return,
            // Another CPU created the key meanwhile: look it up again.
            Err(EEXIST) => {}
            // Full: count the loss.
            Err(_) => break,
        }
    }
    bump(HIST_FULL_SLOT);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: bpf_probe_read_kernel is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
