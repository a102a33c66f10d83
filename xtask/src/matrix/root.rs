//! What goes in a guest's root besides the kernel's modules: busybox,
//! tcptrace, the test binaries, the tools they run, the files they read;
//! and the init script that runs them and reports the kernel's facts.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use super::GUEST_TOOLS;
use super::guest;
use super::initramfs::{self, Tree};
use super::select::TestBinary;
use crate::cmd;

/// Where busybox and its applets go: away from every host path, last on PATH.
pub const BUSYBOX_DIR: &str = "/.matrix/bin";
pub const MODULES_DIR: &str = "/.matrix/modules";

/// Everything but the kernel's modules and the init script.
pub fn base_tree(
    dir: &Path,
    tcptrace: &Path,
    selected: &[TestBinary],
    python: bool,
) -> Result<Tree> {
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

/// How many times longer than on the host the guests' tests may wait
/// (`TCPTRACE_TEST_SLOWDOWN`): attaching takes 4-10 s under TCG, 50 ms on
/// the host.
const SLOWDOWN: u32 = 5;

/// The fact that tells how long the kernel took to reach init (uptime, s).
pub const BOOTED: &str = "init started at uptime ";

/// How much of `tcptrace watch -v`'s output a guest prints when the kernel
/// program does not load: the verifier's verdict and the instructions
/// before it.
const ATTACH_LOG_LINES: usize = 60;

/// How long a guest waits for each view's program to attach before it
/// reports that it did not, and where it waits (as long as the tests wait).
const VIEW_ATTACH_SECS: u32 = 300;

/// Syscall tracepoints whose presence each guest reports.
const SYSCALL_TRACEPOINTS: &[&str] = &[
    "sys_exit_accept4",
    "sys_exit_accept",
    "sys_enter_connect",
    "sys_exit_socket",
];

/// The guest's PID 1: mounts, modules, the kernel's facts, the tests, one
/// closing line, power off.
pub fn init_script(
    tcptrace: &Path,
    selected: &[TestBinary],
    without_diag: &[&str],
    nonce: &str,
) -> String {
    // Tests that need the kernel without tcp_diag (ignored on the host) run
    // first, before the modules go in; the others after.
    let short = |t: &String| t.rsplit("::").next().unwrap_or(t).to_owned();
    let split = |early: bool| -> Vec<(String, &Path, Vec<String>)> {
        selected
            .iter()
            .map(|b| {
                let tests = b
                    .tests
                    .iter()
                    .filter(|t| without_diag.contains(&short(t).as_str()) == early)
                    .cloned()
                    .collect();
                (b.name.clone(), b.exe.as_path(), tests)
            })
            .filter(|(_, _, tests): &(String, &Path, Vec<String>)| !tests.is_empty())
            .collect()
    };
    let runs = |early: bool| -> String {
        let mut out = String::new();
        for (name, exe, tests) in split(early) {
            let _ = writeln!(out, "echo '{}{name}'", guest::RUN_MARK);
            let _ = writeln!(
                out,
                "{} --test-threads=1 {}--exact {} || status=1",
                exe.display(),
                if early { "--ignored " } else { "" },
                tests.join(" ")
            );
        }
        out
    };
    let mut s = String::new();
    let facts = guest::FACT_MARK;
    let _ = write!(
        s,
        r#"#!{BUSYBOX_DIR}/sh
# Written by `cargo xtask matrix`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{BUSYBOX_DIR}
export HOME=/root RUST_BACKTRACE=1
{nofile}mount -t proc proc /proc
echo "{facts}{booted}$(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{scratch}mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
# The tests' time limits stretch this many times (TCG is 10-100x slower).
export TCPTRACE_TEST_SLOWDOWN={SLOWDOWN}
status=0
cd {cwd}
{early}cd /
for m in {MODULES_DIR}/*.ko; do
    insmod "$m" || echo "tcptrace-matrix: insmod $m failed"
done

echo "{facts}uname -r: $(uname -r)"
echo "{facts}CPUs online: $(cat /sys/devices/system/cpu/online)"
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
# Whether the kernel program loads at all; if not, the end of the verifier's
# log says why (the tests would only repeat the first line, many times).
t0=$(cut -d' ' -f1 /proc/uptime)
{tcptrace} watch --duration 1 -L 1 -v > /tmp/tcptrace-attach.log 2>&1
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
if [ $rc = 0 ]; then
    echo "{facts}tcptrace watch attaches: yes ('watch --duration 1' took $(echo "$t0 $t1" | awk '{{print $2 - $1}}') s)"
else
    echo "{facts}tcptrace watch attaches: no (exit $rc); the end of its -v output:"
    tail -n {ATTACH_LOG_LINES} /tmp/tcptrace-attach.log | sed "s|^|{facts}attach: |"
fi

# Whether the programs for a kernel that moved a record field load here too
# (forced: no kernel here moved one).
TCPTRACE_COPY_RECORDS=1 {tcptrace} watch --duration 1 -L 1 -v > /tmp/tcptrace-copied.log 2>&1
rc=$?
if [ $rc = 0 ]; then
    echo "{facts}tcptrace watch attaches with records copied: yes"
else
    echo "{facts}tcptrace watch attaches with records copied: no (exit $rc); the end of its -v output:"
    tail -n {ATTACH_LOG_LINES} /tmp/tcptrace-copied.log | sed "s|^|{facts}copied: |"
fi

# How long each view's program takes to load: each configures the program
# differently, and a verifier that explores too many paths (5.10's) takes
# minutes under TCG where the tests would only say "did not attach".
for view in leaks hist serve; do
    case $view in
        serve) args="serve --listen 127.0.0.1:0";;
        *) args=$view;;
    esac
    # One log each, made before the start: the background shell opens its
    # redirection later, and a log left from the view before would answer.
    log=/tmp/tcptrace-$view.log
    : > $log
    t0=$(cut -d' ' -f1 /proc/uptime)
    {tcptrace} $args -v >> $log 2>&1 &
    pid=$!
    waited=0
    while [ $waited -lt {VIEW_ATTACH_SECS} ] && kill -0 $pid 2>/dev/null \
        && ! grep -q "^tcptrace: attached" $log; do
        sleep 1
        waited=$((waited + 1))
    done
    t1=$(cut -d' ' -f1 /proc/uptime)
    if grep -q "^tcptrace: attached" $log; then
        echo "{facts}tcptrace $view attaches: yes (in $(echo "$t0 $t1" | awk '{{print $2 - $1}}') s)"
    else
        echo "{facts}tcptrace $view attaches: no (after $(echo "$t0 $t1" | awk '{{print $2 - $1}}') s); the end of its -v output:"
        tail -n {ATTACH_LOG_LINES} $log | sed "s|^|{facts}$view: |"
        if kill -0 $pid 2>/dev/null; then
            # Where it waits: the verifier shows as bpf_check in the kernel's stack.
            sed "s|^|{facts}$view: state |" /proc/$pid/status | grep "State:"
            cat /proc/$pid/task/*/stack 2>/dev/null | sed "s|^|{facts}$view: stack |"
            kill -KILL $pid
        else
            wait $pid
            echo "{facts}$view: exit $?"
        fi
    fi
    kill -INT $pid 2>/dev/null
    wait $pid 2>/dev/null
done

# Whether --stacks can name the caller of the C library's connect()
# (bpf_task_pt_regs, 5.15): tcptrace warns when it cannot.
{tcptrace} watch --stacks --duration 1 -L 1 > /tmp/tcptrace-stacks.log 2>&1
if grep -q "cannot give the user stack pointer" /tmp/tcptrace-stacks.log; then
    echo "{facts}stacks caller: no ($(grep "cannot give" /tmp/tcptrace-stacks.log))"
elif grep -q "tcptrace: attached" /tmp/tcptrace-stacks.log; then
    echo "{facts}stacks caller: yes"
else
    echo "{facts}stacks caller: unknown (watch --stacks: $(tail -n 1 /tmp/tcptrace-stacks.log))"
fi
# Whether a non-root tracer with the documented capabilities (and limits)
# attaches, with
# the kernel's perf_event_paranoid and with 2 (upstream's default), and with
# CAP_SYS_ADMIN too: Debian's kernels restrict perf_event_open at 3.
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)
caps=+bpf,+perfmon,+dac_read_search,+sys_ptrace
for try in "$paranoid $caps" "2 $caps" "$paranoid $caps,+sys_admin"; do
    set -- $try
    echo "$1" > /proc/sys/kernel/perf_event_paranoid
    # As the unit's LimitMEMLOCK=infinity does (Linux < 5.11 charges maps to it).
    (ulimit -l unlimited && {setpriv} --reuid=65534 --regid=65534 --clear-groups \
        --inh-caps=-all,$2 --ambient-caps=$2 {tcptrace} watch --duration 1 -L 1) > /tmp/tcptrace-caps.log 2>&1
    echo "{facts}as nobody with $2, perf_event_paranoid $1: exit $? $(grep -v '^tcptrace: [0-9]* events' /tmp/tcptrace-caps.log | tr '\n' ' ')"
done
echo "$paranoid" > /proc/sys/kernel/perf_event_paranoid

cd {cwd}
"#,
        tracepoints = SYSCALL_TRACEPOINTS
            .iter()
            .map(|t| format!(" /sys/kernel/tracing/events/syscalls/{t}"))
            .collect::<String>(),
        members = BTF_MEMBERS.join(" "),
        early = runs(true),
        scratch = scratch_mounts(),
        booted = BOOTED,
        nofile = nofile_limits(),
        tcptrace = tcptrace.display(),
        // busybox's sh runs its own applet for a bare `setpriv`.
        setpriv = find_program("setpriv").map_or("setpriv".into(), |p| p.display().to_string()),
        cwd = crate::workspace_root().join("tcptrace").display(),
    );
    s.push_str(&runs(false));
    let _ = write!(
        s,
        "echo \"{}{nonce} exit=$status\"\npoweroff -f\n",
        guest::DONE_MARK
    );
    s
}

/// The host's open-file limits, for the tests to run under the same (the
/// kernel gives init 1024, which a test that leaks 2,000 sockets exceeds).
fn nofile_limits() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return String::new();
    };
    // `Max open files            20000                20000                files`
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.get(3..5) {
        Some([soft, hard]) => format!("ulimit -Hn {hard}\nulimit -Sn {soft}\n"),
        _ => String::new(),
    }
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
