//! Namespace scale (issue 12): a node with 200 pods of 100 CLOSE_WAIT
//! sockets each. 200 network namespaces (`ip netns add`, loopback up), in
//! each one process of this binary (`bench --hold-close-wait NS/100`) that
//! accepted 100 connections from itself and holds them after their clients
//! closed. Then, side by side in the same run: `tcptrace leaks --once` as
//! root (sock_diag from inside each namespace, through setns), the same
//! without CAP_SYS_ADMIN (from `/proc/PID/net/tcp{,6}`), and `ip netns exec
//! NS ss -tanp state close-wait` in each namespace one after the other.
//! Every namespace and helper is removed at the end, also on failure.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::report::{durations_ms, med_range, median, thousands};
use super::scale::time;
use super::sys::{self, Helper};
use super::tracers::Tools;

pub const NAMESPACES: usize = 200;
pub const NAMESPACES_QUICK: usize = 20;
pub const PER_NAMESPACE: usize = 100;
/// Our namespaces are `tcptrace-bench-<xtask pid>-<i>`.
const PREFIX: &str = "tcptrace-bench-";
const NETNS_DIR: &str = "/run/netns";
/// `leaks --once` with only what the /proc route needs, as the README's
/// least-privilege table says: no CAP_SYS_ADMIN, so no setns.
pub const NO_SYS_ADMIN: [&str; 5] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search,+sys_ptrace",
    "--ambient-caps=+dac_read_search,+sys_ptrace",
];

pub struct Scale {
    pub namespaces: usize,
    pub per: usize,
    /// Creating the namespaces and the sockets.
    pub setup: Duration,
    /// What all the helper processes take together (their PSS).
    pub helpers_pss_kib: u64,
    pub root: Vec<Duration>,
    pub no_admin: Vec<Duration>,
    /// Each: the total over every namespace.
    pub ss: Vec<Duration>,
    pub root_found: Found,
    pub no_admin_found: Found,
    /// CLOSE_WAIT sockets `ss` listed over all our namespaces (one run).
    pub ss_listed: usize,
}

/// What one `leaks --once --json` said about our namespaces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Sockets named with their holder's pid and namespace.
    pub right: u64,
    /// Helpers named with all their sockets.
    pub processes_right: usize,
    /// Sockets in our namespaces named under another pid or namespace.
    pub elsewhere: u64,
    /// The first few helpers not found whole: `pid: n of N`.
    pub short: Vec<String>,
}

pub fn run(tools: &Tools, namespaces: usize, repeats: usize, dir: &Path) -> Result<Scale> {
    let start = Instant::now();
    let ns = Namespaces::create(namespaces)?;
    let pods = Pods::spawn(&ns.names, PER_NAMESPACE)?;
    let setup = start.elapsed();
    let helpers_pss_kib = pods
        .0
        .iter()
        .filter_map(|p| sys::pss_kib(p.helper.pid()))
        .sum();
    eprintln!(
        "bench: netns: {namespaces} namespaces with {PER_NAMESPACE} CLOSE_WAIT sockets each, ready in {:.1} s",
        setup.as_secs_f64()
    );

    // The /proc route runs as nobody: it needs a copy of the binary that
    // nobody may run, wherever the build is.
    let unprivileged = dir.join("tcptrace");
    fs::copy(&tools.tcptrace, &unprivileged)
        .with_context(|| format!("copying tcptrace to {}", unprivileged.display()))?;
    let root = || {
        let mut c = Command::new(&tools.tcptrace);
        c.args(["leaks", "--once"]);
        c
    };
    let no_admin = || {
        let mut c = Command::new("setpriv");
        c.args(NO_SYS_ADMIN)
            .arg("--")
            .arg(&unprivileged)
            .args(["leaks", "--once"]);
        c
    };
    let ss_in = |name: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", name, "ss", "-tanp", "state", "close-wait"]);
        c
    };
    let ss_all = || -> Result<Duration> {
        let mut total = Duration::ZERO;
        for name in &ns.names {
            total += time(&mut ss_in(name))?;
        }
        Ok(total)
    };

    let json = |mut c: Command| -> Result<Found> {
        let out = c
            .arg("--json")
            .output()
            .context("running leaks --once --json")?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                crate::cmd::display(&c),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(found(
            &String::from_utf8_lossy(&out.stdout),
            &pods.expected(),
        ))
    };
    let root_found = json(root())?;
    let no_admin_found = json(no_admin())?;
    let ss_listed = ns
        .names
        .iter()
        .map(|name| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name, "ss", "-tanH", "state", "close-wait"]);
            crate::cmd::stdout(&mut c).map_or(0, |s| s.lines().count())
        })
        .sum();

    eprintln!(
        "bench: netns: `leaks --once` as root, without CAP_SYS_ADMIN, and `ss` in each namespace, {repeats} runs each"
    );
    // Warm the caches for each, then alternate.
    time(&mut root())?;
    time(&mut no_admin())?;
    ss_all()?;
    let (mut t_root, mut t_no_admin, mut t_ss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        sys::bail_if_interrupted()?;
        t_ss.push(ss_all()?);
        t_root.push(time(&mut root())?);
        t_no_admin.push(time(&mut no_admin())?);
    }
    drop(pods);
    drop(ns);
    Ok(Scale {
        namespaces,
        per: PER_NAMESPACE,
        setup,
        helpers_pss_kib,
        root: t_root,
        no_admin: t_no_admin,
        ss: t_ss,
        root_found,
        no_admin_found,
        ss_listed,
    })
}

