//! `cargo xtask matrix`: tcptrace's real-kernel integration tests inside
//! Debian's production kernels (bullseye's 5.10, bookworm's 6.1, trixie's
//! 6.12), each booted under qemu with TCG (the nested KVM of CI machines
//! hides BMI1/BMI2, which Debian's decompressors need).
//!
//! Kernels come from the mirror the system already uses (matrix/kernel.rs);
//! the guest's root is an initramfs of busybox, tcptrace, the test binaries
//! and the tools they run, at their host paths (matrix/initramfs.rs); the
//! console streams through and its closing line gives the verdict
//! (matrix/guest.rs). Everything is cached under target/matrix/.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

mod guest;
mod initramfs;
mod kernel;

use guest::{Boot, Console};
use initramfs::Tree;
use kernel::{GUEST_MODULES, Mirrors, SideApt};

/// The kernels: the series we name them by and the Debian suite whose
/// cloud kernel it is (its `-security` suite joins it when the system's
/// sources have one).
const KERNELS: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "trixie"),
];

/// The integration tests the guests run, by test name (the last `::`
/// segment, so it does not matter which test binary holds them): those
/// that need only what the initramfs has. Not here: tests that start
/// python3 (the leak scenarios, the python clients), Prometheus or
/// promtool, libbpf-tools or bpftrace, systemd-analyze. A name that no
/// test binary has any more fails the run, so renames are noticed.
pub const GUEST_TESTS: &[&str] = &[
    // kernel_contract: the tracepoint layout and BTF, the heart of the matter.
    "tracepoint_record_layout_matches_the_shared_struct",
    "state_numbers_and_names_match_the_kernel",
    "accept_exit_records_have_ret_where_the_program_reads_it",
    "every_member_the_program_follows_is_in_this_kernels_btf",
    // cli
    "bad_flags_and_values_are_one_line_and_exit_2",
    "help_lists_examples_and_exit_codes",
    "without_privileges_it_names_the_capabilities",
    // watch
    "active_close_client_first_full_sequences",
    "passive_close_on_the_client_side",
    "refused_connect_is_syn_sent_then_close",
    "listen_then_close",
    "ipv6_loopback",
    "lport_filter_drops_other_ports_in_the_kernel",
    "rport_and_family_filters",
    "state_filter_keeps_transitions_into_or_out_of_it",
    "text_output_and_summary_line",
    "duration_stops_by_itself",
    "sigterm_and_sighup_detach_with_a_summary",
    "a_storm_of_loopback_connections_loses_nothing",
    // hist
    "close_wait_of_300ms_lands_in_the_262144_bucket",
    "active_close_ends_at_the_ack_unless_half_closed_grouped_by_rport",
    "delayed_accept_is_time_in_established_not_in_the_handshake",
    "grouping_by_lport_with_two_listeners",
    "text_output_is_bcc_shaped",
    "intervals_stop_after_count_and_never_count_twice",
    "ipv6_grouped_by_remote_address",
    "exact_agrees_with_the_kernel",
    "a_storm_is_counted_exactly",
    "a_full_socket_table_evicts_and_says_so",
    // reliability
    "a_full_ring_buffer_is_counted_exactly_and_the_tracer_recovers",
    "every_exit_path_detaches_the_program_and_link",
    "output_piped_into_head_ends_quietly",
    "the_socket_table_is_bounded_and_evictions_are_counted",
    "no_tracefs_and_no_right_to_mount_it_names_the_fix",
    "unmounted_tracefs_is_mounted_on_demand",
    "missing_btf_degrades_with_a_warning",
    "watch_runs_with_only_the_documented_capabilities",
    // serve, without Prometheus
    "scrapes_are_answered_during_a_connection_storm",
    "a_port_in_use_is_one_line_and_exit_1",
    "help_documents_the_default_address_and_exit_codes",
];

