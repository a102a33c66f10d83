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
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::setup;

mod guest;
mod initramfs;
mod kernel;
mod report;
mod root;
mod select;

use guest::Boot;
use initramfs::Tree;
use kernel::{GUEST_MODULES, Mirrors, SideApt};
use report::{Row, print_summary, row, support_table, with_support_table};
use root::{MODULES_DIR, base_tree, init_script};
use select::{TestBinary, build_tests, select_tests};

/// The kernels: the series we name them by and the Debian suite whose
/// cloud kernel it is (its `-security` suite joins it when the system's
/// sources have one).
const KERNELS: &[(&str, &str, &str)] = &[
    ("5.10", "bullseye", "11"),
    ("6.1", "bookworm", "12"),
    ("6.12", "trixie", "13"),
];

/// The tests the guests run, by test name (the last `::` segment, so it
/// does not matter which test binary or module holds them, integration or
/// unit tests): those that need only what the initramfs has. Not here:
/// tests that start python3 (the leak scenarios, the python clients; see
/// `--python`), Prometheus or promtool, libbpf-tools or bpftrace,
/// systemd-analyze, compilers. A name that no test binary has any more
/// fails the run, so renames are noticed.
pub const GUEST_TESTS: &[&str] = &[
    // The kernel contract (unit tests in tcptrace's kernel module): the
    // tracepoint layouts and BTF, the heart of the matter.
    "tracepoint_record_layout_matches_the_shared_struct",
    "state_numbers_and_names_match_the_kernel",
    "accept_exit_records_have_ret_where_the_program_reads_it",
    "every_member_the_program_follows_is_in_this_kernels_btf",
    // The path of a kernel that moved a record field, through each verifier.
    "a_copied_record_reads_what_the_context_loads_read",
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
    "statistics_carry_the_dwell_times_measured",
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
/// initramfs lacks). Not here: those that need Prometheus, python3-yaml or
/// python3-seccomp.
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
    // netns: leaks in network namespaces of their own
    "leaks_older_than_tcptrace_in_other_namespaces_match_ss_in_each",
    "serve_exports_leaks_of_other_namespaces_from_before_it_started",
    "namespaces_come_and_go_while_tracing",
    "fifty_namespaces_at_once",
    "least_privilege_routes",
    // python clients
    "pid_and_comm_filters_follow_the_owner",
    "by_process_names_owners_and_the_pid_filter_is_exact",
    // serve, without Prometheus
    "a_leak_in_a_containers_own_network_namespace_is_named_with_the_container",
    "the_units_capabilities_are_enough_without_root",
];

/// Tests that need a kernel without sock_diag for TCP: each guest runs
/// them (they are `#[ignore]`d on the host, which always has it) before it
/// inserts the tcp_diag and inet_diag modules.
pub const GUEST_WITHOUT_DIAG_TESTS: &[&str] =
    &["without_tcp_diag_leaks_reads_proc_net_tcp_with_one_warning"];

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

/// vCPUs per guest. Two, so that each kernel runs tcptrace's ring per CPU
/// with one socket's records in two rings (`watch`'s CPU-order test pins
/// its ends to CPUs 0 and 1). They run under single-threaded TCG (see
/// `Boot::run`): under multi-threaded TCG a vCPU ran kernel text the other
/// had just patched (text_poke_bp's int3, when a tracepoint's static key
/// flips at attach or detach), and the guest's kernel Oopsed or both vCPUs
/// locked up (seen on 5.10 and 6.12).
const GUEST_CPUS: u32 = 2;

/// How long a guest may take, boot to power-off, unless told: the three
/// take 3-5 minutes each under TCG on 2 vCPUs, so this only stops a hang.
/// With --python they take 8-20 minutes (failing owner tests wait out
/// their own timeouts).
const DEFAULT_TIMEOUT_SECS: u64 = 1200;
const DEFAULT_PYTHON_TIMEOUT_SECS: u64 = 2700;

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Only these kernels (repeatable) [default: all]
    #[arg(long = "kernel", value_name = "SERIES", value_parser = ["5.10", "6.1", "6.12"])]
    kernels: Vec<String>,
    /// Put python3 (and its standard library) in the guests and run the
    /// tests that need it too (GUEST_PYTHON_TESTS)
    #[arg(long)]
    python: bool,
    /// Seconds each guest may take, boot to power-off [default: 1200, with
    /// --python 2700]
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
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
            timeout: None,
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
    let timeout = args.timeout.unwrap_or(if args.python {
        DEFAULT_PYTHON_TIMEOUT_SECS
    } else {
        DEFAULT_TIMEOUT_SECS
    });
    let timeout = Duration::from_secs(timeout.max(60));
    let kernels: Vec<(&str, &str, &str)> = KERNELS
        .iter()
        .copied()
        .filter(|(series, ..)| args.kernels.is_empty() || args.kernels.iter().any(|k| k == series))
        .collect();
    let every_kernel = kernels.len() == KERNELS.len();

    let (tcptrace, binaries) = build_tests()?;
    let mut wanted = GUEST_TESTS.to_vec();
    if args.python {
        wanted.extend(GUEST_PYTHON_TESTS);
    }
    wanted.extend(GUEST_WITHOUT_DIAG_TESTS);
    let selected = select_tests(&binaries, &args.filter, &wanted)?;
    let total: usize = selected.iter().map(|b| b.tests.len()).sum();
    println!(
        "matrix: {total} tests from {} binaries, in {} kernels",
        selected.len(),
        kernels.len()
    );
    let base = base_tree(&dir, &tcptrace, &selected, args.python)?;
    let plan = Plan {
        mirrors: Mirrors::from_system()?,
        dir,
        tcptrace,
        base,
        selected,
        timeout,
    };

    let mut rows = Vec::new();
    for (series, suite, release) in kernels {
        let row = plan.run_kernel(series, suite);
        let mut row = row.unwrap_or_else(|err| Row::broken(series, format!("{err:#}")));
        row.debian = format!("{release} ({suite})");
        rows.push(row);
    }
    let failed = print_summary(&rows, started.elapsed());
    write_support(
        &plan.dir,
        &rows,
        args,
        started.elapsed(),
        every_kernel && args.filter.is_empty(),
    )?;
    if failed > 0 {
        bail!("kernel matrix: {failed} of {} kernels failed", rows.len());
    }
    Ok(())
}

