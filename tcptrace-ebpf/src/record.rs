//! The tracepoint records, read in place with plain context loads at the
//! offsets of the shared layouts (the loader checks them against the running
//! kernel's `format` files before loading). A `bpf_probe_read_kernel` copy of
//! the record cost ~100 ns per event here (a helper call behind the kernel's
//! return-thunk mitigations), as much as all the rest of `leaks`' path. Every
//! load is at a constant offset from the context pointer, the only form the
//! verifier accepts.
//!
//! So only a kernel that moved a field pays for a copy (50-150 ns more per
//! event in `leaks` and `hist`, bpf_stats here): its `*_moved` programs,
//! which the loader loads instead, copy the record into `MOVED_RECORD`,
//! write its fields back at the compiled offsets and read that with the very
//! code the others run. Code of their own after the copy was not the same
//! to LLVM, whose spills of undefined values 5.10's verifier refused.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::map,
    maps::PerCpuArray,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, AF_INET6, Filter, INET_SOCK_SET_STATE_FIELDS, IPPROTO_TCP, InetSockSetStateArgs,
    MAX_FILTER_PORTS, RecordLayout, SYS_EXIT_RET_OFFSET,
};

use crate::load;

/// Per CPU, for the `*_moved` programs: the record as the kernel wrote it,
/// then its fields at the compiled offsets.
#[map]
static MOVED_RECORD: PerCpuArray<[u64; RecordLayout::COPIED / 4]> =
    PerCpuArray::with_max_entries(1, 0);

/// One TCP state change.
pub struct Transition {
    pub skaddr: u64,
    pub old: u8,
    pub new: u8,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// In 32-bit words; IPv4 in the first.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

impl Transition {
    /// This state's bit and the old one's ([`tcptrace_common::TcpState::mask`]).
    pub fn state_bits(&self) -> u16 {
        state_bit(self.old) | state_bit(self.new)
    }
}

pub fn state_bit(state: u8) -> u16 {
    if state < 16 { 1 << state } else { 0 }
}

/// The transition, if it is TCP's.
#[inline(always)]
pub fn transition(ctx: &TracePointContext) -> Option<Transition> {
    transition_at(ctx, ctx.as_ptr() as *const u8)
}

/// The transition in a record at `base` with the compiled layout.
#[inline(always)]
fn transition_at(ctx: &TracePointContext, base: *const u8) -> Option<Transition> {
    let at = |offset: usize| base.wrapping_add(offset);
    macro_rules! field {
        ($name:ident, $ty:ty) => {
            // SAFETY: an in-bounds, aligned read of the tracepoint record.
            unsafe {
                core::ptr::read_volatile(
                    at(core::mem::offset_of!(InetSockSetStateArgs, $name)) as *const $ty
                )
            }
        };
    }
    if field!(protocol, u16) != IPPROTO_TCP {
        return None;
    }
    let family = field!(family, u16);
    let words = |offset: usize| -> [u32; 4] {
        // SAFETY: as above; 16 bytes read as two aligned u64.
        let (lo, hi) = unsafe {
            (
                core::ptr::read_volatile(at(offset) as *const u64),
                core::ptr::read_volatile(at(offset + 8) as *const u64),
            )
        };
        [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
    };
    let (saddr, daddr) = match family {
        AF_INET => ([field!(saddr, u32), 0, 0, 0], [field!(daddr, u32), 0, 0, 0]),
        AF_INET6 => (
            words(core::mem::offset_of!(InetSockSetStateArgs, saddr_v6)),
            words(core::mem::offset_of!(InetSockSetStateArgs, daddr_v6)),
        ),
        other => {
            warn!(ctx, "tcptrace: unexpected address family {}", other);
            return None;
        }
    };
    Some(Transition {
        skaddr: field!(skaddr, u64),
        old: field!(oldstate, i32) as u8,
        new: field!(newstate, i32) as u8,
        sport: field!(sport, u16),
        dport: field!(dport, u16),
        family,
        saddr,
        daddr,
    })
}

/// The transition of a kernel whose record has fields elsewhere: copied,
/// its fields written back at the compiled offsets (each within the copy, as
/// the loader checked), then read as everywhere else.
#[inline(always)]
pub fn moved_transition(ctx: &TracePointContext, layout: &RecordLayout) -> Option<Transition> {
    let buf = MOVED_RECORD.get_ptr_mut(0)?.cast::<u8>();
    // SAFETY: the map value holds 2 × COPIED bytes; the copy fills the first.
    let raw = unsafe { core::slice::from_raw_parts_mut(buf, RecordLayout::COPIED) };
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, raw) }.ok()?;
    let compiled = buf.wrapping_add(RecordLayout::COPIED);
    for (i, (_, offset, size)) in INET_SOCK_SET_STATE_FIELDS.into_iter().enumerate() {
        let from = usize::from(load(&layout.state_change[i]));
        // SAFETY: both within the map value: the field within the copy
        // (checked by the loader), the compiled one within 72 bytes.
        unsafe { core::ptr::copy_nonoverlapping(buf.add(from), compiled.add(offset), size) };
    }
    transition_at(ctx, compiled)
}

/// `ret` of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> i64 {
    let at = (ctx.as_ptr() as *const u8).wrapping_add(SYS_EXIT_RET_OFFSET);
    // SAFETY: an in-bounds, aligned read of the tracepoint record.
    unsafe { core::ptr::read_volatile(at as *const i64) }
}

/// `ret`, at the offset the loader found; -1 (no fd) on a fault.
#[inline(always)]
pub fn moved_syscall_ret(ctx: &TracePointContext, layout: &RecordLayout) -> i64 {
    let at = ctx.as_ptr() as u64 + u64::from(load(&layout.sys_exit_ret));
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(at as *const i64) }.unwrap_or(-1)
}

/// The family and port filters (the owner filter is applied where owners are known).
#[inline(always)]
pub fn passes(t: &Transition, f: &Filter) -> bool {
    let family = load(&f.family);
    (family == 0 || family == t.family)
        && port_passes(t.sport, &f.lports, load(&f.n_lports))
        && port_passes(t.dport, &f.rports, load(&f.n_rports))
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
