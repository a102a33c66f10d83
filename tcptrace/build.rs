//! Builds the kernel program (tcptrace-ebpf) for the BPF target and leaves it
//! in OUT_DIR, where `src/loader.rs` embeds it into the one `tcptrace` binary.
//!
//! Toolchain: `TCPTRACE_BPF_TOOLCHAIN` if set, else the rustup toolchain named
//! `tcptrace-bpf` when `cargo xtask setup` linked it (Debian's rustc-web, which
//! ships the core sources build-std needs), else `nightly` with rust-src.
use std::process::Command;

use anyhow::{Context as _, anyhow};
use cargo_metadata::MetadataCommand;

const LINKED_TOOLCHAIN: &str = "tcptrace-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TCPTRACE_BPF_TOOLCHAIN");
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "tcptrace-ebpf")
        .ok_or_else(|| anyhow!("tcptrace-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tcptrace-ebpf manifest has no parent"))?;

    let toolchain = std::env::var("TCPTRACE_BPF_TOOLCHAIN").unwrap_or_else(|_| {
        if toolchain_exists(LINKED_TOOLCHAIN) {
            LINKED_TOOLCHAIN.to_owned()
        } else {
            "nightly".to_owned()
        }
    });
    if toolchain == LINKED_TOOLCHAIN {
        // A stable rustc builds `core` for the BPF target only with bootstrap
        // mode on. Set for this build script's children only.
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tcptrace-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!("building the kernel program with toolchain {toolchain} (run `cargo xtask setup`)")
    })
}

fn toolchain_exists(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
