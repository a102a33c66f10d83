//! Who owns a socket, decided in the kernel where the order of events is
//! known, never from the task that happens to be on the CPU (in softirq that
//! is `swapper`, `ksoftirqd`, or on loopback the peer):
//!
//! 1. a transition only a system call makes (connect, listen, close,
//!    shutdown: [`TcpState::entered_in_process_context`]) names its task's
//!    process, and so does the return of `accept()` for the socket it
//!    accepted: a holder, remembered in the socket's `SOCKETS` entry;
//! 2. a socket a listener creates in softirq takes the listener's owner
//!    (`LISTEN_OWNERS`, per network namespace and port) until it is accepted;
//! 3. a socket older than the program is looked up once by its inode in
//!    `INODE_OWNERS`, the holders userspace found in `/proc` at start;
//! 4. otherwise the owner is unknown, and says so.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tcptrace_common::{
    Config, EVICTED_SLOT, Filter, GROUP_PROCESS, KnownOwner, ListenKey, MAX_FILTER_PIDS,
    MODE_AGGREGATE, OWNER_INODE_CHECKED, OWNER_SOURCE_MASK, OWNERS_BY_INODE, OWNERS_TRACK,
    OwnerSource, SOCKET_WAYS, SockEntry, TcpState, socket_set, starts_lifecycle,
};

use crate::{
    COMMS, INODE_OWNERS, LISTEN_OWNERS, SOCKETS, bump,
    kernel::{self, CommBuf},
    load,
    record::Transition,
};

const CLOSE: u8 = TcpState::Close as u8;
/// The `INODE_OWNERS` key that marks the seeding as complete.
const SEEDED: u64 = tcptrace_common::INODE_OWNERS_SEEDED;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;

/// The owner decided for one transition.
#[derive(Clone, Copy)]
pub struct Owner {
    pub tgid: u32,
    /// An [`OwnerSource`], plus [`OWNER_INODE_CHECKED`].
    pub source: u8,
    /// Passes the pid and command-name filters.
    pub passes: bool,
}

impl Owner {
    /// Unknown; passing when no filter selects owners.
    fn unknown(f: &Filter, source: u8) -> Self {
        Self {
            tgid: 0,
            source: source & OWNER_INODE_CHECKED,
            passes: !by_owner(f),
        }
    }

    /// For views that do not track owners: unknown, and nothing filters on it.
    pub fn unknown_passing() -> Self {
        Self {
            tgid: 0,
            source: 0,
            passes: true,
        }
    }

    pub fn source(&self) -> OwnerSource {
        OwnerSource::from_kernel(self.source)
    }
}

/// An owner seen making this transition, in process context. Every field
/// always written (an `Option` would leave its payload undefined, which LLVM
/// may copy and the verifier refuses to read).
pub struct Learnt {
    /// Whether the transition named its owner; the rest is meaningless if not.
    pub seen: bool,
    pub tgid: u32,
    pub passes: bool,
    /// Whether `comm` holds its process name (asked for).
    pub named: bool,
    pub comm: CommBuf,
}

impl Learnt {
    const NONE: Self = Self {
        seen: false,
        tgid: 0,
        passes: false,
        named: false,
        comm: CommBuf::EMPTY,
    };
}

/// Whether owners are kept per socket (`SOCKETS` entries then hold them).
#[inline(always)]
pub fn tracked(cfg: &Config) -> bool {
    load(&cfg.owners) & OWNERS_TRACK != 0
}