/// Judges `leaks --once --json` against the helpers: pid -> (netns inode,
/// sockets held).
fn found(json: &str, expected: &HashMap<u32, (u64, u64)>) -> Found {
    let ours: Vec<u64> = expected.values().map(|v| v.0).collect();
    let mut per_pid: HashMap<u32, u64> = HashMap::new();
    let mut f = Found::default();
    for line in json.lines() {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let pid = row
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok());
        let netns = row.get("netns").and_then(serde_json::Value::as_u64);
        let n = row
            .get("close_wait")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        match (pid.and_then(|p| expected.get(&p).map(|e| (p, e))), netns) {
            (Some((p, &(want_ns, _))), Some(ns)) if ns == want_ns => {
                *per_pid.entry(p).or_default() += n;
            }
            (_, Some(ns)) if ours.contains(&ns) => f.elsewhere += n,
            (Some(_), _) => f.elsewhere += n,
            _ => {}
        }
    }
    let mut pids: Vec<&u32> = expected.keys().collect();
    pids.sort();
    for pid in pids {
        let want = expected[pid].1;
        let got = per_pid.get(pid).copied().unwrap_or(0);
        f.right += got.min(want);
        if got == want {
            f.processes_right += 1;
        } else if f.short.len() < 5 {
            f.short.push(format!("pid {pid}: {got} of {want}"));
        }
    }
    f
}

/// Our network namespaces, deleted on drop.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(n: usize) -> Result<Self> {
        remove_stale();
        let me = std::process::id();
        let ns = Self {
            names: (0..n).map(|i| format!("{PREFIX}{me}-{i}")).collect(),
        };
        // One `ip` for all of them (`ip -n` is not allowed in a batch: each
        // helper brings its loopback up).
        let batch: String = ns
            .names
            .iter()
            .map(|n| format!("netns add {n}\n"))
            .collect();
        ip_batch(&batch, false).context("creating the network namespaces")?;
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let batch: String = self
            .names
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        if let Err(e) = ip_batch(&batch, true) {
            eprintln!("xtask: deleting the bench's network namespaces: {e:#}");
        }
        let left: Vec<&String> = self
            .names
            .iter()
            .filter(|n| Path::new(NETNS_DIR).join(n).exists())
            .collect();
        if !left.is_empty() {
            eprintln!(
                "xtask: {} network namespaces left behind, e.g. {} (`ip netns del NAME`)",
                left.len(),
                left[0]
            );
        }
    }
}

/// Namespaces of ours left by a bench that did not get to clean up (its
/// xtask is gone).
fn remove_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    let stale: String = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix(PREFIX)
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|n| format!("netns del {n}\n"))
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "bench: netns: removing {} namespaces left by an earlier bench",
            stale.lines().count()
        );
        let _ = ip_batch(&stale, true);
    }
}

