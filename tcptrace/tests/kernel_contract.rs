//! The kernel facts the program relies on, checked on the running kernel:
//! the tracepoint record layout and state names, and the socket-inode walk.

use std::mem::offset_of;

use tcptrace::model::state::TcpState;
use tcptrace_common::InetSockSetStateArgs;

fn format_file() -> String {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if let Ok(s) =
            std::fs::read_to_string(format!("{dir}/events/sock/inet_sock_set_state/format"))
        {
            return s;
        }
    }
    // Mount it the way tcptrace does; the test must not skip.
    let out = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "cannot mount tracefs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string("/sys/kernel/tracing/events/sock/inet_sock_set_state/format")
        .expect("the sock:inet_sock_set_state tracepoint exists")
}

/// `field:__u16 sport;\toffset:24;\tsize:2;` -> (24, 2)
fn field(format: &str, name: &str) -> (usize, usize) {
    let line = format
        .lines()
        .find(|l| {
            l.split(';').next().is_some_and(|decl| {
                decl.trim_end().ends_with(&format!(" {name}"))
                    || decl.contains(&format!(" {name}["))
            })
        })
        .unwrap_or_else(|| panic!("no field {name} in format"));
    let num = |key: &str| -> usize {
        line.split(';')
            .find_map(|p| p.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {line}"))
            .parse()
            .unwrap()
    };
    (num("offset:"), num("size:"))
}

#[test]
fn tracepoint_record_layout_matches_the_shared_struct() {
    let f = format_file();
    let cases = [
        ("skaddr", offset_of!(InetSockSetStateArgs, skaddr), 8),
        ("oldstate", offset_of!(InetSockSetStateArgs, oldstate), 4),
        ("newstate", offset_of!(InetSockSetStateArgs, newstate), 4),
        ("sport", offset_of!(InetSockSetStateArgs, sport), 2),
        ("dport", offset_of!(InetSockSetStateArgs, dport), 2),
        ("family", offset_of!(InetSockSetStateArgs, family), 2),
        ("protocol", offset_of!(InetSockSetStateArgs, protocol), 2),
        ("saddr", offset_of!(InetSockSetStateArgs, saddr), 4),
        ("daddr", offset_of!(InetSockSetStateArgs, daddr), 4),
        ("saddr_v6", offset_of!(InetSockSetStateArgs, saddr_v6), 16),
        ("daddr_v6", offset_of!(InetSockSetStateArgs, daddr_v6), 16),
    ];
    for (name, offset, size) in cases {
        assert_eq!(field(&f, name), (offset, size), "field {name}");
    }
}

#[test]
fn state_numbers_and_names_match_the_kernel() {
    let f = format_file();
    for s in TcpState::ALL {
        let needle = format!("{{ {}, \"TCP_{}\" }}", s as u8, s.name());
        assert!(f.contains(&needle), "kernel format lacks {needle}");
    }
}

#[test]
fn btf_offsets_are_found_on_this_kernel() {
    let off = tcptrace::kernel::btf::socket_inode_offsets()
        .expect("kernel BTF at /sys/kernel/btf/vmlinux");
    for v in [
        off.sock_sk_socket,
        off.socket_alloc_vfs_inode,
        off.inode_i_ino,
    ] {
        assert!(v > 0 && v < 4096, "{off:?}");
    }
}