/// With `--python`: the tests that need python3 too (and nothing else the
/// initramfs lacks). Not here: those that need Prometheus or python3-yaml.
pub const GUEST_PYTHON_TESTS: &[&str] = &[
    // leaks: the leak scenarios (tests/integration/scenarios/leaker.py)
    "server_that_never_closes_accepted_sockets",
    "client_that_never_closes_after_the_server_closed",
    "a_child_that_inherited_the_socket_is_named_not_the_parent",
    "a_socket_passed_with_scm_rights_belongs_to_the_receiver",
    "ipv6_leaks",
    "a_process_near_its_open_file_limit",
    "thousands_of_leaked_sockets_in_one_process",
    "check_exit_status_for_cron",
    "the_live_view_measures_new_leaks_and_ages_grow",
    "watch_names_the_owner_when_someone_else_is_on_the_cpu",
    "a_leak_inside_a_container_names_the_container",
    // owners: python peers on loopback and across a veth pair
    "loopback_ipv4",
    "loopback_ipv6",
    "loopback_ipv4_mapped_ipv6",
    "two_hosts_over_veth_ipv4",
    "two_hosts_over_veth_ipv6",
    // python clients
    "pid_and_comm_filters_follow_the_owner",
    "by_process_names_owners_and_the_pid_filter_is_exact",
    // serve, without Prometheus
    "a_leak_in_a_containers_own_network_namespace_is_named_with_the_container",
    "the_units_capabilities_are_enough_without_root",
];

/// The python3 the tests start (by this path), and what of its standard
/// library the guest does without: the static libpython and build files
/// (25 MiB), the test suite, IDLE, tkinter and other tools.
const PYTHON: &str = "/usr/bin/python3";
const PYTHON_STDLIB_SKIP: &[&str] = &[
    "config-3.11-x86_64-linux-gnu",
    "config-3.12-x86_64-linux-gnu",
    "config-3.13-x86_64-linux-gnu",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "pydoc_data",
    "ensurepip",
    "distutils",
    "site-packages",
    "dist-packages",
];

/// Host programs the selected tests run (by name, found on PATH), copied in
/// with their libraries; busybox provides every other command.
const GUEST_TOOLS: &[&str] = &[
    "ss",         // sock_diag ground truth
    "ip",         // lo up, ip netns
    "bash",       // reliability's shell pipelines
    "setpriv",    // dropping privileges (util-linux: busybox's lacks options)
    "unshare",    // private mount namespaces
    "mountpoint", // reliability's tracefs checks (not in busybox)
    "bpftool",    // loaded programs and links; the BTF facts below
];

/// BTF members whose offsets each guest prints (`struct.member`): what the
/// kernel program reads from kernel memory, and what it may read next.
const BTF_MEMBERS: &[&str] = &[
    "sock.sk_socket",
    "sock.__sk_common",
    "sock_common.skc_net",
    "sock_common.skc_family",
    "net.ns",
    "ns_common.inum",
    "socket.file",
    "socket.sk",
    "socket_alloc.vfs_inode",
    "file.f_inode",
    "file.private_data",
    "inode.i_ino",
    "task_struct.files",
    "task_struct.group_leader",
    "task_struct.comm",
    "files_struct.fdt",
    "fdtable.fd",
    "fdtable.max_fds",
];

/// The fact that tells how long the kernel took to reach init (uptime, s).
const BOOTED: &str = "init started at uptime ";

/// Syscall tracepoints whose presence each guest reports.
const SYSCALL_TRACEPOINTS: &[&str] = &[
    "sys_exit_accept4",
    "sys_exit_accept",
    "sys_enter_connect",
    "sys_exit_socket",
];

/// How long a guest may take, boot to power-off, unless told: the three
/// take 3-4 minutes each under TCG on 2 vCPUs, so this only stops a hang.
const DEFAULT_TIMEOUT_SECS: u64 = 1200;

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Only these kernels (repeatable) [default: all]
    #[arg(long = "kernel", value_name = "SERIES", value_parser = ["5.10", "6.1", "6.12"])]
    kernels: Vec<String>,
    /// Put python3 (and its standard library) in the guests and run the
    /// tests that need it too (GUEST_PYTHON_TESTS)
    #[arg(long)]
    python: bool,
    /// Seconds each guest may take, boot to power-off
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// libtest arguments choosing the tests instead of the built-in
    /// selection (names, `--exact`, `--skip NAME`); resolved on the host with
    /// `--list`, then run by exact name in each guest
    #[arg(last = true, value_name = "TEST-FILTER-ARGS")]
    filter: Vec<OsString>,
}

impl Default for MatrixArgs {
    /// What `cargo xtask test` runs: every kernel, the built-in selection.
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            python: false,
            timeout: DEFAULT_TIMEOUT_SECS,
            filter: Vec::new(),
        }
    }
}

