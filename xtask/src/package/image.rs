//! `cargo xtask image`: the container image `localhost/tcptrace:<version>`,
//! built by buildah from deploy/Containerfile, its OCI archive, and its checks.
//!
//! The image is `FROM scratch` with a staged root: the release binary, the
//! dynamic loader and exactly the libraries `ldd` names, copied from the build
//! host. No base image can be pulled here, and a debootstrapped Debian would
//! add a shell and a base system's packages the binary never uses, minutes to
//! every build, and a package set to keep patched; the binary needs only the
//! few C libraries it links (libc and libgcc_s today) from the same Debian it
//! was built on.
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::{VERSION, output, run, secs};
use crate::cmd;

const REPOSITORY: &str = "localhost/tcptrace";
const CONTAINERFILE: &str = "deploy/Containerfile";
/// What the Containerfile sets, checked in the built image.
const ENTRYPOINT: &[&str] = &["/usr/bin/tcptrace"];
const CMD: &[&str] = &["serve", "--listen", "0.0.0.0:10180"];
/// The working containers the checks run in are named this and xtask's pid
/// (two runs at once keep apart); removed after them.
const CHECK_CONTAINER: &str = "tcptrace-image-check-";
/// buildah prefers crun when both are installed, and Debian 12's crun refuses
/// hybrid cgroups (v1 controllers with a v2 mount), as on this machine; runc
/// runs on both layouts.
const RUNTIME: &str = "runc";
/// What the runtime grants a container by default (containers.conf's
/// default_capabilities), dropped one by one: buildah 1.28 ignores `--cap-add`
/// after `--cap-drop all`.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];
/// deploy/daemonset.yaml's capabilities, with their numbers for CapEff.
const DAEMONSET_CAPS: &[(&str, u32)] = &[
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];
const TRACEFS: &str = "/sys/kernel/tracing";
/// The default seccomp profile of podman, buildah and CRI-O (containers-common).
const CONTAINERS_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// A built image and what was staged into it.
pub struct Image {
    /// `localhost/tcptrace:0.1.0`
    pub reference: String,
    /// The staged root the image holds, file for file.
    root: PathBuf,
    /// The dynamic loader's path, as the binary's PT_INTERP names it.
    interpreter: String,
    /// The OCI archive (`podman load`, `ctr images import`).
    pub archive: PathBuf,
}

/// `cargo xtask image [--check]`.
pub fn image(check_too: bool) -> Result<()> {
    let image = build()?;
    if check_too {
        check(&image)?;
    }
    Ok(())
}

