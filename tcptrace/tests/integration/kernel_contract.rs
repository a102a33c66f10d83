//! The kernel facts the program relies on, checked on the running kernel
//! with the loader's own checks: the tracepoint record layouts and state
//! names (tracefs), and the member offsets it follows (BTF).

use tcptrace::kernel::{btf, tracefs};
use tcptrace_common::{KernelLayout, TcpState};

fn state_change_format() -> String {
    // Mount it the way tcptrace does; the test must not skip.
    tracefs::ensure_mounted().expect("tracefs");
    tracefs::format(tracefs::STATE_CHANGE).expect("the sock:inet_sock_set_state tracepoint")
}

#[test]
fn tracepoint_record_layout_matches_the_shared_struct() {
    tracefs::check_state_change_layout(&state_change_format()).unwrap();
}

#[test]
fn accept_exit_records_have_ret_where_the_program_reads_it() {
    tracefs::ensure_mounted().expect("tracefs");
    for name in ["sys_exit_accept4", "sys_exit_accept"] {
        let f = tracefs::format(("syscalls", name)).unwrap_or_else(|e| panic!("{e:#}"));
        tracefs::check_sys_exit_layout(&f).unwrap_or_else(|e| panic!("{name}: {e:#}"));
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
    let (layout, missing) = btf::kernel_layout().expect("kernel BTF at /sys/kernel/btf/vmlinux");
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
