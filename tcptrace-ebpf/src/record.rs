//! The tracepoint records, read in place with plain context loads at the
//! offsets of the shared layouts (the loader checks them against the running
//! kernel's `format` files before loading). A `bpf_probe_read_kernel` copy of
//! the record cost ~100 ns per event here (a helper call behind the kernel's
//! return-thunk mitigations), as much as all the rest of `leaks`' path. Every
//! load is at a constant offset from the context pointer, the only form the
//! verifier accepts.
//!
//! So a kernel that moved a field pays that copy (100-150 ns more per event
//! in `leaks` and `hist`, bpf_stats here), and only it: the loader
//! sets `RecordLayout::moved` in the read-only `CONFIG`, whose value the
//! verifier knows, so it prunes whichever path is not taken.

use aya_ebpf::{EbpfContext as _, helpers::bpf_probe_read_kernel_buf, programs::TracePointContext};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, AF_INET6, Filter, IPPROTO_TCP, InetSockSetStateArgs, MAX_FILTER_PORTS, RecordLayout,
    SYS_EXIT_RET_OFFSET,
};

use crate::load;

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
pub fn transition(ctx: &TracePointContext, layout: &RecordLayout) -> Option<Transition> {
    if load(&layout.moved) != 0 {
        return moved_transition(ctx, layout);
    }
    let base = ctx.as_ptr() as *const u8;
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

/// The transition from a copy of the record, at the offsets the loader
/// found in the running kernel's `format` file (each field within the copy).
#[inline(always)]
fn moved_transition(ctx: &TracePointContext, layout: &RecordLayout) -> Option<Transition> {
    let mut copy = [0u64; RecordLayout::COPIED / 8];
    // SAFETY: a checked read of the record into a buffer of COPIED bytes.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(copy.as_mut_ptr().cast::<u8>(), RecordLayout::COPIED)
    };
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, bytes) }.ok()?;
    let base = copy.as_ptr().cast::<u8>();
    macro_rules! field {
        ($index:ident, $ty:ty) => {
            // SAFETY: the loader checked the field ends within the copy; its
            // offset may be unaligned.
            unsafe {
                core::ptr::read_unaligned(base.add(usize::from(load(
                    &layout.state_change[RecordLayout::$index],
                ))) as *const $ty)
            }
        };
    }
    if field!(PROTOCOL, u16) != IPPROTO_TCP {
        return None;
    }
    let family = field!(FAMILY, u16);
    let (saddr, daddr) = match family {
        AF_INET => ([field!(SADDR, u32), 0, 0, 0], [field!(DADDR, u32), 0, 0, 0]),
        AF_INET6 => (field!(SADDR_V6, [u32; 4]), field!(DADDR_V6, [u32; 4])),
        other => {
            warn!(ctx, "tcptrace: unexpected address family {}", other);
            return None;
        }
    };
    Some(Transition {
        skaddr: field!(SKADDR, u64),
        old: field!(OLDSTATE, i32) as u8,
        new: field!(NEWSTATE, i32) as u8,
        sport: field!(SPORT, u16),
        dport: field!(DPORT, u16),
        family,
        saddr,
        daddr,
    })
}

/// `ret` of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext, layout: &RecordLayout) -> i64 {
    if load(&layout.moved) != 0 {
        let at = ctx.as_ptr() as u64 + u64::from(load(&layout.sys_exit_ret));
        // SAFETY: bpf_probe_read_kernel checks the address; a fault is no fd.
        return unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(at as *const i64) }.unwrap_or(-1);
    }
    let at = (ctx.as_ptr() as *const u8).wrapping_add(SYS_EXIT_RET_OFFSET);
    // SAFETY: an in-bounds, aligned read of the tracepoint record.
    unsafe { core::ptr::read_volatile(at as *const i64) }
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