/// Stages the build context, builds and tags the image, and writes its OCI
/// archive under target/image.
pub fn build() -> Result<Image> {
    let binary = super::release_binary()?;
    let start = Instant::now();
    let reference = format!("{REPOSITORY}:{VERSION}");
    let out_dir = crate::target_dir().join("image");
    let context = out_dir.join("context");
    super::fresh_dir(&context)?;
    let root = context.join("root");

    super::install_stripped(&binary, &root.join("usr/bin/tcptrace"))?;
    let libs = super::shared_libraries(&binary)?;
    let mut interpreter = None;
    for lib in &libs {
        let inside = root.join(lib.strip_prefix("/").expect("ldd paths are absolute"));
        super::copy_file(lib, &inside, 0o755)?;
        if lib
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
        {
            interpreter = Some(lib.display().to_string());
        }
    }
    let interpreter = interpreter.context("ldd named no dynamic loader (ld-linux)")?;
    super::write_file(
        &root.join("usr/share/doc/tcptrace/copyright"),
        super::copyright()?,
        0o644,
    )?;

    let previous = image_id(&reference);
    let epoch = super::source_date_epoch();
    run(Command::new("buildah")
        .arg("build")
        .arg("--file")
        .arg(crate::workspace_root().join(CONTAINERFILE))
        .args(["--tag", &reference, "--format", "oci", "--pull=never"])
        .args(["--build-arg", &format!("VERSION={VERSION}")])
        // The commit's time for every timestamp: the same commit builds the
        // same image ID, and rebuilds leave no untagged copies behind.
        .args(["--timestamp", &epoch.to_string()])
        .arg(&context))?;
    let id = image_id(&reference)
        .with_context(|| format!("{reference} is missing after buildah build"))?;
    if let Some(previous) = previous.filter(|p| *p != id) {
        // The tag moved: drop the image it left untagged, unless a container uses it.
        let _ = Command::new("buildah")
            .args(["rmi", &previous])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    let arch = super::debian_arch()?;
    let archive = out_dir.join(format!("tcptrace_{VERSION}_{arch}.oci.tar"));
    let _ = fs::remove_file(&archive);
    run(Command::new("buildah")
        .args(["push", "--quiet", &reference])
        .arg(format!("oci-archive:{}:{reference}", archive.display())))?;
    let size = |p: &Path| fs::metadata(p).map_or(0.0, |m| m.len() as f64 / 1048576.0);
    eprintln!(
        "image: built {reference} (ID {}, {} files) and {} ({:.1} MiB) in {}",
        &id[..12.min(id.len())],
        super::files_under(&root)?.len(),
        archive.display(),
        size(&archive),
        secs(start)
    );
    Ok(Image {
        reference,
        root,
        interpreter,
        archive,
    })
}

fn image_id(reference: &str) -> Option<String> {
    let id = cmd::stdout(Command::new("buildah").args([
        "images",
        "--noheading",
        "--no-trunc",
        "--format",
        "{{.ID}}",
        reference,
    ]))?;
    let id = id
        .lines()
        .next()?
        .trim()
        .trim_start_matches("sha256:")
        .to_owned();
    (!id.is_empty()).then_some(id)
}

/// Checks the image: its config (entrypoint, command), its files (exactly the
/// staged ones, every library resolved by the image's own loader), then runs
/// it under buildah and runc: `--version`; `leaks --once` in the host's PID
/// and network namespaces naming a CLOSE_WAIT socket this process holds; and
/// `watch` with only the DaemonSet's capabilities and tracefs mounted,
/// tracing this process's connection.
pub fn check(image: &Image) -> Result<()> {
    let start = Instant::now();
    let t = Instant::now();
    check_config(image).context("buildah inspect")?;
    check_archive(image).context("the OCI archive")?;
    let seccomp = runtime_default_seccomp(&image.root)?;
    let container = Container::new(&image.reference, &seccomp)?;
    check_layout(image, &container).context("the image's files")?;
    eprintln!(
        "image check: entrypoint, command, files and libraries as expected ({})",
        secs(t)
    );

    let t = Instant::now();
    let version = container
        .run(&["--network", "none"], &["--version"])
        .context("the image did not run `tcptrace --version` (buildah run, runc)")?;
    ensure!(
        version.trim() == format!("tcptrace {VERSION}"),
        "tcptrace --version in the image printed {:?}",
        version.trim()
    );
    eprintln!("image check: runs `tcptrace --version` ({})", secs(t));

    let t = Instant::now();
    check_leaks_once(&container)?;
    eprintln!(
        "image check: `leaks --once` with the host's PID namespace names this process's CLOSE_WAIT socket ({})",
        secs(t)
    );
    let t = Instant::now();
    check_watch(&container)?;
    eprintln!(
        "image check: `watch` with only the DaemonSet's capabilities traced this process's connection ({})",
        secs(t)
    );
    container.remove()?;
    eprintln!("image check: all image checks passed in {}", secs(start));
    Ok(())
}

fn check_config(image: &Image) -> Result<()> {
    let json =
        output(Command::new("buildah").args(["inspect", "--type", "image", &image.reference]))?;
    let inspect: Value = serde_json::from_str(&json).context("parsing buildah inspect's JSON")?;
    let oci = &inspect["OCIv1"];
    let config = &oci["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let entrypoint = strings(&config["Entrypoint"]);
    ensure!(
        entrypoint == ENTRYPOINT,
        "the entrypoint is {entrypoint:?}, expected {ENTRYPOINT:?}"
    );
    let command = strings(&config["Cmd"]);
    ensure!(
        command == CMD,
        "the command is {command:?}, expected {CMD:?}"
    );
    let version = &config["Labels"]["org.opencontainers.image.version"];
    ensure!(
        version.as_str() == Some(VERSION),
        "the label org.opencontainers.image.version is {version}, expected {VERSION:?}"
    );
    let arch = super::debian_arch()?;
    ensure!(
        oci["architecture"].as_str() == Some(arch.as_str()),
        "the image's architecture is {}, expected {arch}",
        oci["architecture"]
    );
    Ok(())
}

/// The archive's index names the image, so that `ctr images import` and
/// `podman load` tag it as built.
fn check_archive(image: &Image) -> Result<()> {
    let index = output(
        Command::new("tar")
            .arg("--extract")
            .arg("--to-stdout")
            .arg("--file")
            .arg(&image.archive)
            .arg("index.json"),
    )?;
    let index: Value = serde_json::from_str(&index).context("parsing index.json")?;
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    ensure!(
        names == [image.reference.as_str()],
        "{} names {names:?}, expected [{:?}]",
        image.archive.display(),
        image.reference
    );
    Ok(())
}

/// The image's files are exactly the staged ones, and its own dynamic loader
/// resolves every library of the binary inside the image's root.
fn check_layout(image: &Image, container: &Container) -> Result<()> {
    let mount = output(Command::new("buildah").args(["mount", &container.name]))?;
    let mount = PathBuf::from(mount.trim());
    let result = (|| {
        let files = super::files_under(&mount)?;
        let staged = super::files_under(&image.root)?;
        ensure!(
            files == staged,
            "the image holds {files:?}, but {staged:?} were staged"
        );
        // The loader lists what it would load, from the image's root only.
        let listing = output(Command::new("chroot").arg(&mount).args([
            image.interpreter.as_str(),
            "--list",
            "/usr/bin/tcptrace",
        ]))?;
        ensure!(
            !listing.contains("not found"),
            "libraries missing from the image: {listing}"
        );
        eprintln!(
            "image check: {} files; the loader resolves:\n{listing}",
            files.len()
        );
        Ok(())
    })();
    run(Command::new("buildah").args(["umount", &container.name]))?;
    result
}

/// `leaks --once --json` inside the image, in the host's PID and network
/// namespaces with the DaemonSet's capabilities, names the CLOSE_WAIT socket
/// this process holds (so /proc shows host processes and their fds).
fn check_leaks_once(container: &Container) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener")?;
    let port = listener.local_addr()?.port();
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).context("connecting")?;
    let (held, _) = listener.accept().context("accepting")?;
    // The peer closes; we never do: `held` enters CLOSE_WAIT.
    drop(client);
    std::thread::sleep(Duration::from_millis(100));

    let mut opts = vec!["--pid", "host", "--network", "host"];
    let caps = daemonset_caps();
    opts.extend(caps.iter().map(String::as_str));
    let out = container.run(&opts, &["leaks", "--once", "--json"])?;
    let pid = std::process::id();
    let found = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|leak| leak["pid"].as_u64() == Some(u64::from(pid)))
        .flat_map(|leak| leak["sockets"].as_array().cloned().unwrap_or_default())
        .any(|s| s["lport"].as_u64() == Some(u64::from(port)));
    drop(held);
    ensure!(
        found,
        "`leaks --once --json` in the image did not name the CLOSE_WAIT socket on 127.0.0.1:{port} held by pid {pid}; it printed:\n{out}"
    );
    Ok(())
}

