//! The .deb under a booted systemd, where this host's PID 1 is not systemd:
//! a minimal Debian made by debootstrap (kept in target/debian/nspawn-root),
//! booted with systemd-nspawn, and the package taken through what an admin
//! does. `dpkg -i` neither enables nor starts it; `systemctl enable --now
//! tcptrace` starts the hardened unit, which must serve /healthz as a dynamic
//! user with exactly its four capabilities; a reinstall restarts it; `dpkg -r`
//! stops it; `dpkg -P` drops its enablement.
//!
//! The container shares the host's network namespace (so /healthz is reached
//! from here, and sock_diag sees the host's sockets) and is granted the
//! unit's capabilities and the bpf and perf_event_open system calls, which
//! systemd-nspawn withholds by default: the container stands in for a host.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::{output, run, secs};

/// Written into the root once debootstrap has finished, so that an
/// interrupted one is started again rather than booted.
const READY: &str = "etc/tcptrace-xtask-root-ready";
/// The unit's AmbientCapabilities, with their numbers for CapEff.
const UNIT_CAPS: &[(&str, u32)] = &[
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub fn check(deb: &Path) -> Result<()> {
    let root = ensure_root()?;
    super::copy_file(deb, &root.join("root/tcptrace.deb"), 0o644)?;
    let t = Instant::now();
    let machine = Machine::boot(&root)?;
    eprintln!(
        "deb check (booted): systemd is up in the container ({})",
        secs(t)
    );

    let t = Instant::now();
    machine.sh("dpkg -i /root/tcptrace.deb")?;
    let state = machine.unit_state()?;
    ensure!(
        state == ("disabled".to_owned(), "inactive".to_owned()),
        "after dpkg -i, tcptrace.service is {state:?}: the package must neither enable nor start it"
    );
    machine.sh("systemctl enable --now tcptrace")?;
    if let Err(err) = super::deb::wait_healthy(Duration::from_secs(30)) {
        let _ = machine.sh("systemctl status --no-pager --lines=20 tcptrace");
        return Err(err).context(format!(
            "`systemctl enable --now tcptrace` in the booted container: http://{}/healthz did not answer",
            super::deb::SERVE_ADDR
        ));
    }
    let pid = machine.main_pid()?;
    let status = machine.output(&format!("cat /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let uid = field("Uid:");
    ensure!(
        !uid.starts_with("0\t") && !uid.is_empty(),
        "tcptrace.service runs as uid {uid:?}: DynamicUser= should give it its own"
    );
    let caps = u64::from_str_radix(&field("CapEff:"), 16).context("parsing CapEff")?;
    let want: u64 = UNIT_CAPS.iter().map(|(_, bit)| 1u64 << bit).sum();
    ensure!(
        caps == want,
        "tcptrace.service runs with capabilities {caps:#x}, expected exactly the unit's {want:#x}"
    );
    eprintln!(
        "deb check (booted): dpkg -i left it disabled and stopped; systemctl enable --now \
         served /healthz as uid {} with capabilities {caps:#x} ({})",
        uid.split_whitespace().next().unwrap_or("?"),
        secs(t)
    );

    let t = Instant::now();
    machine.sh("dpkg -i /root/tcptrace.deb")?;
    let restarted = machine.main_pid()?;
    ensure!(
        restarted != pid && restarted != 0,
        "a reinstall did not restart the running tcptrace.service (main pid {pid}, then {restarted})"
    );
    super::deb::wait_healthy(Duration::from_secs(30))
        .context("tcptrace.service did not answer /healthz again after a reinstall")?;
    machine.sh("dpkg -r tcptrace")?;
    let (_, active) = machine.unit_state()?;
    ensure!(
        active == "inactive",
        "after dpkg -r, tcptrace.service is {active}: removal must stop it"
    );
    machine.sh("dpkg -P tcptrace")?;
    let left = machine.output(
        "ls /etc/systemd/system/multi-user.target.wants/tcptrace.service \
         /var/lib/systemd/deb-systemd-helper-enabled/tcptrace.service.dsh-also \
         /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/tcptrace.service \
         2>/dev/null; true",
    )?;
    ensure!(
        left.trim().is_empty(),
        "dpkg -P left the unit's enablement behind: {left}"
    );
    eprintln!(
        "deb check (booted): a reinstall restarted it, dpkg -r stopped it, dpkg -P dropped its enablement ({})",
        secs(t)
    );
    machine.stop()
}

/// The container's root: made by debootstrap the first time (about two
/// minutes), reused after.
fn ensure_root() -> Result<PathBuf> {
    let root = crate::target_dir().join("debian").join("nspawn-root");
    if root.join(READY).exists() {
        return Ok(root);
    }
    let t = Instant::now();
    super::fresh_dir(&root)?;
    let suite = codename()?;
    // debootstrap's default mirror, the one Debian names for it.
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd,systemd-sysv,dbus"])
        .arg(&suite)
        .arg(&root))
    .context("debootstrap of the container's Debian")?;
    super::write_file(&root.join(READY), "", 0o644)?;
    eprintln!(
        "deb check (booted): made a {suite} root with debootstrap in {} ({})",
        root.display(),
        secs(t)
    );
    Ok(root)
}

/// This host's Debian release (`bookworm`): the container runs the same.
fn codename() -> Result<String> {
    let release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}

/// A booted container: systemd-nspawn and the pid of the container's systemd.
/// Stopped on drop, also after a failed check.
struct Machine {
    nspawn: Child,
    init: u32,
    stopped: bool,
}

impl Machine {
    fn boot(root: &Path) -> Result<Self> {
        let caps: Vec<&str> = UNIT_CAPS.iter().map(|(cap, _)| *cap).collect();
        let log = root.with_file_name("nspawn-boot.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory")
            .arg(root)
            .args(["--boot", "--quiet", "--register=no", "--keep-unit"])
            .arg(format!("--capability={}", caps.join(",")))
            .arg("--system-call-filter=bpf perf_event_open")
            .arg("--bind-ro=/sys/kernel/tracing")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        eprintln!(
            "$ {} (console in {})",
            crate::cmd::display(&cmd),
            log.display()
        );
        let nspawn = cmd.spawn().context("cannot run systemd-nspawn")?;
        let mut machine = Self {
            init: 0,
            nspawn,
            stopped: false,
        };
        machine.init = machine.wait_for_init().with_context(|| {
            format!("systemd-nspawn started no systemd (see {})", log.display())
        })?;
        machine
            .wait_for_boot(Duration::from_secs(120))
            .with_context(|| {
                format!(
                    "the container did not finish booting (see {})",
                    log.display()
                )
            })?;
        Ok(machine)
    }

    /// The container's PID 1 as the host sees it: systemd-nspawn's child.
    fn wait_for_init(&mut self) -> Result<u32> {
        let parent = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited ({status})");
            }
            for entry in fs::read_dir("/proc")?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                // `pid (comm) state ppid …`; comm may hold spaces, so from the last ')'.
                let Some((head, rest)) = stat.rsplit_once(')') else {
                    continue;
                };
                let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
                if ppid == Some(parent) && head.ends_with("(systemd") {
                    return Ok(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("no systemd child of systemd-nspawn (pid {parent}) after 30 s")
    }

    /// Until `systemctl is-system-running` says running (or degraded: a unit
    /// that cannot start in a container is not tcptrace's concern).
    fn wait_for_boot(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited ({status})");
            }
            let out = self.command("systemctl is-system-running").output()?;
            last = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if last == "running" || last == "degraded" {
                if last == "degraded" {
                    let _ = self.sh("systemctl --failed --no-pager");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("still {last:?} after {} s", timeout.as_secs())
    }

    /// A shell command inside the container, in all its namespaces.
    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.init.to_string(), "--all", "--"])
            .args([
                "/usr/bin/env",
                "-i",
                &format!("PATH={PATH}"),
                "LANG=C.UTF-8",
            ])
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a command in the container with its output on our stderr.
    fn sh(&self, script: &str) -> Result<()> {
        eprintln!("$ (container) {script}");
        run(&mut self.command(script)).with_context(|| format!("in the container: {script}"))
    }

    /// Runs a command in the container; its stdout.
    fn output(&self, script: &str) -> Result<String> {
        output(&mut self.command(script)).with_context(|| format!("in the container: {script}"))
    }

    /// `systemctl is-enabled` and `is-active`, which exit non-zero for the
    /// states other than enabled and active.
    fn unit_state(&self) -> Result<(String, String)> {
        let query = |verb: &str| -> Result<String> {
            let out = self
                .command(&format!("systemctl {verb} tcptrace"))
                .output()
                .context("cannot run nsenter")?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        Ok((query("is-enabled")?, query("is-active")?))
    }

    fn main_pid(&self) -> Result<u32> {
        let pid = self.output("systemctl show --property=MainPID --value tcptrace")?;
        pid.trim()
            .parse()
            .with_context(|| format!("MainPID {pid:?}"))
    }

    /// systemd-nspawn shuts the container down cleanly on SIGTERM.
    fn stop(mut self) -> Result<()> {
        self.stopped = true;
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.nspawn.id()).context("pid out of range")?;
        // SAFETY: a plain kill(2) of our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.nspawn.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still up. Killing nspawn alone would leave the container running:
        // its init goes too, which ends the container's PID namespace.
        let _ = self.nspawn.kill();
        if let Ok(init) = libc::pid_t::try_from(self.init) {
            // SAFETY: as above, for the container's init.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
        let _ = self.nspawn.wait();
        bail!("the container did not shut down within 60 s of SIGTERM; killed")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(err) = self.terminate()
        {
            eprintln!("xtask: stopping the container: {err:#}");
        }
    }
}