/// `cargo xtask matrix`.
pub fn matrix(args: &MatrixArgs) -> Result<()> {
    setup::ensure(false)?;
    run(args)
}

/// The matrix without the set-up check (`cargo xtask test` did it).
pub fn run(args: &MatrixArgs) -> Result<()> {
    let started = Instant::now();
    let dir = crate::target_dir().join("matrix");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let timeout = Duration::from_secs(args.timeout.max(60));
    let kernels: Vec<(&str, &str)> = KERNELS
        .iter()
        .copied()
        .filter(|(series, _)| args.kernels.is_empty() || args.kernels.iter().any(|k| k == series))
        .collect();

    let (tcptrace, binaries) = build_tests()?;
    let mut wanted = GUEST_TESTS.to_vec();
    if args.python {
        wanted.extend(GUEST_PYTHON_TESTS);
    }
    let selected = select_tests(&binaries, &args.filter, &wanted)?;
    let total: usize = selected.iter().map(|b| b.tests.len()).sum();
    println!(
        "matrix: {total} tests from {} binaries, in {} kernels",
        selected.len(),
        kernels.len()
    );
    let base = base_tree(&dir, &tcptrace, &selected, args.python)?;
    let mirrors = Mirrors::from_system()?;

    let mut rows = Vec::new();
    for (series, suite) in kernels {
        let row = run_kernel(&dir, &mirrors, series, suite, &base, &selected, timeout);
        let row = row.unwrap_or_else(|err| Row::broken(series, format!("{err:#}")));
        rows.push(row);
    }
    let failed = print_summary(&rows, started.elapsed());
    if failed > 0 {
        bail!("kernel matrix: {failed} of {} kernels failed", rows.len());
    }
    Ok(())
}

/// A test binary and the tests of it a guest runs.
struct TestBinary {
    /// The cargo target (`watch`), which names its tests in reports.
    name: String,
    exe: PathBuf,
    tests: Vec<String>,
}

/// Builds tcptrace and its integration tests as `cargo test` does and
/// returns tcptrace's path and the test executables, as cargo reports them.
fn build_tests() -> Result<(PathBuf, Vec<TestBinary>)> {
    let mut cargo = Command::new(crate::cargo());
    cargo
        .current_dir(crate::workspace_root())
        .args(["test", "-p", "tcptrace", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    println!("$ {}", cmd::display(&cargo));
    let out = cargo.output().context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut tcptrace = None;
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let name = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        if kinds.iter().any(|k| k == "test") {
            binaries.push(TestBinary {
                name,
                exe: exe.into(),
                tests: Vec::new(),
            });
        } else if kinds.iter().any(|k| k == "bin") && name == "tcptrace" && !is_test {
            tcptrace = Some(PathBuf::from(exe));
        }
    }
    let tcptrace = tcptrace.context("cargo built no tcptrace binary")?;
    if binaries.is_empty() {
        bail!("cargo reported no integration test executables for tcptrace");
    }
    Ok((tcptrace, binaries))
}

/// The tests each binary runs in the guests: those `wanted` names, or what
/// the user's filter arguments select (libtest's `--list` decides, on the
/// host).
fn select_tests(
    binaries: &[TestBinary],
    filter: &[OsString],
    wanted: &[&str],
) -> Result<Vec<TestBinary>> {
    let mut selected = Vec::new();
    let mut matched = vec![false; wanted.len()];
    for b in binaries {
        let mut list = Command::new(&b.exe);
        list.args(["--list", "--format", "terse"]).args(filter);
        let text =
            cmd::stdout(&mut list).with_context(|| format!("{} failed", cmd::display(&list)))?;
        let names = text
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned);
        let tests: Vec<String> = if filter.is_empty() {
            names
                .filter(|n| {
                    let short = n.rsplit("::").next().unwrap_or(n);
                    let hit = wanted.iter().position(|t| *t == short);
                    if let Some(i) = hit {
                        matched[i] = true;
                    }
                    hit.is_some()
                })
                .collect()
        } else {
            names.collect()
        };
        if !tests.is_empty() {
            selected.push(TestBinary {
                name: b.name.clone(),
                exe: b.exe.clone(),
                tests,
            });
        }
    }
    if filter.is_empty() {
        let missing: Vec<&str> = wanted
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(t, _)| *t)
            .collect();
        if !missing.is_empty() {
            bail!(
                "GUEST_TESTS or GUEST_PYTHON_TESTS (xtask/src/matrix.rs) name tests no test binary has: {}",
                missing.join(", ")
            );
        }
    }
    if selected.is_empty() {
        bail!("the filter selects no test");
    }
    Ok(selected)
}