/// `watch --json` inside the image with only the DaemonSet's capabilities
/// (checked in the container process's CapEff) and tracefs bind-mounted read
/// only, as the DaemonSet mounts it: it loads the kernel program and traces a
/// connection this process accepts, naming this process.
fn check_watch(container: &Container) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener")?;
    let port = listener.local_addr()?.port();
    let port_arg = port.to_string();
    let tracefs = format!("{TRACEFS}:{TRACEFS}:ro");
    let mut opts = vec!["--pid", "host", "--network", "host", "--volume", &tracefs];
    let caps = daemonset_caps();
    opts.extend(caps.iter().map(String::as_str));
    let args = ["watch", "--json", "--duration", "5", "-L", &port_arg];
    let mut child = container.spawn(&opts, &args)?;
    let result = (|| {
        // watch says on stderr when its program is attached.
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut stderr = BufReader::new(stderr);
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line)? == 0 {
                bail!("watch in the image ended before attaching: {seen}");
            }
            eprint!("  {line}");
            seen.push_str(&line);
            if line.contains("attached") {
                break;
            }
        }
        let caps = container_caps(&port_arg)?;
        let want: u64 = DAEMONSET_CAPS.iter().map(|(_, bit)| 1u64 << bit).sum();
        ensure!(
            caps == want,
            "tcptrace in the image runs with capabilities {caps:#x}, expected exactly the DaemonSet's {want:#x}"
        );
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        let (held, _) = listener.accept()?;
        drop(client);
        drop(held);
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("stdout is piped")
            .read_to_string(&mut out)?;
        let mut rest = String::new();
        stderr.read_to_string(&mut rest)?;
        eprint!("{rest}");
        let status = child.wait()?;
        ensure!(
            status.success(),
            "watch in the image exited with {status}: {seen}{rest}"
        );
        let pid = u64::from(std::process::id());
        let ours = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["lport"].as_u64() == Some(u64::from(port)))
            .filter(|e| e["pid"].as_u64() == Some(pid))
            .count();
        ensure!(
            ours > 0,
            "watch in the image traced no transition on port {port} owned by pid {pid}; it printed:\n{out}"
        );
        eprintln!("image check: watch traced {ours} transitions of this process's connection");
        Ok(())
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

