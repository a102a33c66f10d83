//! `cargo xtask build` and `cargo xtask run`.
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// Checks the prerequisites, then `cargo build [--release] -p tcptrace`.
pub fn build(release: bool) -> Result<()> {
    setup::ensure(false)?;
    let mut cargo = Command::new(crate::cargo());
    cargo
        .current_dir(crate::workspace_root())
        .args(["build", "-p", "tcptrace"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
}

/// Builds, then replaces this process with tcptrace (under `sudo -E` when not
/// root). Exec rather than spawn: tcptrace gets Ctrl-C alone, and its exit
/// code is ours without relaying.
pub fn run(release: bool, args: &[OsString]) -> Result<()> {
    build(release)?;
    let profile = if release { "release" } else { "debug" };
    let binary = crate::target_dir().join(profile).join("tcptrace");
    if !binary.exists() {
        bail!("{} is missing after the build", binary.display());
    }
    let mut tcptrace = if setup::is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    tcptrace.args(args);
    eprintln!("$ {}", cmd::display(&tcptrace));
    let err = tcptrace.exec();
    let why = if setup::is_root() {
        ""
    } else {
        " (tcptrace needs root)"
    };
    Err(err).with_context(|| format!("cannot run {}{why}", cmd::name(&tcptrace)))
}