/// `ip -batch -` with these commands; `force` goes on past failures.
fn ip_batch(commands: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip -batch")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(commands.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -batch failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One helper per namespace.
struct Pods(Vec<Pod>);

struct Pod {
    helper: Helper,
    netns: u64,
    sockets: u64,
}

impl Pods {
    fn spawn(names: &[String], per: usize) -> Result<Self> {
        let exe = sys::own_exe();
        let mut helpers = Vec::with_capacity(names.len());
        for name in names {
            sys::bail_if_interrupted()?;
            helpers.push(Helper::spawn(
                &format!("the helper in {name}"),
                Command::new(&exe).args(["bench", "--hold-close-wait", &format!("{name}/{per}")]),
            )?);
        }
        let mut pods = Self(Vec::with_capacity(names.len()));
        for mut helper in helpers {
            let said = helper.expect("held ", Duration::from_secs(60))?;
            let (sockets, netns) = said
                .split_once(' ')
                .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)))
                .with_context(|| format!("{} said `held {said}`", helper.name))?;
            pods.0.push(Pod {
                helper,
                netns,
                sockets,
            });
        }
        Ok(pods)
    }

    /// pid -> (netns inode, sockets held).
    fn expected(&self) -> HashMap<u32, (u64, u64)> {
        self.0
            .iter()
            .map(|p| (p.helper.pid(), (p.netns, p.sockets)))
            .collect()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        // All told first, so they exit together.
        for p in &mut self.0 {
            p.helper.close_stdin();
        }
    }
}

/// `bench --hold-close-wait NS/N`: enters the network namespace NS, brings
/// its loopback up, makes N connections to itself and closes their client
/// ends, so it holds N accepted sockets in CLOSE_WAIT; says `held N INODE`
/// (its namespace's) and keeps them until stdin closes.
pub fn hold_close_wait(spec: &str) -> Result<()> {
    let (name, n) = spec
        .rsplit_once('/')
        .with_context(|| format!("--hold-close-wait {spec}: NS/N"))?;
    let n: usize = n.parse().context("--hold-close-wait: N")?;
    enter(name)?;
    crate::cmd::stdout(Command::new("ip").args(["link", "set", "lo", "up"]))
        .with_context(|| format!("bringing the loopback of {name} up"))?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a listener")?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let client =
            TcpStream::connect(addr).with_context(|| format!("connection {} to {addr}", i + 1))?;
        held.push(listener.accept().context("accept")?.0);
        // The client closes: the accepted end goes to CLOSE_WAIT.
        drop(client);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while close_wait_on(addr.port())? < n {
        if Instant::now() > deadline {
            bail!("{name}: fewer than {n} CLOSE_WAIT sockets after 10 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let netns = fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino();
    println!("held {} {netns}", held.len());
    std::io::stdout().flush()?;
    for _ in std::io::stdin().lock().lines() {}
    drop(held);
    Ok(())
}

/// Moves this (single-threaded) process into the named network namespace.
fn enter(name: &str) -> Result<()> {
    let path = PathBuf::from(NETNS_DIR).join(name);
    let ns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns only reads the fd, which `ns` keeps open across the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering the network namespace {name}"));
    }
    Ok(())
}

/// CLOSE_WAIT sockets on local `port` in this process's namespace
/// (`/proc/self/net/tcp`; state 08).
fn close_wait_on(port: u16) -> Result<usize> {
    let tcp = fs::read_to_string("/proc/self/net/tcp").context("reading /proc/self/net/tcp")?;
    let local = format!(":{port:04X}");
    Ok(tcp
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "08"
        })
        .count())
}

pub fn median_ms(v: &[Duration]) -> Option<f64> {
    median(&durations_ms(v))
}

fn ms_range(v: &[Duration]) -> String {
    med_range(&durations_ms(v), "ms", 0)
}

fn found_text(f: &Found, total: u64, processes: usize) -> String {
    let mut t = format!(
        "{} of {} sockets, {} of {} processes whole",
        thousands(f.right as f64),
        thousands(total as f64),
        f.processes_right,
        processes
    );
    if f.elsewhere > 0 {
        let _ = write!(
            t,
            "; **{} named under another pid or namespace**",
            thousands(f.elsewhere as f64)
        );
    }
    if !f.short.is_empty() {
        let _ = write!(t, "; short: {}", f.short.join(", "));
    }
    t
}

