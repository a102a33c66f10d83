//! Every network namespace: leaks inside pods that began before tcptrace
//! started are found, with the right pid, count and age, checked against
//! `ip netns exec NS ss -tanp` in each namespace; namespaces come and go
//! while it runs; fifty at once; and as a non-root user with exactly the
//! capabilities the README documents for each route.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{BIN, Netns, Scenario, Serve, run, start};

/// (pid, local endpoint, remote endpoint) of one CLOSE_WAIT socket.
type Leak = (u32, String, String);

/// `ss -tanp state close-wait` inside `ns`: the reference.
fn ss_close_wait(ns: &Netns) -> BTreeSet<Leak> {
    let out = ns.exec(&["ss", "-tanpH", "state", "close-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Recv-Q Send-Q Local Peer users:(("python3",pid=N,fd=M))
            let pid = f[4]
                .split("pid=")
                .nth(1)
                .and_then(|p| p.split(',').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {l}"));
            (pid, unbracket(f[2]), unbracket(f[3]))
        })
        .collect()
}

/// `[::1]:80` as `ss` prints it, and `::1:80` as built below, alike.
fn unbracket(endpoint: &str) -> String {
    endpoint.replace(['[', ']'], "")
}

/// The leaks `tcptrace leaks --json` rows report in namespace `inode`.
fn tcptrace_close_wait(rows: &[Value], inode: u64) -> BTreeSet<Leak> {
    rows.iter()
        .filter(|r| r["netns"].as_u64() == Some(inode))
        .flat_map(|r| {
            let pid = r["pid"].as_u64().unwrap() as u32;
            r["sockets"].as_array().unwrap().iter().map(move |s| {
                (
                    pid,
                    format!("{}:{}", s["laddr"].as_str().unwrap(), s["lport"]),
                    format!("{}:{}", s["raddr"].as_str().unwrap(), s["rport"]),
                )
            })
        })
        .collect()
}

/// A pod with leaks on both sides, over IPv4 and IPv6: a server that never
/// closes what it accepted, and a client whose server closed.
struct Pod {
    ns: Netns,
    leaks: Vec<Scenario>,
}

impl Pod {
    /// Its processes: a namespace's inode is reused as soon as it is freed
    /// (often by another test's), so the pod is known by them, not by it.
    fn pids(&self) -> BTreeSet<u64> {
        self.leaks
            .iter()
            .flat_map(|s| std::iter::once(s.holder).chain(s.others.iter().copied()))
            .map(u64::from)
            .collect()
    }
}

impl Pod {
    fn new() -> Self {
        let ns = Netns::new();
        let mut leaks = Vec::new();
        for host in ["127.0.0.1", "::1"] {
            leaks.push(Scenario::start_in(Some(&ns.name), "server", 2, 0, host));
            let server = Scenario::start_in(Some(&ns.name), "listen-close", 3, 0, host);
            let port = server.port;
            leaks.push(server);
            leaks.push(Scenario::start_in(Some(&ns.name), "client", 3, port, host));
        }
        Self { ns, leaks }
    }
}

fn leaks_once_json(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["leaks", "--once", "--json"];
    args.extend(extra);
    let fin = run(&args);
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
    fin.json()
}

#[test]
fn leaks_older_than_tcptrace_in_other_namespaces_match_ss_in_each() {
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let rows = leaks_once_json(&[]);
    for pod in &pods {
        let want = ss_close_wait(&pod.ns);
        assert_eq!(want.len(), 2 * (2 + 3), "{want:?}");
        assert_eq!(tcptrace_close_wait(&rows, pod.ns.inode()), want);
        for r in rows.iter().filter(|r| r["netns"] == pod.ns.inode()) {
            // As root, each namespace is read from inside: tcp_info gives a
            // lower bound of the age.
            for s in r["sockets"].as_array().unwrap() {
                assert!(s["age_s"].as_f64().is_some(), "{r}");
                assert_eq!(s["age_estimated"], true, "{r}");
            }
            assert_eq!(r["comm"], "python3");
        }
    }
}

#[test]
fn serve_exports_leaks_of_other_namespaces_from_before_it_started() {
    let pod = Pod::new();
    let want = ss_close_wait(&pod.ns);
    let serve = Serve::start(&["--interval", "0.5"]);
    let inode = pod.ns.inode();
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for (pid, _, _) in &want {
        *per_pid.entry(*pid).or_default() += 1;
    }
    for (pid, n) in per_pid {
        serve.wait_for_value(
            &format!(
                "tcptrace_close_wait_sockets{{pid=\"{pid}\",comm=\"python3\",container=\"\",netns=\"{inode}\"}} "
            ),
            n as f64,
            Duration::from_secs(20),
        );
    }
    let body = serve.get("/metrics").body;
    let namespaces: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tcptrace_network_namespaces "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(namespaces >= 2.0, "{body}");
}

/// A namespace created while `leaks` and `serve` run shows up; one deleted
/// meanwhile goes away, with its series, and nothing fails.
#[test]
fn namespaces_come_and_go_while_tracing() {
    let going = Pod::new();
    let going_inode = going.ns.inode();
    let live = start(&["leaks", "--json", "--interval", "0.5"]);
    let serve = Serve::start(&["--interval", "0.5"]);
    let in_rows =
        |inode: u64| move |rows: &[Value]| rows.iter().any(|r| r["netns"].as_u64() == Some(inode));
    assert!(live.wait_for(Duration::from_secs(20), in_rows(going_inode)));
    let coming = Pod::new();
    let coming_inode = coming.ns.inode();
    assert!(live.wait_for(Duration::from_secs(20), in_rows(coming_inode)));
    let series = |inode: u64| format!("netns=\"{inode}\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !serve.get("/metrics").body.contains(&series(coming_inode)) {
        assert!(Instant::now() < deadline, "{}", serve.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Gone: its processes killed, the namespace deleted.
    let going_pids = going.pids();
    drop(going);
    let of_going = |r: &Value| {
        r["netns"] == going_inode && r["pid"].as_u64().is_some_and(|p| going_pids.contains(&p))
    };
    let going_series = |body: &str| {
        body.lines().any(|l| {
            l.contains(&series(going_inode))
                && going_pids
                    .iter()
                    .any(|p| l.contains(&format!("pid=\"{p}\"")))
        })
    };
    // SIGKILL is delivered asynchronously: a refresh that started before the
    // pod's processes were gone may still list them. Judge each refresh (its
    // rows share a `time`) on its own, and only once the next one began, so
    // its rows are all in.
    let seen = live.lines.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<Value> = live.lines.lock().unwrap()[seen..]
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mut refreshes: Vec<&[Value]> = rows.chunk_by(|a, b| a["time"] == b["time"]).collect();
        refreshes.pop();
        // A refresh after the deletion that lists the coming pod but not the gone one.
        if refreshes
            .iter()
            .any(|r| r.iter().any(|r| r["netns"] == coming_inode) && !r.iter().any(of_going))
            && !going_series(&serve.get("/metrics").body)
        {
            break;
        }
        let listed: Vec<BTreeSet<u64>> = refreshes
            .iter()
            .map(|r| r.iter().filter_map(|r| r["netns"].as_u64()).collect())
            .collect();
        assert!(
            Instant::now() < deadline,
            "the gone namespace {going_inode} stays (coming: {coming_inode}): leaks' refreshes since list {listed:?}; serve:\n{}\n{}",
            serve
                .get("/metrics")
                .body
                .lines()
                .filter(|l| l.contains("netns=\""))
                .collect::<Vec<_>>()
                .join("\n"),
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let fin = live.stop();
    assert_eq!(fin.code, Some(0), "{}", fin.stderr);
    assert!(!fin.stderr.contains("error"), "{}", fin.stderr);
    drop(coming);
}

#[test]
fn fifty_namespaces_at_once() {
    let pods: Vec<(Netns, Scenario)> = (0..50)
        .map(|_| {
            let ns = Netns::new();
            let leak = Scenario::start_in(Some(&ns.name), "server", 1, 0, "127.0.0.1");
            (ns, leak)
        })
        .collect();
    let rows = leaks_once_json(&[]);
    for (ns, leak) in &pods {
        let found: Vec<&Value> = rows
            .iter()
            .filter(|r| r["netns"].as_u64() == Some(ns.inode()))
            .collect();
        assert_eq!(found.len(), 1, "{}: {found:?}", ns.name);
        assert_eq!(found[0]["pid"].as_u64(), Some(u64::from(leak.holder)));
        assert_eq!(found[0]["close_wait"], 1);
    }
}

/// As `nobody` with the capabilities "Running in production" lists: with
/// CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, other namespaces are read from
/// /proc/PID/net/tcp (ages unknown); CAP_SYS_ADMIN adds the route inside
/// each namespace, with ages. Without any, tcptrace says what it cannot see.
/// `leaks --check` never says "no leak" when unknown ages leave it open.
#[test]
fn least_privilege_routes() {
    let pod = Pod::new();
    let want = ss_close_wait(&pod.ns);
    let as_nobody_run = |caps: &str, leaks_args: &[&str]| {
        let mut args = vec![
            "--reuid=65534".to_owned(),
            "--regid=65534".to_owned(),
            "--clear-groups".to_owned(),
        ];
        if !caps.is_empty() {
            args.push(format!("--inh-caps={caps}"));
            args.push(format!("--ambient-caps={caps}"));
        }
        let out = std::process::Command::new("setpriv")
            .args(&args)
            .args([BIN, "leaks"])
            .args(leaks_args)
            .output()
            .expect("setpriv (util-linux)");
        crate::common::Finished::from(out)
    };
    let as_nobody = |caps: &str| {
        let fin = as_nobody_run(caps, &["--once", "--json"]);
        assert_eq!(fin.code, Some(0), "{caps}: {}", fin.stderr);
        fin
    };
    let proc_net = as_nobody("+dac_read_search,+sys_ptrace");
    let rows = proc_net.json();
    assert_eq!(tcptrace_close_wait(&rows, pod.ns.inode()), want);
    for r in rows.iter().filter(|r| r["netns"] == pod.ns.inode()) {
        for s in r["sockets"].as_array().unwrap() {
            assert!(s["age_s"].is_null(), "no tcp_info, no age: {r}");
        }
    }
    // The pod's leaks are seconds old, but /proc/net/tcp cannot say so.
    let pod_only = ["--check", "--min-age", "1h", "-p"];
    let holder = rows
        .iter()
        .find(|r| r["netns"] == pod.ns.inode())
        .expect("a holder in the pod")["pid"]
        .to_string();
    let check = as_nobody_run(
        "+dac_read_search,+sys_ptrace",
        &[&pod_only[..], &[holder.as_str()]].concat(),
    );
    assert_eq!(check.code, Some(4), "undetermined: {}", check.stderr);
    assert!(
        check
            .stderr
            .lines()
            .filter(|l| l.contains("cannot tell whether python3"))
            .count()
            == 1,
        "{}",
        check.stderr
    );
    let any_age = as_nobody_run(
        "+dac_read_search,+sys_ptrace",
        &["--check", "--min-age", "0", "-p", &holder],
    );
    assert_eq!(any_age.code, Some(3), "{}", any_age.stderr);
    let with_ages = as_nobody_run(
        "+dac_read_search,+sys_ptrace,+sys_admin",
        &[&pod_only[..], &[holder.as_str()]].concat(),
    );
    assert_eq!(with_ages.code, Some(0), "known young: {}", with_ages.stderr);
    let inside = as_nobody("+dac_read_search,+sys_ptrace,+sys_admin");
    let rows = inside.json();
    assert_eq!(tcptrace_close_wait(&rows, pod.ns.inode()), want);
    for r in rows.iter().filter(|r| r["netns"] == pod.ns.inode()) {
        for s in r["sockets"].as_array().unwrap() {
            assert!(s["age_s"].as_f64().is_some(), "{r}");
        }
    }
    let none = as_nobody("");
    assert!(
        tcptrace_close_wait(&none.json(), pod.ns.inode()).is_empty(),
        "{}",
        none.stderr
    );
    assert!(
        none.stderr.contains("could not be read in /proc"),
        "says what it cannot see: {}",
        none.stderr
    );
}