/// Where busybox and its applets go: away from every host path, last on PATH.
const BUSYBOX_DIR: &str = "/.matrix/bin";
const MODULES_DIR: &str = "/.matrix/modules";

/// Everything but the kernel's modules and the init script.
fn base_tree(dir: &Path, tcptrace: &Path, selected: &[TestBinary], python: bool) -> Result<Tree> {
    let mut tree = Tree::default();
    let stripped = dir.join("stripped");
    for d in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root"] {
        tree.dir(Path::new(d));
    }
    // The kernel opens it for init before devtmpfs is mounted.
    tree.char_dev(Path::new("/dev/console"), 5, 1);
    // `ip netns` keeps its mounts under /var/run/netns (a link to /run).
    tree.host_path(Path::new("/var/run"), None)?;

    let busybox = find_program("busybox")?;
    tree.executable(&busybox, None)?;
    let applets = cmd::stdout(Command::new(&busybox).arg("--list"))
        .with_context(|| format!("{} --list failed", busybox.display()))?;
    for applet in applets.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" {
            tree.symlink(&Path::new(BUSYBOX_DIR).join(applet), &busybox);
        }
    }

    tree.executable(tcptrace, Some(&initramfs::stripped(tcptrace, &stripped)?))?;
    for b in selected {
        tree.executable(&b.exe, Some(&initramfs::stripped(&b.exe, &stripped)?))?;
    }
    for tool in GUEST_TOOLS {
        tree.executable(&find_program(tool)?, None)?;
    }
    // cargo runs tests in their package's directory; the tests read their
    // scenarios and deploy/'s files by compile-time paths (small, so always).
    let root = crate::workspace_root();
    tree.dir(&root.join("tcptrace"));
    for data in ["tcptrace/tests", "deploy"] {
        if root.join(data).is_dir() {
            tree.host_tree(&root.join(data), &[])?;
        }
    }
    if python {
        tree.executable(Path::new(PYTHON), None)?;
        let stdlib = cmd::stdout(Command::new(PYTHON).args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ]))
        .with_context(|| format!("{PYTHON} cannot name its standard library"))?;
        tree.host_tree(Path::new(stdlib.trim()), PYTHON_STDLIB_SKIP)?;
    }
    Ok(tree)
}

/// `name` on PATH (and in the sbin directories, which a user's PATH may lack).
fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed (cargo xtask setup installs it)"))
}

/// One kernel's line in the summary.
struct Row {
    series: String,
    version: String,
    elapsed: Option<Duration>,
    /// Seconds from qemu's start to init (the guest's uptime then).
    boot: Option<f64>,
    passed: usize,
    failed: Vec<String>,
    /// Why the kernel failed as a whole (download, boot, timeout).
    problem: Option<String>,
    failures: BTreeMap<String, Vec<String>>,
}

impl Row {
    fn broken(series: &str, problem: String) -> Self {
        println!("[{series}] FAILED: {problem}");
        Self {
            series: series.to_owned(),
            version: "-".to_owned(),
            elapsed: None,
            boot: None,
            passed: 0,
            failed: Vec::new(),
            problem: Some(problem),
            failures: BTreeMap::new(),
        }
    }

    fn ok(&self) -> bool {
        self.problem.is_none() && self.failed.is_empty()
    }
}

