//! What the kernel is told at start about sockets older than it: who holds
//! each one (by inode, from `/proc/*/fd`) and who owns each listener (per
//! network namespace and port), in every network namespace. Written after
//! the program is attached, then marked complete, so no socket falls between
//! the scan and the attach.

use anyhow::Context as _;
use tcptrace_common::{INODE_OWNERS_SEEDED, KnownOwner, ListenKey, TcpState};

use crate::{
    host::names::Names,
    host::{holders::HolderIndex, netns},
    kernel::loader::OwnerMaps,
    model::{owner::Comm, selection::Selection},
};

/// What seeding found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub sockets: usize,
    pub listeners: usize,
    /// Sockets left out because the map was full (they stay unknown).
    pub left_out: usize,
}

pub fn owners(
    maps: &mut OwnerMaps,
    selection: &Selection,
    names: &mut Names,
) -> anyhow::Result<Seeded> {
    let mut index = HolderIndex::new();
    index.full_scan();
    let states = u32::from(TcpState::mask(&TcpState::ALL));
    let host = netns::dump_all(
        &index.namespaces(),
        states,
        selection.family.map(|f| f.af()),
        netns::Route::available(),
    )
    .context("listing the TCP sockets of every network namespace")?;
    for (ns, why) in &host.unreadable {
        eprintln!(
            "tcptrace: warning: network namespace {ns} unreadable ({why}); owners of its sockets older than tcptrace are unknown"
        );
    }
    let mut seeded = Seeded::default();
    for s in &host.sockets {
        let Some(h) = (s.inode != 0)
            .then(|| index.cached(s.inode).into_iter().next())
            .flatten()
        else {
            continue;
        };
        let comm = Comm::new(h.comm.as_bytes());
        names.learn(h.pid, comm);
        let owner = KnownOwner {
            tgid: h.pid,
            passes: u32::from(selection.owner_passes(h.pid, &comm)),
        };
        if s.state == TcpState::Listen as u8 {
            let key = ListenKey::new(s.netns as u32, s.sport);
            maps.listeners
                .insert(key, owner, 0)
                .context("seeding the kernel's listener owners")?;
            seeded.listeners += 1;
        } else if let Some(inodes) = &mut maps.inodes {
            if seeded.sockets >= maps.inode_room {
                seeded.left_out += 1;
                continue;
            }
            inodes
                .insert(s.inode, owner, 0)
                .context("seeding the kernel's socket owners")?;
            seeded.sockets += 1;
        }
    }
    if let Some(inodes) = &mut maps.inodes {
        inodes
            .insert(INODE_OWNERS_SEEDED, KnownOwner { tgid: 0, passes: 0 }, 0)
            .context("marking the kernel's socket owners complete")?;
    }
    if seeded.left_out > 0 {
        eprintln!(
            "tcptrace: warning: {} sockets older than tcptrace left out of the owner map (--max-sockets); their owners are unknown",
            seeded.left_out
        );
    }
    Ok(seeded)
}
