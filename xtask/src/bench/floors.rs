//! The floor programs (tcptrace-ebpf/src/floors.rs): where the bench finds
//! their object, and the helper process that loads one, attaches it to
//! `sock:inet_sock_set_state` and reads its ring buffer as tcptrace does,
//! until it is stopped (`xtask bench --floor NAME --floor-object PATH`).
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, maps::RingBuf, programs::TracePoint};

/// Where cargo built the floor programs: the `floors` object aya-build
/// leaves beside tcptrace's own in the tcptrace build script's OUT_DIR
/// (a release build of the workspace, made if needed).
pub fn object() -> Result<PathBuf> {
    let out = Command::new(crate::cargo())
        .current_dir(crate::workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "tcptrace",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p tcptrace failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let out_dir = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed")
        .filter(|m| {
            m["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("/tcptrace#") || id.starts_with("tcptrace "))
        })
        .find_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .context("no build-script output directory for tcptrace in cargo's messages")?;
    let object = out_dir.join("floors");
    if !object.is_file() {
        bail!("{} is missing after the build", object.display());
    }
    Ok(object)
}

/// `bench --floor NAME --floor-object PATH`: runs until killed.
pub fn run(name: &str, object: &Path) -> Result<()> {
    raise_memlock();
    let mut ebpf =
        Ebpf::load_file(object).with_context(|| format!("loading {}", object.display()))?;
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in {}", object.display()))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the verifier refused {name}"))?;
    // Attached while `ebpf` lives: until this process is killed.
    program.attach("sock", "inet_sock_set_state")?;
    // Every ring the object has (`EVENTS`, and `floor_ring_cpu`'s one per
    // CPU): a ring no program writes to stays empty.
    let names: Vec<String> = ebpf
        .maps()
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("EVENTS"))
        .collect();
    let mut rings = names
        .iter()
        .map(|name| {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("no {name} map"))?;
            Ok(RingBuf::try_from(map)?)
        })
        .collect::<Result<Vec<_>>>()?;
    if rings.is_empty() {
        bail!("no EVENTS map in {}", object.display());
    }
    println!("attached");
    // Drain as tcptrace does: woken by the program once a quarter of a ring
    // is pending, and every 50 ms.
    let mut polls: Vec<libc::pollfd> = rings
        .iter()
        .map(|ring| libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: valid pollfds for the duration of the call.
        unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 50) };
        for ring in &mut rings {
            while let Some(record) = ring.next() {
                std::hint::black_box(&*record);
            }
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit; failure leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
