//! Cross-check with a peer nobody here wrote: libbpf-tools' `tcpstates`,
//! attached at the same time to the same traffic, must report the same
//! set of transitions as `tcptrace watch --json`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::common::*;

type Row = (String, u16, u16, String, String);

#[test]
fn tcpstates_and_tcptrace_agree_on_every_transition() {
    let (l, port) = listener("127.0.0.1:0");
    let refused = closed_port();
    // Both tracers see everything (IPv4); the comparison keeps our ports.
    let mut ts = Command::new("stdbuf")
        .args(["-oL", "/usr/sbin/tcpstates", "-w", "-4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("libbpf-tools tcpstates (installed by cargo xtask setup)");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = ts.stdout.take().unwrap();
    let l2 = lines.clone();
    let reader = thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("SKADDR"))
    {
        assert!(Instant::now() < deadline, "tcpstates did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let ours = start(&["watch", "--json", "-4", "--ring-size", BIG_RING]);

    // The workload: active and passive closes, a refused connect.
    for i in 0..20 {
        let c = connect("127.0.0.1", port);
        let (s, _) = l.accept().unwrap();
        if i % 2 == 0 {
            drop(c);
            thread::sleep(Duration::from_millis(2));
            drop(s);
        } else {
            drop(s);
            thread::sleep(Duration::from_millis(2));
            drop(c);
        }
    }
    let _ = std::net::TcpStream::connect(("127.0.0.1", refused));
    thread::sleep(Duration::from_millis(500));

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(ts.id() as i32, libc::SIGINT) };
    let _ = ts.wait();
    reader.join().unwrap();
    let fin = ours.stop();

    let relevant =
        |lport: u16, rport: u16| [lport, rport].iter().any(|x| *x == port || *x == refused);
    let mut theirs: Vec<Row> = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| {
            // SKADDR PID COMM IP LADDR LPORT RADDR RPORT OLD -> NEW MS; COMM may hold spaces,
            // so read from the right.
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 11 || f[0] == "SKADDR" {
                return None;
            }
            let n = f.len();
            let (old, new) = (f[n - 4], f[n - 2]);
            let (lport, rport): (u16, u16) = (f[n - 7].parse().ok()?, f[n - 5].parse().ok()?);
            relevant(lport, rport).then(|| {
                (
                    f[0].to_owned(),
                    lport,
                    rport,
                    old.to_owned(),
                    new.to_owned(),
                )
            })
        })
        .collect();
    let mut mine: Vec<Row> = fin
        .json()
        .iter()
        .map(|v| {
            (
                v["skaddr"].as_str().unwrap().to_owned(),
                port_of(v, "lport"),
                port_of(v, "rport"),
                v["oldstate"].as_str().unwrap().to_owned(),
                v["newstate"].as_str().unwrap().to_owned(),
            )
        })
        .filter(|r| relevant(r.1, r.2))
        .collect();
    // 20 connections x 10 transitions, the listener's LISTEN->CLOSE is still
    // ahead, and the refused connect's 2.
    assert!(
        theirs.len() >= 20 * 10 + 2,
        "tcpstates saw only {}",
        theirs.len()
    );
    // Multisets: the slab reuses socket addresses, so rows can repeat.
    theirs.sort();
    mine.sort();
    assert_eq!(
        theirs, mine,
        "tcpstates (left) and tcptrace (right) disagree"
    );
}
