//! `tcptrace watch` against the real kernel: exact transition sequences on
//! loopback, with addresses, ports, owners and plausible dwell times.

use std::{io::Write, net::Shutdown, thread, time::Duration};

use crate::common::*;
use serde_json::Value;

const KEYS: [&str; 13] = [
    "time", "skaddr", "pid", "comm", "owner", "family", "laddr", "lport", "raddr", "rport",
    "oldstate", "newstate", "ms",
];

/// On this test's own endpoints: another test's socket on 127.0.0.2 (or
/// another namespace) may carry the same port number.
fn touches(v: &Value, port: u16) -> bool {
    let ours = |addr: &Value| matches!(addr.as_str(), Some("127.0.0.1" | "::1" | "0.0.0.0" | "::"));
    (port_of(v, "lport") == port && ours(&v["laddr"]))
        || (port_of(v, "rport") == port && ours(&v["raddr"]))
}

/// Waits until `n` transitions touching `port` arrived, then stops the tracer.
fn collect(run: Running, port: u16, n: usize) -> Vec<Value> {
    let ok = run.wait_for(Duration::from_secs(10), |vals| {
        vals.iter().filter(|v| touches(v, port)).count() >= n
    });
    let fin = run.stop();
    let vals = fin.json();
    assert!(
        ok,
        "expected {n} transitions on port {port}, got:\n{:#?}\nstderr: {}",
        only(&vals, port),
        fin.stderr
    );
    vals
}

fn only(vals: &[Value], port: u16) -> Vec<Value> {
    vals.iter().filter(|v| touches(v, port)).cloned().collect()
}

fn ms(v: &Value) -> Option<f64> {
    v["ms"].as_f64()
}

#[test]
fn active_close_client_first_full_sequences() {
    retrying(|| {
        let run = start(&["watch", "--json", "--ring-size", BIG_RING]);
        let (l, port) = listener("127.0.0.1:0");
        let mut client = connect("127.0.0.1", port);
        let (mut server, _) = l.accept().unwrap();
        let cport = client.local_addr().unwrap().port();
        client.write_all(b"hi").unwrap();
        // Unread data at close() would make the server reset (CLOSE_WAIT -> CLOSE).
        let mut buf = [0u8; 2];
        std::io::Read::read_exact(&mut server, &mut buf).unwrap();
        thread::sleep(Duration::from_millis(50));
        drop(client); // FIN from the client: it is the active closer
        thread::sleep(Duration::from_millis(200));
        server.flush().unwrap();
        drop(server); // the server sat ~200 ms in CLOSE_WAIT
        drop(l);
        let vals = collect(run, port, 12);
        let vals = only(&vals, port);
        for v in &vals {
            let obj = v.as_object().unwrap();
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            let mut want = KEYS.to_vec();
            want.sort_unstable();
            let mut got = keys.clone();
            got.sort_unstable();
            assert_eq!(got, want, "exact keys");
            assert_eq!(v["family"], "ipv4");
            assert_eq!(v["laddr"], "127.0.0.1");
            let listener = v["newstate"] == "LISTEN"
                || (v["oldstate"] == "LISTEN" && v["newstate"] == "CLOSE");
            assert_eq!(
                v["raddr"],
                if listener || syn_recv_without_peer(v) {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                },
                "{v}"
            );
            assert_eq!(v["pid"].as_u64().unwrap() as u32, my_pid(), "owner of {v}");
            assert!(v["time"].as_str().unwrap().ends_with('Z'));
            assert_eq!(v["skaddr"].as_str().unwrap().len(), 16);
        }
        // Client side (remote port = listener): SYN_SENT reports lport 0 (connect
        // sets the state before choosing the port), then the ephemeral port.
        let client_side = transitions(&vals, |v| port_of(v, "rport") == port);
        assert_eq!(
            client_side,
            pairs(&[
                ("CLOSE", "SYN_SENT"),
                ("SYN_SENT", "ESTABLISHED"),
                ("ESTABLISHED", "FIN_WAIT1"),
                ("FIN_WAIT1", "FIN_WAIT2"),
                ("FIN_WAIT2", "CLOSE"), // the CLOSE that stands for TIME_WAIT
            ])
        );
        for v in vals.iter().filter(|v| port_of(v, "rport") == port).skip(1) {
            assert_eq!(port_of(v, "lport"), cport);
        }
        // Server side: the accepted socket and the listener.
        let server_side = transitions(&vals, |v| port_of(v, "lport") == port);
        assert_eq!(
            server_side,
            pairs(&[
                ("CLOSE", "LISTEN"),
                ("LISTEN", "SYN_RECV"),
                ("SYN_RECV", "ESTABLISHED"),
                ("ESTABLISHED", "CLOSE_WAIT"),
                ("CLOSE_WAIT", "LAST_ACK"),
                ("LAST_ACK", "CLOSE"),
                ("LISTEN", "CLOSE"),
            ])
        );
        let find = |old: &str, new: &str, side: &str| {
            vals.iter()
                .find(|v| v["oldstate"] == old && v["newstate"] == new && port_of(v, side) == port)
                .unwrap_or_else(|| panic!("{old}->{new}"))
                .clone()
        };
        // Plausible dwell times.
        assert_eq!(
            ms(&find("CLOSE", "SYN_SENT", "rport")),
            None,
            "nothing seen before CLOSE"
        );
        let cw = ms(&find("CLOSE_WAIT", "LAST_ACK", "lport")).unwrap();
        assert!((180.0..2000.0).contains(&cw), "CLOSE_WAIT lasted {cw} ms");
        let est = ms(&find("ESTABLISHED", "FIN_WAIT1", "rport")).unwrap();
        assert!((40.0..2000.0).contains(&est), "ESTABLISHED lasted {est} ms");
        let syn = ms(&find("SYN_SENT", "ESTABLISHED", "rport")).unwrap();
        assert!((0.0..100.0).contains(&syn), "handshake took {syn} ms");
        let listen = ms(&find("LISTEN", "CLOSE", "lport")).unwrap();
        assert!(listen >= 200.0, "listener lived {listen} ms");
    });
}

