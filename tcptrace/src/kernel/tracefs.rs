//! tracefs: where the tracepoints are found, mounted on demand, and the
//! `format` files that describe their records on the running kernel.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use tcptrace_common::{INET_SOCK_SET_STATE_FIELDS, RecordLayout};

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The state-change tracepoint every mode attaches to.
pub const STATE_CHANGE: (&str, &str) = ("sock", "inet_sock_set_state");

/// Makes sure tracefs is there, mounting it when it is missing.
pub fn ensure_mounted() -> Result<()> {
    // tracefs is mode 0700: without root, reading it takes CAP_DAC_READ_SEARCH.
    if let Err(e) = std::fs::read_dir(TRACEFS)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        bail!(
            "cannot read {TRACEFS} (permission denied): run as root or grant CAP_DAC_READ_SEARCH"
        );
    }
    if event_dir(STATE_CHANGE).is_some() {
        return Ok(());
    }
    if !Path::new(TRACEFS).join("events").exists() {
        crate::host::sys::mount_tracefs(TRACEFS).map_err(|err| {
            anyhow::anyhow!(
                "tracefs is not mounted and mounting it failed ({err}): run `mount -t tracefs nodev {TRACEFS}`"
            )
        })?;
    }
    if event_dir(STATE_CHANGE).is_none() {
        bail!(
            "tracepoint {}:{} not found in {TRACEFS}/events: the kernel needs CONFIG_TRACEPOINTS and version >= 4.16",
            STATE_CHANGE.0,
            STATE_CHANGE.1
        );
    }
    Ok(())
}

/// The directory of a tracepoint under tracefs (or debugfs), if it exists.
pub fn event_dir((group, name): (&str, &str)) -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(|root| Path::new(root).join("events").join(group).join(name))
        .find(|p| p.exists())
}