/// The owner, if this transition is one only its owner's system call makes.
/// Listeners are remembered (and forgotten) here, whatever the filters: their
/// children may pass them. `comm`: read the process name (needed to emit it,
/// filter on it or name a group).
#[inline(always)]
pub fn learn(t: &Transition, cfg: &Config, comm: bool) -> Learnt {
    if !tracked(cfg) {
        return Learnt::NONE;
    }
    let Some(state) = TcpState::from_kernel(t.new) else {
        return Learnt::NONE;
    };
    let closes_listener = t.old == LISTEN && t.new == CLOSE;
    if !state.entered_in_process_context() && !closes_listener {
        return Learnt::NONE;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == 0 {
        return Learnt::NONE;
    }
    let f = &cfg.filter;
    let by_comm = load(&f.has_comm) != 0;
    let group_by_process =
        load(&cfg.mode) == MODE_AGGREGATE && load(&cfg.aggregate.group_by) == GROUP_PROCESS;
    let named = comm || by_comm || group_by_process;
    let name = if named {
        kernel::process_comm(&cfg.layout, kernel::is_leader(pid_tgid))
    } else {
        CommBuf::EMPTY
    };
    let passes = pid_passes(tgid, f) && (!by_comm || comm_matches(&name, f));
    if t.new == LISTEN || closes_listener {
        let key = ListenKey::new(kernel::socket_netns(t.skaddr, &cfg.layout), t.sport);
        if closes_listener {
            // SAFETY: a plain value compared at once.
            if unsafe { LISTEN_OWNERS.get(key) }.is_some_and(|o| o.tgid == tgid) {
                let _ = LISTEN_OWNERS.remove(key);
            }
            return Learnt::NONE;
        }
        let owner = KnownOwner {
            tgid,
            passes: u32::from(passes),
        };
        // Full: the oldest listener is forgotten (LRU); its children are then unknown.
        let _ = LISTEN_OWNERS.insert(key, owner, 0);
    }
    if group_by_process {
        remember_comm(tgid, &name);
    }
    Learnt {
        seen: true,
        tgid,
        passes,
        named,
        comm: name,
    }
}

/// Names `tgid` in `COMMS`; written only when the name is new (an LRU
/// insert costs more than the rest of the program).
fn remember_comm(tgid: u32, comm: &CommBuf) {
    let comm = comm.bytes();
    // SAFETY: a plain array compared at once.
    if unsafe { COMMS.get(tgid) } != Some(comm) {
        let _ = COMMS.insert(tgid, comm, 0);
    }
}

/// The socket's owner at this transition. `entry`: what `SOCKETS` holds
/// for it in this lifecycle. `full`: the transition passes the filters, so
/// an owner not learnt here is worth looking up.
#[inline(always)]
pub fn resolve(
    t: &Transition,
    cfg: &Config,
    learnt: &Learnt,
    entry: Option<&SockEntry>,
    full: bool,
) -> Owner {
    let f = &cfg.filter;
    let checked = entry.map_or(0, |e| e.owner_source & OWNER_INODE_CHECKED);
    if learnt.seen {
        return Owner {
            tgid: learnt.tgid,
            source: OwnerSource::Holder as u8 | checked,
            passes: learnt.passes,
        };
    }
    if let Some(e) = entry
        && e.owner_source & OWNER_SOURCE_MASK != OwnerSource::Unknown as u8
    {
        return Owner {
            tgid: e.owner,
            source: e.owner_source,
            passes: e.owner_passes != 0,
        };
    }
    if !full {
        return Owner::unknown(f, checked);
    }
    if t.old == LISTEN && t.new == SYN_RECV {
        let key = ListenKey::new(kernel::socket_netns(t.skaddr, &cfg.layout), t.sport);
        // SAFETY: a plain value copied out at once.
        return match unsafe { LISTEN_OWNERS.get(key) }.copied() {
            Some(o) => Owner {
                tgid: o.tgid,
                source: OwnerSource::Listener as u8,
                passes: o.passes != 0,
            },
            None => Owner::unknown(f, 0),
        };
    }
    if starts_lifecycle(t.old, t.new) || checked != 0 || load(&cfg.owners) & OWNERS_BY_INODE == 0 {
        return Owner::unknown(f, checked);
    }
    // Older than the program: the holder found in /proc at start, if any
    // (an inode is never reused while its socket lives). Looked up once.
    let inode = kernel::socket_inode(t.skaddr, &cfg.layout);
    // SAFETY: a plain value copied out at once.
    match (inode != 0)
        .then(|| unsafe { INODE_OWNERS.get(inode) }.copied())
        .flatten()
    {
        Some(o) => Owner {
            tgid: o.tgid,
            source: OwnerSource::Holder as u8 | OWNER_INODE_CHECKED,
            passes: o.passes != 0,
        },
        // Not there: final once userspace has written the end mark (key 0);
        // before that, the next transition looks again.
        // SAFETY: a presence test.
        None if unsafe { INODE_OWNERS.get(SEEDED) }.is_some() => {
            Owner::unknown(f, OWNER_INODE_CHECKED)
        }
        None => Owner::unknown(f, 0),
    }
}

/// `accept()` returned `sk`: it is held by the calling process.
#[inline(always)]
pub fn accepted(sk: u64, cfg: &Config) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let f = &cfg.filter;
    let by_comm = load(&f.has_comm) != 0;
    let group_by_process =
        load(&cfg.mode) == MODE_AGGREGATE && load(&cfg.aggregate.group_by) == GROUP_PROCESS;
    // No name unless needed, and none zeroed: see `kernel::process_comm`.
    let comm_passes = if by_comm || group_by_process {
        let comm = kernel::process_comm(&cfg.layout, kernel::is_leader(pid_tgid));
        if group_by_process {
            remember_comm(tgid, &comm);
        }
        !by_comm || comm_matches(&comm, f)
    } else {
        true
    };
    let passes = pid_passes(tgid, f) && comm_passes;
    let Some((entry, found)) = entry(sk, load(&cfg.socket_sets)) else {
        return;
    };
    // SAFETY: an array value, valid while the program runs; TCP serialises
    // a socket's changes, and a racing writer costs one stale owner at most.
    unsafe {
        if found {
            (*entry).owner = tgid;
            (*entry).owner_source = OwnerSource::Holder as u8;
            (*entry).owner_passes = u8::from(passes);
        } else {
            // Not seen since it was created: its times are unknown (state 0).
            // Every field named: `..SockEntry::FREE` left a 16-byte fill,
            // a call to a byte-loop memset.
            make_room(entry);
            *entry = SockEntry {
                skaddr: sk,
                entered_ns: bpf_ktime_get_ns(),
                handshake_ns: 0,
                owner: tgid,
                state: 0,
                handshake: tcptrace_common::HS_NONE,
                owner_source: OwnerSource::Holder as u8,
                owner_passes: u8::from(passes),
            };
        }
    }
}

