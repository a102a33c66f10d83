//! The path a kernel that moved a tracepoint field takes: each record copied
//! and read at the offsets of the running kernel's `format` files. No kernel
//! here moved one, so `TCPTRACE_COPY_RECORDS=1` takes that path on this one,
//! and it must read exactly what the context loads read, in every program
//! (stream, aggregate, serve's mix, and the accept exits).

use std::{collections::BTreeSet, io::Write, process::Command, thread, time::Duration};

use serde_json::Value;

use crate::common::*;

const COPY: [&str; 2] = ["env", "TCPTRACE_COPY_RECORDS=1"];
const NOTE: &str = "TCPTRACE_COPY_RECORDS=1: each record is copied to be read";

/// Client and server sides of each family, closed both ways: every field of
/// the record varies (states, ports, both address forms) and the server
/// sides' owners come from the accept exits' `ret`.
fn traffic(v4: &(std::net::TcpListener, u16), v6: &(std::net::TcpListener, u16)) {
    for ((l, port), host) in [(v4, "127.0.0.1"), (v6, "::1")] {
        for i in 0..3 {
            let mut c = connect(host, *port);
            let (s, _) = l.accept().unwrap();
            c.write_all(b"x").unwrap();
            let (first, second) = if i % 2 == 0 { (c, s) } else { (s, c) };
            drop(first);
            thread::sleep(Duration::from_millis(5));
            drop(second);
        }
    }
}

/// What a `watch --json` line says of a transition, but its time.
fn row(v: &Value) -> String {
    let mut v = v.clone();
    let o = v.as_object_mut().unwrap();
    o.remove("time");
    o.remove("ms");
    v.to_string()
}

#[test]
fn a_copied_record_reads_what_the_context_loads_read() {
    let v4 = listener("127.0.0.1:0");
    let v6 = listener("[::1]:0");
    let ports = format!("{},{}", v4.1, v6.1);
    let args = ["watch", "--json", "-L", &ports];
    let loads = start(&args);
    let copies = start_with(&COPY, &args);
    let hist_args = ["hist", "--json", "-L", &ports];
    let hist_loads = start(&hist_args);
    let hist_copies = start_with(&COPY, &hist_args);
    traffic(&v4, &v6);
    thread::sleep(Duration::from_millis(300));

    let (loads, copies) = (loads.stop(), copies.stop());
    assert!(copies.stderr.contains(NOTE), "{}", copies.stderr);
    assert!(!loads.stderr.contains("copied"), "{}", loads.stderr);
    let (a, b) = (loads.json(), copies.json());
    let rows = |vals: &[Value]| vals.iter().map(row).collect::<BTreeSet<_>>();
    // The server sides (-L) of three connections in each family: into
    // SYN_RECV, ESTABLISHED and out of it at least.
    assert!(a.len() >= 2 * 3 * 3, "{a:#?}");
    assert_eq!(rows(&a), rows(&b), "{}", copies.stderr);
    for family in ["ipv4", "ipv6"] {
        assert!(b.iter().any(|v| v["family"] == family), "{b:#?}");
    }
    // The server sides' CLOSE_WAIT came in softirq: their holder is known
    // only from the accept exit, whose `ret` the copy read.
    let owners: Vec<&Value> = b
        .iter()
        .filter(|v| v["newstate"] == "CLOSE_WAIT")
        .map(|v| &v["owner"])
        .collect();
    // The clients closed first in two of each family's three.
    assert_eq!(owners.len(), 4, "{b:#?}");
    assert!(owners.iter().all(|o| *o == "holder"), "{owners:?}");

    let (hist_loads, hist_copies) = (hist_loads.stop(), hist_copies.stop());
    assert!(hist_copies.stderr.contains(NOTE), "{}", hist_copies.stderr);
    let counts = |vals: Vec<Value>| -> Vec<(String, u64)> {
        vals.iter()
            .map(|v| {
                let name = format!(
                    "{}:{}",
                    v["kind"].as_str().unwrap(),
                    v["name"].as_str().unwrap()
                );
                (name, v["count"].as_u64().unwrap())
            })
            .collect()
    };
    let (k, c) = (counts(hist_loads.json()), counts(hist_copies.json()));
    assert!(k.contains(&("state:CLOSE_WAIT".into(), 4)), "{k:?}");
    assert_eq!(k, c);

    // serve's program (aggregating, streaming CLOSE_WAIT's transitions)
    // loads and counts that way too.
    let mut cmd = Command::new(COPY[0]);
    cmd.arg(COPY[1]).arg(BIN);
    let serve = Serve::start_with(cmd, &["-L", &ports]);
    assert!(serve.stderr().contains(NOTE), "{}", serve.stderr());
    traffic(&v4, &v6);
    serve.wait_for_value(
        "tcptrace_transitions_total{from=\"established\",to=\"close_wait\"} ",
        4.0,
        slowed(Duration::from_secs(10)),
    );
}