fn run_kernel(
    dir: &Path,
    mirrors: &Mirrors,
    series: &str,
    suite: &str,
    base: &Tree,
    selected: &[TestBinary],
    timeout: Duration,
) -> Result<Row> {
    let apt = SideApt::new(dir, mirrors, suite)?;
    apt.update(series)
        .with_context(|| format!("cannot fetch the {series} kernel"))?;
    let kernel = apt
        .fetch(dir, series)
        .with_context(|| format!("cannot fetch the {series} kernel"))?;
    let release = kernel.release()?;
    let version = format!("{release} ({} from {})", kernel.version, kernel.origin);
    println!("[{series}] kernel {} {version}", kernel.package);

    let mut tree = base.clone();
    let modules = kernel.modules_with_deps(GUEST_MODULES)?;
    let mut names = Vec::new();
    for (i, (name, bytes)) in modules.into_iter().enumerate() {
        let path = Path::new(MODULES_DIR).join(format!("{i:02}-{name}.ko"));
        tree.bytes(&path, bytes, 0o644);
        names.push(name);
    }
    let nonce = format!(
        "{:x}{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
        std::process::id()
    );
    tree.bytes(
        Path::new("/init"),
        init_script(selected, &nonce).into_bytes(),
        0o755,
    );
    let work = dir.join(series);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let cpio = work.join("initramfs.cpio");
    let size = tree.write(&cpio)?;
    println!(
        "[{series}] initramfs {} ({:.1} MiB, modules: {})",
        cpio.display(),
        size as f64 / (1024.0 * 1024.0),
        names.join(" ")
    );

    let console = Boot {
        tag: series,
        vmlinuz: &kernel.vmlinuz()?,
        initramfs: &cpio,
        nonce: &nonce,
        timeout,
        log: &work.join("console.log"),
    }
    .run()?;
    let facts = work.join("facts.txt");
    fs::write(&facts, console.facts.join("\n") + "\n")
        .with_context(|| format!("writing {}", facts.display()))?;
    Ok(row(series, version, selected, console))
}

/// Every selected test counts: one without an `ok` line (failed, or never
/// reached because the guest died) is a failure.
fn row(series: &str, version: String, selected: &[TestBinary], console: Console) -> Row {
    let mut passed = 0;
    let mut failed = Vec::new();
    for b in selected {
        for t in &b.tests {
            let key = format!("{}::{t}", b.name);
            match console.results.get(&key) {
                Some(true) => passed += 1,
                Some(false) => failed.push(key),
                None => failed.push(format!("{key} (no result)")),
            }
        }
    }
    let problem = console.problem.clone().or_else(|| match console.exit {
        Some(0) if failed.is_empty() => None,
        Some(0) => Some("tests failed, yet the guest's status was 0".to_owned()),
        // The failures say it all.
        Some(_) if !failed.is_empty() => None,
        Some(code) => Some(format!("the guest's tests ended with status {code}")),
        None => Some("no closing line on the console".to_owned()),
    });
    let problem = problem.map(|p| {
        if console.results.is_empty() {
            format!(
                "{p}; last console lines:\n    {}",
                console.tail.join("\n    ")
            )
        } else {
            p
        }
    });
    let boot = console
        .facts
        .iter()
        .find_map(|f| f.strip_prefix(BOOTED))
        .and_then(|s| s.trim().parse().ok());
    Row {
        series: series.to_owned(),
        version,
        elapsed: Some(console.elapsed),
        boot,
        passed,
        failed,
        problem,
        failures: console.failures,
    }
}