/// What every kernel's run shares.
struct Plan {
    /// target/matrix
    dir: PathBuf,
    mirrors: Mirrors,
    tcptrace: PathBuf,
    /// The guest's root but for the kernel's modules and the init script.
    base: Tree,
    selected: Vec<TestBinary>,
    timeout: Duration,
}

impl Plan {
    fn run_kernel(&self, series: &str, suite: &str) -> Result<Row> {
        let Self {
            dir,
            mirrors,
            tcptrace,
            base,
            selected,
            timeout,
        } = self;
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
            init_script(tcptrace, selected, GUEST_WITHOUT_DIAG_TESTS, &nonce).into_bytes(),
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

        let boot = |log: &str| {
            Boot {
                tag: series,
                vmlinuz: &kernel.vmlinuz()?,
                initramfs: &cpio,
                nonce: &nonce,
                timeout: *timeout,
                log: &work.join(log),
                cpus: GUEST_CPUS,
            }
            .run()
        };
        // An earlier run's second console would pass for this one's.
        let _ = fs::remove_file(work.join("console-2.log"));
        let mut console = boot("console.log")?;
        let mut crashed_once = None;
        // One more boot tells a crash of the emulation (under multi-threaded
        // TCG, a vCPU ran the int3 of another's text_poke_bp) from one the
        // tracer causes.
        if console.exit.is_none()
            && let Some(crash) = console.crash.take()
        {
            println!("[{series}] the guest's kernel crashed ({crash}): booting it once more");
            crashed_once = Some(crash);
            console = boot("console-2.log")?;
        }
        let facts = work.join("facts.txt");
        fs::write(&facts, console.facts.join("\n") + "\n")
            .with_context(|| format!("writing {}", facts.display()))?;
        let mut row = row(series, version, selected, console);
        row.crashed_once = crashed_once;
        Ok(row)
    }
}

/// target/matrix/support.md from this run; README.md's support table too
/// when the run was the whole built-in selection in every kernel.
fn write_support(
    dir: &Path,
    rows: &[Row],
    args: &MatrixArgs,
    elapsed: Duration,
    complete: bool,
) -> Result<()> {
    let commit = crate::cmd::stdout(
        std::process::Command::new("git")
            .current_dir(crate::workspace_root())
            .args(["log", "-1", "--format=%h, %cs"]),
    )
    .unwrap_or_default();
    let about = format!(
        "Generated by `cargo xtask matrix{}` (commit {}; {:.0} minutes on a 2-CPU machine, {GUEST_CPUS} vCPUs per guest under single-threaded TCG) from Debian's cloud kernels, newest security updates included; each view's column counts its tests that ran in the guests.",
        if args.python { " --python" } else { "" },
        commit.trim(),
        elapsed.as_secs_f64() / 60.0
    );
    let table = support_table(rows, &about);
    let path = dir.join("support.md");
    fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("matrix: support table in {}", path.display());
    if !complete {
        return Ok(());
    }
    let readme_path = crate::workspace_root().join("README.md");
    let readme = fs::read_to_string(&readme_path)
        .with_context(|| format!("reading {}", readme_path.display()))?;
    match with_support_table(&readme, &table) {
        Some(new) if new != readme => {
            fs::write(&readme_path, new)
                .with_context(|| format!("writing {}", readme_path.display()))?;
            println!("matrix: README.md's kernel support table rewritten from this run");
        }
        Some(_) => {}
        None => println!(
            "matrix: README.md has no {} ... {} markers: its table is not rewritten",
            report::SUPPORT_BEGIN,
            report::SUPPORT_END
        ),
    }
    Ok(())
}