/// The socket's entry in `SOCKETS` and whether it is its own: else the way
/// of its set to use for it, a free one (they have the oldest time, 0) or
/// the one written longest ago.
#[inline(always)]
pub fn entry(skaddr: u64, sets: u32) -> Option<(*mut SockEntry, bool)> {
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

/// Counts the eviction when `victim`, about to be taken, holds another socket.
///
/// # Safety
/// `victim` is an entry returned by [`entry`].
#[inline(always)]
pub unsafe fn make_room(victim: *mut SockEntry) {
    // SAFETY: per the contract.
    if unsafe { (*victim).skaddr } != 0 {
        bump(EVICTED_SLOT);
    }
}

/// Frees an entry: no socket, the oldest time. Field stores, not a 32-byte
/// fill (a call to a byte-loop memset).
///
/// # Safety
/// `e` is an entry returned by [`entry`].
#[inline(always)]
pub unsafe fn free(e: *mut SockEntry) {
    // SAFETY: per the contract.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).skaddr), 0);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).entered_ns), 0);
    }
}

/// Whether a pid or command-name filter selects owners.
#[inline(always)]
pub fn by_owner(f: &Filter) -> bool {
    load(&f.n_pids) != 0 || load(&f.has_comm) != 0
}

fn pid_passes(tgid: u32, f: &Filter) -> bool {
    let n = usize::from(load(&f.n_pids));
    if n == 0 {
        return true;
    }
    for (i, p) in f.pids.iter().enumerate() {
        if i >= n || i >= MAX_FILTER_PIDS {
            break;
        }
        if load(p) == tgid {
            return true;
        }
    }
    false
}

/// Byte by byte from the words, so the name need not be in memory (a
/// buffer in memory starts with a 16-byte fill: a call to a byte-loop memset).
fn comm_matches(comm: &CommBuf, f: &Filter) -> bool {
    let words = comm.words();
    f.comm
        .iter()
        .enumerate()
        .all(|(i, b)| (words[i / 4] >> (8 * (i % 4))) as u8 == load(b))
}
