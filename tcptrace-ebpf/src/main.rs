//! The kernel half of tcptrace: one program on `sock:inet_sock_set_state`
//! that either copies each TCP state change into a ring buffer (stream mode:
//! watch, leaks) or measures dwell times and counts them in per-CPU log2
//! histograms (aggregate mode: hist, serve), so a storm of connections never
//! wakes userspace; and one on the exit of `accept()`, so an accepted
//! socket's owner is the process that accepted it.
//!
//! Who owns a socket is decided here, from what the kernel sees in process
//! context (see `owner`), never from the task that happens to be on the CPU.
#![no_std]
#![no_main]

mod aggregate;
mod kernel;
mod owner;
mod record;
mod stacks;
mod stream;

use aya_ebpf::{
    Global,
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::TracePointContext,
};
use tcptrace_common::{
    Config, DEFAULT_RING_BYTES, DROPS_SLOTS, HIST_MAX_KEYS, HistKey, KnownOwner, ListenKey,
    MODE_AGGREGATE, SOCKET_WAYS, SockEntry, SockStack, TASK_COMM_LEN, TOTAL_KINDS,
    TRANSITION_SLOTS, TcpState, TotalHist,
};

#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::NONE);

/// The rings, one per CPU up to [`RINGS`]: see `stream::emit`. The loader
/// sizes those no CPU writes to at a page. Separate maps, not a map of maps:
/// each reserve site must name its map for the verifier, and aya-ebpf 0.2
/// has no map-of-maps type.
#[map]
static EVENTS_0: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_1: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_2: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_3: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_4: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_5: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_6: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_7: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per CPU: records that did not fit in the ring buffer, histogram updates
/// that did not fit in `HIST`, entries evicted from `SOCKETS`.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROPS_SLOTS, 0);

/// Each socket's entry (owner; in aggregate mode when it entered its state
/// and its handshake), freed at CLOSE, in a set-associative table the loader
/// sizes. An array, not a hash map: finding an entry is a few loads and a
/// socket's arrival and departure are plain stores, where hash-map inserts
/// and deletes cost more than all the rest of the program. A full set evicts
/// the entry written longest ago (counted), which also bounds the entries of
/// sockets whose CLOSE was missed.
///
/// Mmapable only for its alignment: the kernel then starts an array's
/// values on a page, so each 128-byte set is two whole cache lines. Without
/// it they start where `struct bpf_array` ends (312 bytes in, on 6.18) and
/// a set spans three; the first load of a socket's set was the program's
/// costliest instruction (perf on the JIT image: 36% of watch's samples).
#[map]
static SOCKETS: Array<SockEntry> =
    Array::with_max_entries(SOCKET_WAYS, aya_ebpf::bindings::BPF_F_MMAPABLE);
/// Listening port (per network namespace) -> owner, learnt at listen() and
/// seeded with the listeners that predate the program, for the sockets a
/// listener creates in softirq.
#[map]
static LISTEN_OWNERS: LruHashMap<ListenKey, KnownOwner> = LruHashMap::with_max_entries(4096, 0);
/// Socket inode -> a process holding it, from `/proc` at start (read-only
/// here): the owners of sockets older than the program. Key 0 (no socket
/// has inode 0) is written last: until then a miss may only mean "not
/// seeded yet". Allocated as filled, so its bound costs nothing.
#[map]
static INODE_OWNERS: HashMap<u64, KnownOwner> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
/// Aggregate mode, grouping by process: tgid -> process name, learnt in
/// process context, so a group is named even after its process exits.
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

/// The user stacks that opened sockets (with stacks on), deduplicated.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);
/// Socket -> the stack that opened it (with stacks on), freed at CLOSE.
#[map]
static SOCKET_STACKS: LruHashMap<u64, SockStack> = LruHashMap::with_max_entries(1, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if let Some(t) = record::transition(&ctx) {
        state_change(&ctx, t);
    }
    0
}

/// The same, for a kernel whose record has a field elsewhere: the loader
/// loads this one instead, so the verifier never sees the path not taken
/// (sharing one program, its branch changed the code around it enough
/// that 5.10's verifier refused a stack read).
#[tracepoint]
pub fn inet_sock_set_state_moved(ctx: TracePointContext) -> u32 {
    if let Some(t) = record::moved_transition(&ctx, &config().record) {
        state_change(&ctx, t);
    }
    0
}

#[inline(always)]
fn state_change(ctx: &TracePointContext, t: record::Transition) {
    let cfg = config();
    if stacks::on(cfg) {
        // connect() enters SYN_SENT, in the connecting thread.
        if t.old == TcpState::Close as u8 && t.new == TcpState::SynSent as u8 {
            stacks::capture(ctx, t.skaddr, cfg);
        } else if t.new == TcpState::Close as u8 {
            stacks::forget(t.skaddr);
        }
    }
    let passes = record::passes(&t, &cfg.filter);
    if load(&cfg.mode) == MODE_AGGREGATE {
        aggregate::transition(&t, cfg, passes);
    } else {
        stream::transition(&t, cfg, passes);
    }
}

/// `accept4()` returned: the new file's socket is held by this process,
/// and this thread's stack is the one that opened it.
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx, record::syscall_ret(&ctx), config());
    0
}

/// `accept()` returned (libcs call accept4, but not every program uses libc).
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx, record::syscall_ret(&ctx), config());
    0
}

/// Either exit, where its record has `ret` elsewhere.
#[tracepoint]
pub fn sys_exit_accept_moved(ctx: TracePointContext) -> u32 {
    let cfg = config();
    accepted(&ctx, record::moved_syscall_ret(&ctx, &cfg.record), cfg);
    0
}

#[inline(always)]
fn accepted(ctx: &TracePointContext, fd: i64, cfg: &Config) {
    let (owners, stacks) = (owner::tracked(cfg), stacks::on(cfg));
    if !owners && !stacks {
        return;
    }
    if fd < 0 {
        return;
    }
    let Some(sk) = kernel::fd_sock(fd as u64, &cfg.layout) else {
        return;
    };
    if owners {
        owner::accepted(sk, cfg);
    }
    if stacks {
        stacks::capture(ctx, sk, cfg);
    }
}

/// The read-only configuration, read field by field with [`load`]: copying
/// it whole would not fit the 512-byte BPF stack.
fn config() -> &'static Config {
    // SAFETY: Global<T> is a transparent wrapper around an initialised T.
    unsafe { &*(core::ptr::addr_of!(CONFIG) as *const Config) }
}

/// Volatile, so the compiler cannot fold the value the loader overrides.
#[inline(always)]
fn load<T: Copy>(field: &T) -> T {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

/// Adds one to this CPU's `DROPS` counter `slot`.
fn bump(slot: u32) {
    if let Some(n) = DROPS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; the kernel never nests runs on one CPU.
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// GPL-compatible: bpf_probe_read_kernel is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
