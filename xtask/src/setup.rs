//! `cargo xtask setup`: every prerequisite of building, running, testing and
//! benchmarking tcptrace on Debian 12, installed only when missing. Each step
//! checks first (cheaply), so a run with nothing to do takes well under 2 s;
//! `build`, `run` and `test` call [`ensure`] with the same steps.
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages, by what needs them.
const APT_PACKAGES: &[&str] = &[
    // The kernel program: Debian's rustc 1.96 with core's sources (linked into
    // rustup as the `tcptrace-bpf` toolchain), and LLVM 22 plus the libraries
    // bpf-linker links against.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Cross-checks in the tests: bpftool, and libbpf-tools' tcpstates/tcplife.
    "bpftool",
    "libbpf-tools",
    // Test hosts and sockets (ss, ip netns) and processes (ps, pgrep).
    "iproute2",
    "procps",
    // The leak scenarios in the tests are small python3 programs; setpriv
    // (util-linux) drops privileges for the permission test.
    "python3",
    "util-linux",
    // The serve tests scrape tcptrace with a real Prometheus; the web
    // configuration tests make their certificates with openssl and play the
    // refused clients (wrong password, expired certificate...) with curl.
    "prometheus",
    "openssl",
    "curl",
    // Benchmarks: a server and its load, and tracers and profilers to compare.
    "nginx",
    "wrk",
    "bpftrace",
    "linux-perf",
    // JSON in scripts and tests.
    "jq",
    // The leak-provenance tests build a Go program that leaks (Go keeps
    // frame pointers by default).
    "golang-go",
    // A seccomp filter refusing bpf(), to test what tcptrace says then.
    "python3-seccomp",
    // The kernel matrix (`cargo xtask matrix`, last in `test`): qemu boots
    // Debian's kernels under TCG, busybox-static is the guests' userland,
    // objcopy (binutils) strips the binaries put in their initramfs, xz
    // expands trixie's modules.
    "qemu-system-x86",
    "busybox-static",
    "binutils",
    "xz-utils",
    // Packages (`cargo xtask deb`, `image`, and their checks in `test`):
    // dpkg-shlibdeps (dpkg-dev), lintian, systemd-analyze (systemd: it runs
    // without systemd as PID 1), man -l (man-db); buildah builds the image
    // and runs it with runc (buildah only recommends a runtime); where
    // systemd is not PID 1, `systemctl enable --now` is checked in a Debian
    // made by debootstrap and booted by systemd-nspawn (systemd-container).
    "dpkg-dev",
    "lintian",
    "systemd",
    "man-db",
    "buildah",
    "runc",
    "debootstrap",
    "systemd-container",
];

/// The rustup toolchain that tcptrace/build.rs builds the kernel program with.
const BPF_TOOLCHAIN: &str = "tcptrace-bpf";
/// Where Debian's rustc-web lives (`/usr/bin/rustc`, `/usr/lib/rustlib/src`).
const BPF_TOOLCHAIN_PATH: &str = "/usr";
const BPF_LINKER_VERSION: &str = "0.13.";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TRACEFS: &str = "/sys/kernel/tracing";
/// Debian's hook that tells maintainer scripts whether they may start services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// What a step found.
enum Outcome {
    Present(String),
    Installed(String),
}

/// A step: given whether we are root, checks and installs if need be.
type Step = fn(bool) -> Result<Outcome>;

/// Checks every prerequisite and installs what is missing. `verbose` prints
/// one line per step (`cargo xtask setup`); otherwise only installs and a
/// closing line are printed (before `build`, `run` and `test`).
pub fn ensure(verbose: bool) -> Result<()> {
    let start = Instant::now();
    let root = is_root();
    let steps: [(&str, Step); 5] = [
        ("apt packages", apt_packages),
        ("rustup toolchain tcptrace-bpf", bpf_toolchain),
        ("bpf-linker", bpf_linker),
        ("tracefs", tracefs),
        ("rustfmt and clippy", rustfmt_clippy),
    ];
    let mut installed = false;
    for (what, step) in steps {
        match step(root)? {
            Outcome::Present(detail) => {
                if verbose {
                    eprintln!("setup: {what}: already there ({detail})");
                }
            }
            Outcome::Installed(detail) => {
                installed = true;
                eprintln!("setup: {what}: installed ({detail})");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if installed {
        eprintln!("setup: done in {secs:.1} s");
    } else {
        eprintln!("setup: every prerequisite already there ({secs:.2} s)");
    }
    Ok(())
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // Uid: real effective saved filesystem
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn need_root(root: bool, what: &str) -> Result<()> {
    if !root {
        bail!("setup needs root to {what}: run `sudo -E cargo xtask setup`");
    }
    Ok(())
}

fn apt_packages(root: bool) -> Result<Outcome> {
    let missing = missing_packages(APT_PACKAGES);
    if missing.is_empty() {
        return Ok(Outcome::Present(format!(
            "all {} installed",
            APT_PACKAGES.len()
        )));
    }
    need_root(root, &format!("install {}", missing.join(" ")))?;
    apt_install(&missing)?;
    Ok(Outcome::Installed(missing.join(" ")))
}

/// Installs `packages` (apt-get update, then install without recommends),
/// keeping their services from starting; an error unless all are installed
/// after. Also for what only the bench needs (not in [`APT_PACKAGES`]).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    {
        let _no_services = NoServiceStarts::new()?;
        cmd::run(Command::new("apt-get").arg("update"))?;
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(packages),
        )?;
    }
    let still = missing_packages(packages);
    if !still.is_empty() {
        bail!("apt-get install left {} uninstalled", still.join(" "));
    }
    Ok(())
}

/// The packages of `packages` that dpkg does not list as installed.
pub fn missing_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    // One dpkg-query for all: it prints the known ones and exits 1 if any is
    // unknown, so its status says nothing here.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(packages)
        .output();
    let listed = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(package, _)| package)
        .collect();
    packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