#[test]
fn passive_close_on_the_client_side() {
    retrying(|| {
        let run = start(&["watch", "--json", "--ring-size", BIG_RING]);
        let (l, port) = listener("127.0.0.1:0");
        let client = connect("127.0.0.1", port);
        let (server, _) = l.accept().unwrap();
        drop(server); // server closes first: the client is the passive side
        thread::sleep(Duration::from_millis(100));
        drop(client);
        drop(l);
        let vals = only(&collect(run, port, 12), port);
        let client_side = transitions(&vals, |v| port_of(v, "rport") == port);
        assert_eq!(
            client_side,
            pairs(&[
                ("CLOSE", "SYN_SENT"),
                ("SYN_SENT", "ESTABLISHED"),
                ("ESTABLISHED", "CLOSE_WAIT"),
                ("CLOSE_WAIT", "LAST_ACK"),
                ("LAST_ACK", "CLOSE"),
            ])
        );
        let cw = vals.iter().find(|v| v["oldstate"] == "CLOSE_WAIT").unwrap();
        let cw = ms(cw).unwrap();
        assert!((90.0..2000.0).contains(&cw), "{cw}");
    });
}

#[test]
fn refused_connect_is_syn_sent_then_close() {
    retrying(|| {
        let port = closed_port();
        let run = start(&["watch", "--json", "--ring-size", BIG_RING]);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        let vals = only(&collect(run, port, 2), port);
        assert_eq!(
            transitions(&vals, |_| true),
            pairs(&[("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")])
        );
        assert!(ms(&vals[1]).unwrap() < 100.0);
    });
}