/// The seccomp profile the checks run under: containers-common's default with
/// `bpf` and `perf_event_open` allowed to CAP_BPF and CAP_PERFMON, as in the
/// RuntimeDefault of containerd (since 1.6) and Docker (since 23), which
/// deploy/daemonset.yaml relies on. containers-common's own (Debian 12's
/// 0.50) allows both only with CAP_SYS_ADMIN, so under it the kernel program
/// cannot load with the DaemonSet's capabilities.
fn runtime_default_seccomp(stage: &Path) -> Result<PathBuf> {
    let text = fs::read_to_string(CONTAINERS_SECCOMP)
        .with_context(|| format!("reading {CONTAINERS_SECCOMP}"))?;
    let mut profile: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {CONTAINERS_SECCOMP}"))?;
    let gated = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")];
    let rules = profile["syscalls"]
        .as_array_mut()
        .with_context(|| format!("{CONTAINERS_SECCOMP} has no syscalls list"))?;
    // Out of every denying rule (an allowing one, e.g. for CAP_SYS_ADMIN, stays).
    for rule in rules.iter_mut() {
        if rule["action"] == "SCMP_ACT_ALLOW" {
            continue;
        }
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !gated.iter().any(|(name, _)| n == name));
        }
    }
    rules.retain(|rule| rule["names"].as_array().is_none_or(|n| !n.is_empty()));
    for (name, cap) in gated {
        rules.push(serde_json::json!({
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "includes": { "caps": [cap] },
            "excludes": {},
        }));
    }
    let path = stage
        .parent()
        .expect("the staged root is in the context")
        .with_file_name("seccomp-runtime-default.json");
    super::write_file(&path, serde_json::to_string_pretty(&profile)?, 0o644)?;
    Ok(path)
}

/// `--cap-drop` each default and `--cap-add` each DaemonSet capability.
fn daemonset_caps() -> Vec<String> {
    let mut args = Vec::new();
    for cap in DEFAULT_CAPS {
        args.push("--cap-drop".to_owned());
        args.push((*cap).to_owned());
    }
    for (cap, _) in DAEMONSET_CAPS {
        args.push("--cap-add".to_owned());
        args.push((*cap).to_owned());
    }
    args
}

