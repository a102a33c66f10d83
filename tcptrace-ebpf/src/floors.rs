//! The floor programs of `cargo xtask bench` (never loaded by tcptrace):
//! each does only the work a mode of tcptrace cannot avoid, the way
//! tcptrace does it, so the bench can say what a mode costs at the least on
//! the machine it runs on. Each is a program on `sock:inet_sock_set_state`;
//! the bench loads one at a time (`xtask bench --floor NAME`), drains
//! `EVENTS` as tcptrace does, and times it with the kernel's statistics.
//!
//! - `floor_entry`: `hist`'s least: the clock, the socket's entry in a
//!   set-associative table the size of tcptrace's default (its dwell time
//!   read, its new state written, freed at CLOSE), and one per-CPU counter.
//! - `floor_ring`: a 104-byte record per transition in one ring shared by
//!   all CPUs (as tcptrace wrote until it had a ring per CPU), with the
//!   clock and tcptrace's wake-up policy.
//! - `floor_ring_cpu`: the same record in a ring of its CPU's own (one of
//!   [`CPU_RINGS`], by CPU number), as tcptrace and the floors below write
//!   it: against `floor_ring`, what one shared ring's cross-CPU traffic
//!   costs (its lock, its positions, records of two CPUs in one cache line).
//! - `floor_stream`: `watch`'s least: the entry (the owner is per socket),
//!   the task's pid and name in process context, and a record per transition.
//! - `floor_cw`: below `leaks`'s least: a record for each transition into
//!   or out of CLOSE_WAIT, without the owner learning (see `floor_cw`).
//! - `floor_serve`: `serve`'s least: `floor_entry`, and `floor_cw`'s records.
//!
//! The walks through kernel structures (fd -> socket at accept, socket ->
//! inode) are bpftrace floors of the bench: they need the running kernel's
//! BTF, which bpftrace reads.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_get_smp_processor_id},
    },
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcptrace_common::{
    DEFAULT_RING_BYTES, IPPROTO_TCP, InetSockSetStateArgs, SOCKET_WAYS, SockEntry, StateEvent,
    TASK_COMM_LEN, TcpState, log2_bucket, socket_set,
};

/// tcptrace's default `--max-sockets`, its table's size.
const ENTRIES_MAX: u32 = 262_144;
const SETS: u32 = ENTRIES_MAX / SOCKET_WAYS;
/// tcptrace's wake-up threshold: a quarter of its default ring pending.
const WAKEUP_BYTES: u64 = DEFAULT_RING_BYTES as u64 / 4;
const RECORD_BYTES: u64 = size_of::<StateEvent>() as u64 + 8;
const CLOSE: u8 = TcpState::Close as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
/// `floor_ring_cpu`'s rings, each the size of tcptrace's one: CPU n writes
/// to `EVENTS_CPU{n % CPU_RINGS}`. Separate maps, not a map of maps: each
/// reserve site then names its map, as the verifier wants.
pub const CPU_RINGS: u32 = 4;
#[map]
static EVENTS_CPU0: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_CPU1: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_CPU2: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static EVENTS_CPU3: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
/// Mmapable, as tcptrace's `SOCKETS`: for its page-aligned values.
#[map]
static ENTRIES: Array<SockEntry> =
    Array::with_max_entries(ENTRIES_MAX, aya_ebpf::bindings::BPF_F_MMAPABLE);
#[map]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(64, 0);

/// What every floor reads of the record (at constant offsets, as tcptrace).
struct Fields {
    skaddr: u64,
    old: u8,
    new: u8,
}

#[inline(always)]
fn read<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: an in-bounds, aligned read of the tracepoint record.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset).cast::<T>()) }
}

#[inline(always)]
fn fields(ctx: &TracePointContext) -> Option<Fields> {
    if read::<u16>(ctx, core::mem::offset_of!(InetSockSetStateArgs, protocol)) != IPPROTO_TCP {
        return None;
    }
    Some(Fields {
        skaddr: read(ctx, core::mem::offset_of!(InetSockSetStateArgs, skaddr)),
        old: read::<i32>(ctx, core::mem::offset_of!(InetSockSetStateArgs, oldstate)) as u8,
        new: read::<i32>(ctx, core::mem::offset_of!(InetSockSetStateArgs, newstate)) as u8,
    })
}

/// The socket's entry (or the way to take) and whether it is its own, as
/// tcptrace finds it.
#[inline(always)]
fn entry(skaddr: u64) -> Option<(*mut SockEntry, bool)> {
    let first = socket_set(skaddr, SETS) * SOCKET_WAYS;
    let mut victim = None;
    let mut oldest = u64::MAX;
    for way in 0..SOCKET_WAYS {
        let p = ENTRIES.get_ptr_mut(first + way)?;
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

/// The entry's dwell time read and its new state written, with `owner`
/// unless 0 (freed at CLOSE); the dwell time, 0 when unknown.
#[inline(always)]
fn touch_entry(f: &Fields, now: u64, owner: u32) -> u64 {
    let Some((e, found)) = entry(f.skaddr) else {
        return 0;
    };
    // SAFETY: an array value; TCP serialises a socket's transitions.
    unsafe {
        let dwell = if found && (*e).state == f.old {
            now.saturating_sub((*e).entered_ns)
        } else {
            0
        };
        if f.new == CLOSE {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).skaddr), 0);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).entered_ns), 0);
        } else {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).skaddr), f.skaddr);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).entered_ns), now);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).state), f.new);
            if owner != 0 {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).owner), owner);
            }
        }
        dwell
    }
}