#[test]
fn listen_then_close() {
    retrying(|| {
        let run = start(&["watch", "--json", "--ring-size", BIG_RING]);
        let (l, port) = listener("127.0.0.1:0");
        thread::sleep(Duration::from_millis(100));
        drop(l);
        let vals = only(&collect(run, port, 2), port);
        assert_eq!(
            transitions(&vals, |_| true),
            pairs(&[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")])
        );
        assert!(ms(&vals[1]).unwrap() >= 90.0);
        assert_eq!(vals[0]["pid"].as_u64().unwrap() as u32, my_pid());
    });
}

#[test]
fn ipv6_loopback() {
    retrying(|| {
        let run = start(&["watch", "--json", "-6"]);
        let (l, port) = listener("[::1]:0");
        let client = connect("::1", port);
        let (server, _) = l.accept().unwrap();
        drop(client);
        thread::sleep(Duration::from_millis(20));
        drop(server);
        drop(l);
        let vals = only(&collect(run, port, 12), port);
        for v in &vals {
            assert_eq!(v["family"], "ipv6");
            assert_eq!(v["laddr"], "::1");
            // A listener has no peer (nor, on some kernels, its new
            // connection's first record).
            let listener =
                v["oldstate"] == "LISTEN" && v["newstate"] == "CLOSE" || v["newstate"] == "LISTEN";
            assert_eq!(
                v["raddr"],
                if listener || syn_recv_without_peer(v) {
                    "::"
                } else {
                    "::1"
                },
                "{v}"
            );
        }
        assert_eq!(transitions(&vals, |v| port_of(v, "rport") == port).len(), 5);
    });
}

#[test]
fn lport_filter_drops_other_ports_in_the_kernel() {
    let (wanted, wport) = listener("127.0.0.1:0");
    let (other, oport) = listener("127.0.0.1:0");
    let run = start(&["watch", "--json", "-L", &wport.to_string()]);
    for (l, port) in [(&other, oport), (&wanted, wport)] {
        let c = connect("127.0.0.1", port);
        let (s, _) = l.accept().unwrap();
        drop(c);
        drop(s);
    }
    thread::sleep(Duration::from_millis(300));
    let vals = run.stop().json();
    assert!(!vals.is_empty());
    for v in &vals {
        assert_eq!(port_of(v, "lport"), wport, "filtered port leaked: {v}");
    }
    // The server side of the wanted port: SYN_RECV .. CLOSE. (Not another
    // test's client on 127.0.0.2 whose ephemeral port has the same number.)
    let ours = transitions(&vals, |v| v["laddr"] == "127.0.0.1");
    assert_eq!(ours.len(), 5, "{vals:#?}");
}

#[test]
fn rport_and_family_filters() {
    let (l, port) = listener("127.0.0.1:0");
    let run4 = start(&["watch", "--json", "-D", &port.to_string()]);
    let run6 = start(&["watch", "--json", "-6", "-D", &port.to_string()]);
    let c = connect("127.0.0.1", port);
    let (s, _) = l.accept().unwrap();
    drop(c);
    drop(s);
    thread::sleep(Duration::from_millis(300));
    let v4 = run4.stop().json();
    let v6 = run6.stop().json();
    // Ours: another test's server on 127.0.0.1 may have a client on
    // 127.0.0.23 whose ephemeral port has the same number.
    assert_eq!(
        transitions(&v4, |v| v["raddr"] == "127.0.0.1").len(),
        5,
        "{v4:#?}"
    );
    assert!(v4.iter().all(|v| port_of(v, "rport") == port));
    assert!(v6.is_empty(), "IPv4 traffic passed an IPv6 filter: {v6:#?}");
}

#[test]
fn state_filter_keeps_transitions_into_or_out_of_it() {
    retrying(|| {
        let run = start(&["watch", "--json", "--state", "close-wait"]);
        let (l, port) = listener("127.0.0.1:0");
        let c = connect("127.0.0.1", port);
        let (s, _) = l.accept().unwrap();
        drop(c);
        thread::sleep(Duration::from_millis(50));
        drop(s);
        let vals = only(&collect(run, port, 2), port);
        assert_eq!(
            transitions(&vals, |_| true),
            pairs(&[("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK")])
        );
    });
}

#[test]
fn pid_and_comm_filters_follow_the_owner() {
    // Another process makes the connection; our own traffic must not show.
    let (l, port) = listener("127.0.0.1:0");
    // The python client connects, says so, and closes when told.
    let script = format!(
        "import socket,sys,time\ns=socket.create_connection(('127.0.0.1',{port}))\nprint('ready',flush=True)\nsys.stdin.readline()\ns.close()\ntime.sleep(0.2)\n"
    );
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let by_pid = start(&["watch", "--json", "-p", &pid.to_string()]);
    let by_comm = start(&["watch", "--json", "-c", "python3", "-D", &port.to_string()]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let (s, _) = l.accept().unwrap();
    let mine = connect("127.0.0.1", port); // ours: must be filtered out
    let _ = child.wait();
    drop(s);
    drop(mine);
    thread::sleep(Duration::from_millis(300));
    let a = by_pid.stop().json();
    let b = by_comm.stop().json();
    for v in a.iter().chain(&b) {
        assert_eq!(v["pid"].as_u64().unwrap() as u32, pid, "{v}");
        assert_eq!(v["comm"], "python3");
    }
    // The python client's own socket: it closes first (after connect, which
    // happened before the tracers attached, so ESTABLISHED onwards).
    let seq = transitions(&a, |v| port_of(v, "rport") == port);
    assert_eq!(
        seq,
        pairs(&[
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE")
        ]),
        "{a:#?}"
    );
    assert_eq!(transitions(&b, |_| true), seq);
}

#[test]
fn text_output_and_summary_line() {
    let (l, port) = listener("127.0.0.1:0");
    let run = start(&["watch", "-T", "-L", &port.to_string()]);
    let c = connect("127.0.0.1", port);
    let (s, _) = l.accept().unwrap();
    drop(c);
    drop(s);
    thread::sleep(Duration::from_millis(300));
    let fin = run.stop();
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
    assert!(fin.lines[0].starts_with("TIME "), "{:?}", fin.lines);
    assert!(fin.lines[0].contains("OLDSTATE"));
    let body = fin.lines[1..].join("\n");
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    assert!(body.contains("SYN_RECV     -> ESTABLISHED"), "{body}");
    let summary = fin.stderr.lines().last().unwrap();
    assert!(
        summary.starts_with("tcptrace: ")
            && summary.contains(", 0 lost, 0 evicted")
            && summary.contains(" events, "),
        "{summary}"
    );
}

#[test]
fn duration_stops_by_itself() {
    let start_t = std::time::Instant::now();
    let run = start(&["watch", "--duration", "0.5", "-L", "1"]);
    let fin = run.wait();
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
    assert!(start_t.elapsed() < Duration::from_secs(20));
    assert!(
        fin.stderr.contains("tcptrace: 0 events, 0 lost, 0 evicted"),
        "{}",
        fin.stderr
    );
}

#[test]
fn sigterm_and_sighup_detach_with_a_summary() {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let run = start(&["watch", "-L", "1"]);
        run.signal(sig);
        let fin = run.wait();
        assert_eq!(fin.code, Some(0), "signal {sig}: {}", fin.stderr);
        assert!(fin.stderr.contains("0 lost, 0 evicted"), "{}", fin.stderr);
    }
}

#[test]
fn a_storm_of_loopback_connections_loses_nothing() {
    retrying(|| {
        let (l, port) = listener("127.0.0.1:0");
        let run = start(&["watch", "--json", "-L", &port.to_string()]);
        let n = 3000;
        let server = thread::spawn(move || {
            for _ in 0..n {
                let (s, _) = l.accept().unwrap();
                drop(s);
            }
        });
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            let c = connect("127.0.0.1", port);
            c.shutdown(Shutdown::Both).ok();
        }
        server.join().unwrap();
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        // Every server-side socket: LISTEN->SYN_RECV, SYN_RECV->ESTABLISHED,
        // then a close path. With two CPUs one request may make two
        // children; the one that lost the race goes SYN_RECV->CLOSE (seen
        // on 5.10 and 6.1 with 2 vCPUs: 3,001 children for 3,000), and is
        // neither a connection nor its close.
        let count = |v: &[Value], old: Option<&str>, new: &str| {
            v.iter()
                .filter(|v| old.is_none_or(|o| v["oldstate"] == o) && v["newstate"] == new)
                .count()
        };
        let lost_races = |v: &[Value]| count(v, Some("SYN_RECV"), "CLOSE");
        let ok = run.wait_for(Duration::from_secs(20), |v| {
            count(v, None, "CLOSE") - lost_races(v) >= n
        });
        let fin = run.stop();
        let vals = fin.json();
        let closes = count(&vals, None, "CLOSE") - lost_races(&vals);
        assert!(ok, "only {closes} CLOSEs of {n}; stderr {}", fin.stderr);
        assert_eq!(
            count(&vals, Some("LISTEN"), "SYN_RECV") - lost_races(&vals),
            n,
            "at {rate:.0} connections/s"
        );
        assert!(fin.stderr.contains(" 0 lost"), "{}", fin.stderr);
        eprintln!(
            "storm: {n} connections at {rate:.0}/s, {} transitions",
            vals.len()
        );
    });
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The kernel writes each CPU's records to a ring of its own. With the
/// client on one CPU and the server on another, a socket's transitions
/// alternate between them (loopback runs the receiver's softirq on the
/// sender's CPU): the client's socket goes ESTABLISHED on its CPU,
/// CLOSE_WAIT on the server's (the server's FIN), LAST_ACK back on its own.
/// Each socket's transitions must still come out in order, every one of them.
#[test]
fn transitions_made_on_different_cpus_come_out_in_each_sockets_order() {
    retrying(|| {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        // On one CPU every record goes to one ring: nothing here would be tested.
        assert!(
            cpus >= 2,
            "needs 2 CPUs to put a socket's records in two rings, has {cpus}"
        );
        let (server_cpu, client_cpu) = (0, 1);
        eprintln!("client on CPU {client_cpu}, server on CPU {server_cpu} of {cpus}");
        let (l, port) = listener("127.0.0.1:0");
        // Both ends, so no port filter: the view keeps this port's.
        let run = start(&["watch", "--json", "-4", "--ring-size", BIG_RING]);
        let n = 1000;
        let server = thread::spawn(move || {
            pin(server_cpu);
            for _ in 0..n {
                let (mut s, _) = l.accept().unwrap();
                s.write_all(b"x").unwrap();
                // The server closes first: the client sees EOF and closes at once.
                drop(s);
            }
        });
        pin(client_cpu);
        for _ in 0..n {
            let mut c = connect("127.0.0.1", port);
            let mut buf = [0u8; 8];
            while std::io::Read::read(&mut c, &mut buf).unwrap() > 0 {}
            drop(c);
        }
        server.join().unwrap();
        // Each connection: 5 transitions client-side, 5 server-side (SYN_RECV,
        // ESTABLISHED, FIN_WAIT1, FIN_WAIT2, then CLOSE into TIME_WAIT).
        let ok = run.wait_for(slowed(Duration::from_secs(20)), |v| {
            v.iter().filter(|v| touches(v, port)).count() >= 10 * n
        });
        thread::sleep(Duration::from_millis(200));
        let fin = run.stop();
        let vals = only(&fin.json(), port);
        assert!(
            ok,
            "{} transitions of {}; {}",
            vals.len(),
            10 * n,
            fin.stderr
        );
        assert!(fin.stderr.contains(" 0 lost"), "{}", fin.stderr);
        // One socket's life starts at connect() (its port is chosen after) or
        // at a SYN; its address is reused by the next socket once freed.
        let mut lives: Vec<Vec<(String, String)>> = Vec::new();
        let mut current: std::collections::HashMap<&str, usize> = Default::default();
        for v in &vals {
            let (old, new) = (
                v["oldstate"].as_str().unwrap(),
                v["newstate"].as_str().unwrap(),
            );
            if new == "LISTEN" || (old == "LISTEN" && new == "CLOSE") {
                continue; // the listener's own
            }
            let skaddr = v["skaddr"].as_str().unwrap();
            if (old, new) == ("CLOSE", "SYN_SENT") || old == "LISTEN" {
                current.insert(skaddr, lives.len());
                lives.push(Vec::new());
            }
            let Some(&i) = current.get(skaddr) else {
                panic!("socket {skaddr}: {old} -> {new} before its start");
            };
            lives[i].push((old.to_string(), new.to_string()));
        }
        let client = pairs(&[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ]);
        let server = pairs(&[
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE"),
        ]);
        let (mut clients, mut servers) = (0, 0);
        for life in &lives {
            if life[0].0 == "LISTEN" {
                assert_eq!(life, &server, "a server socket's life");
                servers += 1;
            } else {
                assert_eq!(life, &client, "a client socket's life");
                clients += 1;
            }
        }
        assert_eq!((clients, servers), (n, n), "every socket's life");
    });
}
