//! Where things are in the running kernel: the member offsets the kernel
//! program follows with `bpf_probe_read_kernel` (a socket's inode and network
//! namespace, the current process's name, the socket behind an accepted fd,
//! the user stack pointer at a system call). They move between kernel
//! versions and configs, so they are read from `/sys/kernel/btf/vmlinux` at
//! start instead of compiled in.

use anyhow::{Context, Result};
use tcptrace_common::KernelLayout;

use crate::kernel::btf::Btf;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The layout of the running kernel, and what could not be found in it,
/// each as one line saying what is lost.
pub fn kernel_layout() -> Result<(KernelLayout, Vec<String>)> {
    let bytes = std::fs::read(VMLINUX_BTF).with_context(|| {
        format!("reading {VMLINUX_BTF} (is the kernel built with CONFIG_DEBUG_INFO_BTF?)")
    })?;
    layout_from(&bytes, VMLINUX_BTF)
}

/// [`kernel_layout`] from BTF bytes.
pub fn layout_from(bytes: &[u8], origin: &str) -> Result<(KernelLayout, Vec<String>)> {
    let btf = Btf::parse_from(bytes, origin)?;
    let mut l = KernelLayout::NONE;
    let mut missing = Vec::new();
    // Each group of members serves one purpose, found whole or not at all.
    let mut group = |what: &str, lookups: &[(&str, &[(&str, &str)])]| -> Option<Vec<u32>> {
        let mut found = Vec::new();
        for (name, path) in lookups {
            let mut total = 0u32;
            for (st, member) in path.iter() {
                match btf.member_offset(st, member) {
                    Ok(off) => total = total.saturating_add(off),
                    Err(e) => {
                        missing.push(format!("{what}: {name}: {e:#}"));
                        return None;
                    }
                }
            }
            found.push(total);
        }
        Some(found)
    };
    if let Some(v) = group(
        "socket inodes (owners of sockets older than tcptrace, leak holders)",
        &[
            ("sock.sk_socket", &[("sock", "sk_socket")]),
            ("socket_alloc.vfs_inode", &[("socket_alloc", "vfs_inode")]),
            ("inode.i_ino", &[("inode", "i_ino")]),
        ],
    ) {
        (l.sock_sk_socket, l.socket_alloc_vfs_inode, l.inode_i_ino) = (v[0], v[1], v[2]);
    }
    // possible_net_t's only member, the struct net pointer, is at offset 0.
    if let Some(v) = group(
        "network namespaces (listeners' owners per namespace)",
        &[
            (
                "sock.__sk_common.skc_net",
                &[("sock", "__sk_common"), ("sock_common", "skc_net")],
            ),
            ("net.ns.inum", &[("net", "ns"), ("ns_common", "inum")]),
        ],
    ) {
        (l.sock_net, l.net_inum) = (v[0], v[1]);
    }
    if let Some(v) = group(
        "process names (a thread's own name is used instead)",
        &[
            (
                "task_struct.group_leader",
                &[("task_struct", "group_leader")],
            ),
            ("task_struct.comm", &[("task_struct", "comm")]),
        ],
    ) {
        (l.task_group_leader, l.task_comm) = (v[0], v[1]);
    }
    if let Some(v) = group(
        "accepted sockets (their owner stays the listener's until they change state)",
        &[
            ("task_struct.files", &[("task_struct", "files")]),
            ("files_struct.fdt", &[("files_struct", "fdt")]),
            ("fdtable.fd", &[("fdtable", "fd")]),
            ("fdtable.max_fds", &[("fdtable", "max_fds")]),
            ("file.private_data", &[("file", "private_data")]),
            ("socket.sk", &[("socket", "sk")]),
            (
                "sock.__sk_common.skc_family",
                &[("sock", "__sk_common"), ("sock_common", "skc_family")],
            ),
        ],
    ) {
        (
            l.task_files,
            l.files_fdt,
            l.fdtable_fd,
            l.fdtable_max_fds,
            l.file_private_data,
            l.socket_sk,
            l.sock_family,
        ) = (v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    }
    if let Some(v) = group(
        "the callers of system-call wrappers in stacks (the function that opened a socket may be missing)",
        &[("pt_regs.sp", &[("pt_regs", "sp")])],
    ) {
        l.pt_regs_sp = v[0];
    }
    Ok((l, missing))
}