/// A tracepoint's `format` file.
pub fn format(event: (&str, &str)) -> Result<String> {
    let dir = event_dir(event)
        .with_context(|| format!("tracepoint {}:{} not found", event.0, event.1))?;
    let path = dir.join("format");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `(offset, size)` of a field in a `format` file:
/// `field:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;`.
pub fn field(format: &str, name: &str) -> Option<(usize, usize)> {
    let line = format.lines().find(|l| {
        l.trim_start().starts_with("field:")
            && l.split(';').next().is_some_and(|decl| {
                let decl = decl.trim_end();
                decl.ends_with(&format!(" {name}"))
                    || decl.ends_with(&format!("*{name}"))
                    || decl.contains(&format!(" {name}["))
            })
    })?;
    let num = |key: &str| -> Option<usize> {
        line.split(';')
            .find_map(|p| p.trim().strip_prefix(key))?
            .parse()
            .ok()
    };
    Some((num("offset:")?, num("size:")?))
}

/// Where the running kernel's state-change record has each field the program
/// reads, in [`INET_SOCK_SET_STATE_FIELDS`]' order. A field that moved with
/// its size is read where it is now; one that is missing, changed size or
/// ends past what the program copies is refused by name, never read wrongly.
pub fn state_change_offsets(format: &str) -> Result<[u16; INET_SOCK_SET_STATE_FIELDS.len()]> {
    let mut offsets = [0; INET_SOCK_SET_STATE_FIELDS.len()];
    for ((name, offset, size), at) in INET_SOCK_SET_STATE_FIELDS.into_iter().zip(&mut offsets) {
        let (group, event) = STATE_CHANGE;
        match field(format, name) {
            Some((o, s)) if s == size && o + s <= RecordLayout::COPIED => *at = o as u16,
            Some((o, s)) => bail!(
                "this kernel's {group}:{event} record has {name} at offset {o} (size {s}); tcptrace reads it at {offset} (size {size}) or wherever it moved with its size within the first {} bytes: unsupported kernel (Linux >= 5.8 is needed)",
                RecordLayout::COPIED
            ),
            None => bail!(
                "this kernel's {group}:{event} record has no field {name}: unsupported kernel"
            ),
        }
    }
    Ok(offsets)
}

/// Where a `syscalls:sys_exit_*` record has its `ret` (a `long`).
pub fn sys_exit_ret_offset(format: &str) -> Result<u16> {
    match field(format, "ret") {
        Some((o, 8)) if o + 8 <= RecordLayout::COPIED => Ok(o as u16),
        other => bail!("ret is at {other:?}, not at an offset with size 8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6_1: &str = "name: inet_sock_set_state
ID: 1390
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn fields_are_read_from_format_text() {
        assert_eq!(field(V6_1, "skaddr"), Some((8, 8)));
        assert_eq!(field(V6_1, "saddr"), Some((32, 4)));
        assert_eq!(field(V6_1, "saddr_v6"), Some((40, 16)));
        assert_eq!(field(V6_1, "common_pid"), Some((4, 4)));
        assert_eq!(field(V6_1, "nope"), None);
        assert_eq!(
            state_change_offsets(V6_1).unwrap(),
            RecordLayout::COMPILED.state_change
        );
    }

    #[test]
    fn a_field_that_moved_with_its_size_is_read_where_it_is() {
        // As if a kernel swapped family and protocol and inserted 8 bytes
        // before the addresses.
        let moved = V6_1
            .replace("family;\toffset:28", "family;\toffset:30")
            .replace("protocol;\toffset:30", "protocol;\toffset:28")
            .replace("saddr[4];\toffset:32", "saddr[4];\toffset:40")
            .replace("daddr[4];\toffset:36", "daddr[4];\toffset:44")
            .replace("saddr_v6[16];\toffset:40", "saddr_v6[16];\toffset:48")
            .replace("daddr_v6[16];\toffset:56", "daddr_v6[16];\toffset:64");
        let offsets = state_change_offsets(&moved).unwrap();
        let at = |i: usize| offsets[i];
        assert_eq!(at(RecordLayout::SKADDR), 8);
        assert_eq!(at(RecordLayout::FAMILY), 30);
        assert_eq!(at(RecordLayout::PROTOCOL), 28);
        assert_eq!(at(RecordLayout::SADDR), 40);
        assert_eq!(at(RecordLayout::DADDR_V6), 64);
        // Past what the program copies: refused, not read short.
        let far = V6_1.replace("daddr_v6[16];\toffset:56", "daddr_v6[16];\toffset:120");
        let e = state_change_offsets(&far).unwrap_err().to_string();
        assert!(e.contains("daddr_v6 at offset 120 (size 16)"), "{e}");
    }

    #[test]
    fn a_field_that_changed_size_is_refused_by_name() {
        // Before Linux 5.6 the protocol was a __u8 and the addresses followed it.
        let old = V6_1
            .replace(
                "__u16 protocol;\toffset:30;\tsize:2",
                "__u8 protocol;\toffset:30;\tsize:1",
            )
            .replace("saddr[4];\toffset:32", "saddr[4];\toffset:31");
        let e = state_change_offsets(&old).unwrap_err().to_string();
        assert!(e.contains("protocol at offset 30 (size 1)"), "{e}");
        let e = state_change_offsets(&V6_1.replace("daddr_v6", "x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no field daddr_v6"), "{e}");
    }

    #[test]
    fn sys_exit_ret() {
        let f = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        assert_eq!(sys_exit_ret_offset(f).unwrap(), 16);
        assert_eq!(
            sys_exit_ret_offset(&f.replace("offset:16", "offset:24")).unwrap(),
            24
        );
        assert!(sys_exit_ret_offset(&f.replace("size:8", "size:4")).is_err());
    }

    // The same checks on the running kernel: what the loader relies on.

    use tcptrace_common::{KernelLayout, TcpState};

    use crate::kernel::layout;

    fn state_change_format() -> String {
        // Mount it the way tcptrace does; the test must not skip.
        ensure_mounted().expect("tracefs");
        format(STATE_CHANGE).expect("the sock:inet_sock_set_state tracepoint")
    }

    #[test]
    fn tracepoint_record_layout_matches_the_shared_struct() {
        assert_eq!(
            state_change_offsets(&state_change_format()).unwrap(),
            RecordLayout::COMPILED.state_change
        );
    }

    #[test]
    fn accept_exit_records_have_ret_where_the_program_reads_it() {
        ensure_mounted().expect("tracefs");
        for name in ["sys_exit_accept4", "sys_exit_accept"] {
            let f = format(("syscalls", name)).unwrap_or_else(|e| panic!("{e:#}"));
            let ret = sys_exit_ret_offset(&f).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(ret, RecordLayout::COMPILED.sys_exit_ret, "{name}");
        }
    }

    #[test]
    fn state_numbers_and_names_match_the_kernel() {
        let f = state_change_format();
        for s in TcpState::ALL {
            let needle = format!("{{ {}, \"TCP_{}\" }}", s as u8, s.name());
            assert!(f.contains(&needle), "kernel format lacks {needle}");
        }
    }

    #[test]
    fn every_member_the_program_follows_is_in_this_kernels_btf() {
        let (layout, missing) =
            layout::kernel_layout().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        assert!(missing.is_empty(), "{missing:?}");
        let KernelLayout {
            sock_sk_socket,
            socket_alloc_vfs_inode,
            inode_i_ino,
            sock_net,
            net_inum,
            sock_family,
            task_group_leader,
            task_comm,
            task_files,
            files_fdt,
            fdtable_fd,
            fdtable_max_fds,
            file_private_data,
            socket_sk,
            pt_regs_sp,
            _pad,
        } = layout;
        for v in [
            sock_sk_socket,
            socket_alloc_vfs_inode,
            inode_i_ino,
            sock_net,
            net_inum,
            sock_family,
            task_group_leader,
            task_comm,
            task_files,
            files_fdt,
            fdtable_fd,
            fdtable_max_fds,
            file_private_data,
            socket_sk,
            pt_regs_sp,
        ] {
            assert!(v < 16384, "{layout:?}");
        }
    }
}