/// While alive, keeps apt's maintainer scripts from starting services (nginx
/// and prometheus would otherwise start and bind ports 80 and 9090 where init
/// scripts run): writes a `policy-rc.d` that denies, unless one exists.
struct NoServiceStarts {
    written: bool,
}

impl NoServiceStarts {
    fn new() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { written: false });
        }
        let script = "#!/bin/sh\n# Written by `cargo xtask setup` while it runs apt-get install.\nexit 101\n";
        fs::write(POLICY_RC_D, script).with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(Self { written: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.written
            && let Err(err) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("xtask: removing {POLICY_RC_D}: {err}");
        }
    }
}

fn bpf_toolchain(_root: bool) -> Result<Outcome> {
    let version = || {
        cmd::stdout(Command::new("rustup").args(["run", BPF_TOOLCHAIN, "rustc", "--version"]))
            .map(|v| v.trim().to_owned())
    };
    if let Some(v) = version() {
        return Ok(Outcome::Present(v));
    }
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "link",
        BPF_TOOLCHAIN,
        BPF_TOOLCHAIN_PATH,
    ]))?;
    match version() {
        Some(v) => Ok(Outcome::Installed(format!("{BPF_TOOLCHAIN_PATH}: {v}"))),
        None => bail!("`rustup run {BPF_TOOLCHAIN} rustc --version` still fails after linking"),
    }
}

fn bpf_linker(_root: bool) -> Result<Outcome> {
    let version = || {
        cmd::stdout(Command::new("bpf-linker").arg("--version")).map(|v| {
            let v = v.trim();
            v.strip_prefix("bpf-linker ").unwrap_or(v).to_owned()
        })
    };
    let found = version();
    if let Some(v) = &found
        && v.starts_with(BPF_LINKER_VERSION)
    {
        return Ok(Outcome::Present(v.clone()));
    }
    eprintln!(
        "setup: bpf-linker: {}; building it (takes minutes)",
        found.map_or("not found".to_owned(), |v| format!(
            "found {v}, need {BPF_LINKER_VERSION}x"
        ))
    );
    let path = std::env::var("PATH").unwrap_or_default();
    cmd::run(
        Command::new(crate::cargo())
            .env("PATH", format!("{LLVM_BIN}:{path}"))
            // Away from the workspace, so that its .cargo/config.toml plays no part.
            .current_dir(std::env::temp_dir())
            .args(["install", "bpf-linker", "--version", "^0.13", "--force"])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )?;
    match version() {
        Some(v) if v.starts_with(BPF_LINKER_VERSION) => Ok(Outcome::Installed(v)),
        other => bail!(
            "bpf-linker on PATH is {} after cargo install (is another one ahead of cargo's bin?)",
            other.as_deref().unwrap_or("missing")
        ),
    }
}

fn tracefs(root: bool) -> Result<Outcome> {
    let events = Path::new(TRACEFS).join("events");
    match fs::metadata(&events) {
        Ok(_) => return Ok(Outcome::Present(format!("mounted at {TRACEFS}"))),
        // Only root may look inside a mounted tracefs.
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            return Ok(Outcome::Present(format!("{TRACEFS} is root's")));
        }
        Err(_) => {}
    }
    need_root(root, &format!("mount tracefs on {TRACEFS}"))?;
    cmd::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    if !events.exists() {
        bail!(
            "{} is still missing after mounting tracefs",
            events.display()
        );
    }
    Ok(Outcome::Installed(format!("mounted at {TRACEFS}")))
}

fn rustfmt_clippy(_root: bool) -> Result<Outcome> {
    let present = |sub: &str| cmd::succeeds(Command::new(crate::cargo()).args([sub, "--version"]));
    let missing: Vec<&str> = [("rustfmt", "fmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(_, sub)| !present(sub))
        .map(|(component, _)| component)
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Present(
            "cargo fmt and cargo clippy run".to_owned(),
        ));
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "{} missing from the Rust toolchain and rustup cannot download them here; \
                 use a toolchain that has them",
            missing.join(" and ")
        )
    })?;
    Ok(Outcome::Installed(missing.join(" ")))
}