/// The `## Network namespaces` section's body.
pub fn render(r: &mut String, s: &Scale, machine: &str) {
    let total = (s.namespaces * s.per) as u64;
    let _ = writeln!(
        r,
        "A node with {} pods of {} CLOSE_WAIT sockets each, on {machine}: {} network namespaces made with `ip netns add` (loopback up), in each one helper process that accepted {} connections from itself on its own loopback and holds them after their clients closed (set up in {:.1} s; the helpers take {:.1} MiB in all, their proportional set sizes summed). Then, alternating, {} runs each after one warm-up run: `tcptrace leaks --once` as root (sock_diag from inside each namespace, entered with setns), the same without CAP_SYS_ADMIN (`setpriv {} -- tcptrace leaks --once`: the `/proc/PID/net/tcp{{,6}}` route), and `ip netns exec NS ss -tanp state close-wait` in each of the {} namespaces one after the other (their total). Output to /dev/null; wall time, median (min–max). Whom each route names was checked in one more run with `--json`: every helper's pid, its namespace's inode and its {} sockets.\n",
        s.namespaces,
        s.per,
        s.namespaces,
        s.per,
        s.setup.as_secs_f64(),
        s.helpers_pss_kib as f64 / 1024.0,
        s.root.len(),
        NO_SYS_ADMIN.join(" "),
        s.namespaces,
        s.per
    );
    r.push_str("| Command | wall time | sockets found |\n|---|---:|---|\n");
    let _ = writeln!(
        r,
        "| `tcptrace leaks --once` as root (setns, sock_diag) | {} | {} |",
        ms_range(&s.root),
        found_text(&s.root_found, total, s.namespaces)
    );
    let _ = writeln!(
        r,
        "| `tcptrace leaks --once` without CAP_SYS_ADMIN (`/proc/PID/net/tcp`) | {} | {} |",
        ms_range(&s.no_admin),
        found_text(&s.no_admin_found, total, s.namespaces)
    );
    let _ = writeln!(
        r,
        "| `ip netns exec NS ss -tanp state close-wait`, in each of the {} namespaces (total) | {} | {} listed |",
        s.namespaces,
        ms_range(&s.ss),
        thousands(s.ss_listed as f64)
    );
    if let (Some(ss), Some(root), Some(no_admin)) =
        (median_ms(&s.ss), median_ms(&s.root), median_ms(&s.no_admin))
    {
        let _ = writeln!(
            r,
            "\n`leaks --once` over every namespace takes {:.2}× the time of `ss` in each as root and {:.2}× without CAP_SYS_ADMIN ({:.0} ms per namespace for `ip netns exec … ss`).",
            root / ss,
            no_admin / ss,
            ss / s.namespaces as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_leaks_json() {
        let expected: HashMap<u32, (u64, u64)> = [(10, (900, 100)), (11, (901, 100))].into();
        let json = "\
{\"pid\":10,\"comm\":\"xtask\",\"netns\":900,\"close_wait\":100}
{\"pid\":11,\"comm\":\"xtask\",\"netns\":901,\"close_wait\":60}
{\"pid\":12,\"comm\":\"other\",\"netns\":901,\"close_wait\":40}
{\"pid\":13,\"comm\":\"host\",\"netns\":1,\"close_wait\":7}
not json
";
        let f = found(json, &expected);
        assert_eq!(
            f,
            Found {
                right: 160,
                processes_right: 1,
                elsewhere: 40,
                short: vec!["pid 11: 60 of 100".to_owned()],
            }
        );
    }

    #[test]
    fn reads_close_wait_of_a_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        // The port is unique to the listener's address only: a socket of
        // another test on another address may share it, so count ours as
        // the difference. And a read of /proc/net/tcp is no snapshot (it
        // comes a page at a time while other tests open and close sockets):
        // one read may miss a socket. So this asserts what the bench relies
        // on, a wait until the count is reached (it failed 2 times in about
        // 130 runs when it asserted one more read after the wait).
        let before = close_wait_on(port).unwrap();
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = close_wait_on(port).unwrap();
        while seen < before + 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            seen = close_wait_on(port).unwrap();
        }
        assert_eq!(seen, before + 1, "CLOSE_WAIT on port {port}");
    }
}