/// The effective capabilities of the containerised `tcptrace watch … -L
/// PORT`, read from the host's /proc.
fn container_caps(port: &str) -> Result<u64> {
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let dir = entry.path();
        let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args.first() == Some(&&b"/usr/bin/tcptrace"[..])
            && args
                .windows(2)
                .any(|w| w[0] == b"-L" && w[1] == port.as_bytes());
        if !ours {
            continue;
        }
        let status = fs::read_to_string(dir.join("status"))?;
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .context("no CapEff in /proc/PID/status")?;
        return u64::from_str_radix(hex.trim(), 16).context("parsing CapEff");
    }
    bail!("found no `/usr/bin/tcptrace … -L {port}` process in /proc")
}

/// The working container the checks run in, removed on drop (also after a
/// failed check); those that interrupted runs left are removed first.
struct Container {
    name: String,
    removed: bool,
}

impl Container {
    fn new(reference: &str, seccomp: &Path) -> Result<Self> {
        remove_stale_containers();
        let container = Self {
            name: format!("{CHECK_CONTAINER}{}", std::process::id()),
            removed: false,
        };
        run(Command::new("buildah")
            .args(["from", "--pull=never", "--name", &container.name])
            .arg(format!("--security-opt=seccomp={}", seccomp.display()))
            .arg(reference))?;
        Ok(container)
    }

    fn command(&self, opts: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.args(["run", "--runtime", RUNTIME])
            .args(opts)
            .args([self.name.as_str(), "--", "/usr/bin/tcptrace"])
            .args(args);
        cmd
    }

    /// Runs tcptrace in the container; its stdout.
    fn run(&self, opts: &[&str], args: &[&str]) -> Result<String> {
        let mut cmd = self.command(opts, args);
        eprintln!("$ {}", cmd::display(&cmd));
        output(&mut cmd)
    }

    /// Starts tcptrace in the container with stdout and stderr piped.
    fn spawn(&self, opts: &[&str], args: &[&str]) -> Result<std::process::Child> {
        let mut cmd = self.command(opts, args);
        eprintln!("$ {}", cmd::display(&cmd));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run buildah run")
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        run(Command::new("buildah").args(["rm", &self.name]))
    }
}

/// Removes the check containers of runs whose xtask is gone.
fn remove_stale_containers() {
    let Some(names) = cmd::stdout(Command::new("buildah").args([
        "containers",
        "--noheading",
        "--format",
        "{{.ContainerName}}",
    ])) else {
        return;
    };
    for name in names.lines().map(str::trim) {
        let Some(pid) = name.strip_prefix(CHECK_CONTAINER) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("buildah")
                .args(["rm", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.removed {
            let _ = Command::new("buildah")
                .args(["rm", &self.name])
                .stdout(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn containerfile_sets_the_entrypoint_and_command_checked() {
        let path = crate::workspace_root().join(CONTAINERFILE);
        let text = fs::read_to_string(path).unwrap();
        let quoted = |words: &[&str]| {
            let words: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
            format!("[{}]", words.join(", "))
        };
        assert!(
            text.contains(&format!("ENTRYPOINT {}", quoted(ENTRYPOINT))),
            "{text}"
        );
        assert!(text.contains(&format!("CMD {}", quoted(CMD))), "{text}");
    }

    #[test]
    fn daemonset_grants_the_capabilities_checked() {
        let path = crate::workspace_root().join("deploy/daemonset.yaml");
        let text = fs::read_to_string(path).unwrap();
        let names: BTreeSet<&str> = DAEMONSET_CAPS
            .iter()
            .map(|(cap, _)| cap.trim_start_matches("CAP_"))
            .collect();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("add: ["))
            .expect("the DaemonSet adds capabilities");
        let granted: BTreeSet<&str> = line
            .split(['[', ']', ',', '"', ' '])
            .filter(|w| !w.is_empty() && *w != "add:")
            .collect();
        assert_eq!(granted, names);
    }
}