/// One per-CPU counter: the dwell time's log2 bucket.
#[inline(always)]
fn count(dwell: u64) {
    if let Some(n) = COUNTS.get_ptr_mut(u32::from(log2_bucket(dwell / 1000) & 63)) {
        // SAFETY: this CPU's slot; the kernel never nests runs on one CPU.
        unsafe { *n += 1 };
    }
}

/// A record in the ring buffer of this CPU, as tcptrace writes one (the
/// addresses, the ports, the owner and its name), woken as tcptrace wakes
/// the reader.
#[inline(always)]
fn emit(ctx: &TracePointContext, f: &Fields, now: u64, owner: u32, comm: [u64; 2]) {
    // SAFETY: takes no arguments.
    match unsafe { bpf_get_smp_processor_id() } % CPU_RINGS {
        0 => emit_to(&EVENTS_CPU0, ctx, f, now, owner, comm),
        1 => emit_to(&EVENTS_CPU1, ctx, f, now, owner, comm),
        2 => emit_to(&EVENTS_CPU2, ctx, f, now, owner, comm),
        _ => emit_to(&EVENTS_CPU3, ctx, f, now, owner, comm),
    }
}

#[inline(always)]
fn emit_to(
    ring: &RingBuf,
    ctx: &TracePointContext,
    f: &Fields,
    now: u64,
    owner: u32,
    comm: [u64; 2],
) {
    let Some(mut entry) = ring.reserve::<StateEvent>(0) else {
        return;
    };
    let e = entry.as_mut_ptr().cast::<u64>();
    let at = |o: usize| core::mem::offset_of!(InetSockSetStateArgs, saddr_v6) + o;
    // SAFETY: a reserved record of 104 bytes, written as 13 words.
    unsafe {
        core::ptr::write_volatile(e, now);
        core::ptr::write_volatile(e.add(1), f.skaddr);
        core::ptr::write_volatile(e.add(2), 0);
        core::ptr::write_volatile(e.add(3), 0);
        for i in 0..4 {
            core::ptr::write_volatile(e.add(4 + i), read::<u64>(ctx, at(i * 8)));
        }
        core::ptr::write_volatile(e.add(8), u64::from(owner) | (u64::MAX << 32));
        core::ptr::write_volatile(
            e.add(9),
            u64::from(read::<u32>(
                ctx,
                core::mem::offset_of!(InetSockSetStateArgs, sport),
            )) | u64::from(f.old) << 48
                | u64::from(f.new) << 56
                | 2 << 32,
        );
        core::ptr::write_volatile(e.add(10), 1);
        core::ptr::write_volatile(e.add(11), comm[0]);
        core::ptr::write_volatile(e.add(12), comm[1]);
    }
    let pending = ring.query(0);
    let flags = if pending >= WAKEUP_BYTES && pending < WAKEUP_BYTES + RECORD_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}

/// The owner's pid and name where the task is the owner (a transition
/// only a system call makes), as tcptrace learns it.
#[inline(always)]
fn owner(f: &Fields) -> (u32, [u64; 2]) {
    let in_process = TcpState::from_kernel(f.new).is_some_and(TcpState::entered_in_process_context);
    let mut comm = [1u64; 2];
    if !in_process {
        // SAFETY: both words are within `comm`.
        unsafe {
            core::ptr::write_volatile(comm.as_mut_ptr(), 0);
            core::ptr::write_volatile(comm.as_mut_ptr().add(1), 0);
        }
        return (0, comm);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a writable buffer of TASK_COMM_LEN bytes.
    unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) };
    (tgid, comm)
}

#[tracepoint]
pub fn floor_entry(ctx: TracePointContext) -> u32 {
    if let Some(f) = fields(&ctx) {
        // SAFETY: takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        count(touch_entry(&f, now, 0));
    }
    0
}

#[tracepoint]
pub fn floor_ring(ctx: TracePointContext) -> u32 {
    if let Some(f) = fields(&ctx) {
        // SAFETY: takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        emit_to(&EVENTS, &ctx, &f, now, 0, [0; 2]);
    }
    0
}

#[tracepoint]
pub fn floor_ring_cpu(ctx: TracePointContext) -> u32 {
    if let Some(f) = fields(&ctx) {
        // SAFETY: takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        emit(&ctx, &f, now, 0, [0; 2]);
    }
    0
}

#[tracepoint]
pub fn floor_stream(ctx: TracePointContext) -> u32 {
    if let Some(f) = fields(&ctx) {
        // SAFETY: takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let (pid, comm) = owner(&f);
        touch_entry(&f, now, pid);
        emit(&ctx, &f, now, pid, comm);
    }
    0
}

/// Without the owner learning leaks does: with it (the pid into the
/// socket's entry in process context, the entry freed at CLOSE) this floor
/// cost 113 ns/event against leaks' own 76 (bench at 01fc7a2, Intel host),
/// more than the mode, so no longer a lower bound.
#[tracepoint]
pub fn floor_cw(ctx: TracePointContext) -> u32 {
    if let Some(f) = fields(&ctx)
        && (f.old == CLOSE_WAIT || f.new == CLOSE_WAIT)
    {
        // SAFETY: takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        emit(&ctx, &f, now, 0, [0; 2]);
    }
    0
}

#[tracepoint]
pub fn floor_serve(ctx: TracePointContext) -> u32 {
    if let Some(f) = fields(&ctx) {
        // SAFETY: takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        count(touch_entry(&f, now, 0));
        if f.old == CLOSE_WAIT || f.new == CLOSE_WAIT {
            emit(&ctx, &f, now, 0, [0; 2]);
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