/// The guest's PID 1: mounts, modules, the kernel's facts, the tests, one
/// closing line, power off.
fn init_script(selected: &[TestBinary], nonce: &str) -> String {
    let mut s = String::new();
    let facts = guest::FACT_MARK;
    let _ = write!(
        s,
        r#"#!{BUSYBOX_DIR}/sh
# Written by `cargo xtask matrix`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{BUSYBOX_DIR}
export HOME=/root RUST_BACKTRACE=1
mount -t proc proc /proc
echo "{facts}{booted}$(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{scratch}mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for m in {MODULES_DIR}/*.ko; do
    insmod "$m" || echo "tcptrace-matrix: insmod $m failed"
done

echo "{facts}uname -r: $(uname -r)"
f=/sys/kernel/tracing/events/sock/inet_sock_set_state/format
if [ -e "$f" ]; then sed "s|^|{facts}format: |" "$f"; else echo "{facts}format: (no $f)"; fi
for p in /proc/sys/kernel/perf_event_paranoid /proc/sys/kernel/unprivileged_bpf_disabled; do
    echo "{facts}$p: $(cat $p 2>&1)"
done
for p in /sys/kernel/btf/vmlinux{tracepoints}; do
    if [ -e "$p" ]; then echo "{facts}$p: yes"; else echo "{facts}$p: no"; fi
done
if [ -e /sys/kernel/btf/vmlinux ]; then
    bpftool btf dump file /sys/kernel/btf/vmlinux | awk -F"'" -v want="{members}" '
        BEGIN {{ n = split(want, w, " "); for (i = 1; i <= n; i++) {{ split(w[i], p, "."); m[p[1]] = m[p[1]] " " p[2] " " }} }}
        /^\[/ {{ s = ""; if ($1 ~ / STRUCT $/ && ($2 in m) && !($2 in seen)) {{ s = $2; seen[s] = 1 }}; next }}
        s != "" && index(m[s], " " $2 " ") {{ split($3, kv, "bits_offset="); split(kv[2], v, " "); print "{facts}btf " s "." $2 " = " v[1] / 8 }}'
fi

cd {cwd}
status=0
"#,
        tracepoints = SYSCALL_TRACEPOINTS
            .iter()
            .map(|t| format!(" /sys/kernel/tracing/events/syscalls/{t}"))
            .collect::<String>(),
        members = BTF_MEMBERS.join(" "),
        scratch = scratch_mounts(),
        booted = BOOTED,
        cwd = crate::workspace_root().join("tcptrace").display(),
    );
    for b in selected {
        let _ = writeln!(s, "echo '{}{}'", guest::RUN_MARK, b.name);
        let _ = writeln!(
            s,
            "{} --test-threads=1 --exact {} || status=1",
            b.exe.display(),
            b.tests.join(" ")
        );
    }
    let _ = write!(
        s,
        "echo \"{}{nonce} exit=$status\"\npoweroff -f\n",
        guest::DONE_MARK
    );
    s
}

/// tmpfs on /tmp and /run, except where that would hide the files we
/// brought (a workspace under /tmp): the initramfs is writable anyway.
fn scratch_mounts() -> String {
    let root = crate::workspace_root();
    ["/tmp", "/run"]
        .iter()
        .filter(|d| !root.starts_with(d))
        .map(|d| format!("mount -t tmpfs tmpfs {d}\n"))
        .collect()
}

/// The table, then each failure's output (trimmed); returns the number of
/// kernels that failed.
fn print_summary(rows: &[Row], elapsed: Duration) -> usize {
    println!();
    println!("==> kernel matrix ({:.0} s in all)", elapsed.as_secs_f64());
    let width = rows
        .iter()
        .map(|r| r.version.len())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<7} {:<width$} {:>6} {:>10} {:>6} {:>6}  failing",
        "kernel", "version", "boot", "boot+test", "passed", "failed"
    );
    for r in rows {
        let time = r
            .elapsed
            .map_or("-".to_owned(), |d| format!("{:.0} s", d.as_secs_f64()));
        let failing = match &r.problem {
            Some(p) if r.passed == 0 => format!("FAILED: {}", first_line(p)),
            _ if r.failed.is_empty() => "-".to_owned(),
            _ if r.failed.len() > 4 => {
                format!(
                    "{} (+{} more)",
                    r.failed[..3].join(", "),
                    r.failed.len() - 3
                )
            }
            _ => r.failed.join(", "),
        };
        let boot = r.boot.map_or("-".to_owned(), |b| format!("{b:.1} s"));
        println!(
            "{:<7} {:<width$} {boot:>6} {:>10} {:>6} {:>6}  {failing}",
            r.series,
            r.version,
            time,
            r.passed,
            r.failed.len()
        );
    }
    for r in rows.iter().filter(|r| !r.ok()) {
        if let Some(p) = &r.problem {
            println!("\n[{}] {p}", r.series);
        }
        for test in &r.failed {
            println!("\n[{}] {test}", r.series);
            let lines = r.failures.get(test).map_or(&[][..], Vec::as_slice);
            // The backtrace only repeats the test's name.
            let mut in_backtrace = false;
            for line in lines.iter().filter(|l| !l.trim().is_empty()).take(40) {
                if line.starts_with("stack backtrace:") {
                    in_backtrace = true;
                } else if in_backtrace && line.starts_with("note: ") {
                    in_backtrace = false;
                } else if !in_backtrace {
                    println!("    {line}");
                }
            }
        }
    }
    rows.iter().filter(|r| !r.ok()).count()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
