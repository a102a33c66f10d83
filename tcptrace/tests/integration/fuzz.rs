//! Property tests over untrusted input: ring-buffer records, netlink replies,
//! BTF blobs and every command-line value parser must return a value or an
//! error, never panic; valid records must round-trip.

use proptest::prelude::*;
use std::mem::offset_of;
use tcptrace::{
    cli,
    host::sockdiag,
    kernel::{btf::Btf, decode},
};

use tcptrace_common::{AF_INET, AF_INET6, STATE_EVENT_SIZE, StateEvent};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match decode::decode(&bytes) {
            Ok(ev) => {
                prop_assert!(bytes.len() >= STATE_EVENT_SIZE);
                prop_assert!((1..=12).contains(&(ev.oldstate as u8)));
                prop_assert!((1..=12).contains(&(ev.newstate as u8)));
            }
            Err(decode::DecodeError::Short(n)) => prop_assert!(n < STATE_EVENT_SIZE),
            Err(_) => prop_assert!(bytes.len() >= STATE_EVENT_SIZE),
        }
    }

    #[test]
    fn valid_records_decode_to_their_fields(
        ts in any::<u64>(), sk in any::<u64>(), sport in any::<u16>(), dport in any::<u16>(),
        old in 1u8..=12, new in 1u8..=12, v6 in any::<bool>(), addr in any::<[u8; 16]>(),
    ) {
        // Written at the shared record's own offsets, never repeated here.
        let mut raw = vec![0u8; STATE_EVENT_SIZE];
        let mut put = |at: usize, bytes: &[u8]| raw[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(StateEvent, ts_ns), &ts.to_ne_bytes());
        put(offset_of!(StateEvent, skaddr), &sk.to_ne_bytes());
        put(offset_of!(StateEvent, saddr), &addr);
        put(offset_of!(StateEvent, sport), &sport.to_ne_bytes());
        put(offset_of!(StateEvent, dport), &dport.to_ne_bytes());
        put(offset_of!(StateEvent, family), &(if v6 { AF_INET6 } else { AF_INET }).to_ne_bytes());
        put(offset_of!(StateEvent, oldstate), &[old]);
        put(offset_of!(StateEvent, newstate), &[new]);
        let ev = decode::decode(&raw).unwrap();
        prop_assert_eq!((ev.ts_ns, ev.skaddr, ev.lport, ev.rport), (ts, sk, sport, dport));
        prop_assert_eq!((ev.oldstate as u8, ev.newstate as u8), (old, new));
        let want: std::net::IpAddr = if v6 {
            std::net::Ipv6Addr::from(addr).into()
        } else {
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
        };
        prop_assert_eq!(ev.laddr, want);
    }

    #[test]
    fn netlink_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = sockdiag::parse_messages(&bytes, &mut out);
    }

    #[test]
    fn btf_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(btf) = Btf::parse(&bytes) {
            let _ = btf.member_offset("sock", "sk_socket");
        }
    }

    #[test]
    fn value_parsers_never_panic(s in ".{0,40}") {
        let _ = cli::parse_ports(&s);
        let _ = cli::parse_pid(&s);
        let _ = cli::parse_state(&s);
        let _ = cli::parse_duration(&s);
        let _ = cli::parse_duration_or_zero(&s);
        let _ = cli::parse_ring_size(&s);
        let _ = cli::parse_max_sockets(&s);
    }

    #[test]
    fn port_lists_round_trip(ports in proptest::collection::vec(1u16.., 1..16)) {
        let text: Vec<String> = ports.iter().map(u16::to_string).collect();
        let parsed = cli::parse_ports(&text.join(",")).unwrap().0;
        let mut want = ports.clone();
        let mut seen = std::collections::HashSet::new();
        want.retain(|p| seen.insert(*p));
        prop_assert_eq!(parsed, want);
    }

    #[test]
    fn whole_command_lines_never_panic(args in proptest::collection::vec("[-a-zA-Z0-9_,.:]{0,12}", 0..6)) {
        let mut argv = vec!["tcptrace".to_owned(), "watch".to_owned()];
        argv.extend(args);
        if let Err(e) = <cli::Cli as clap::Parser>::try_parse_from(&argv) {
            let line = cli::one_line_error(&e);
            prop_assert!(!line.contains('\n'));
        }
    }
}
