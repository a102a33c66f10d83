//! `cargo xtask test`: set-up, then formatting, clippy and the test suite,
//! stopping at the first failure.
use std::ffi::OsString;
use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

/// Set to 1 to leave the kernel matrix out (it takes ~12 minutes).
const SKIP_MATRIX: &str = "TCPTRACE_SKIP_MATRIX";

pub fn test(cargo_test_args: &[OsString]) -> Result<()> {
    setup::ensure(false)?;
    // Without --workspace, clippy and test cover the default members
    // (tcptrace, tcptrace-common, xtask): tcptrace-ebpf only builds for the
    // BPF target, inside tcptrace's build script.
    let steps: [(&str, &[&str], &[OsString]); 3] = [
        ("formatting", &["fmt", "--all", "--", "--check"], &[]),
        (
            "clippy",
            &["clippy", "--all-targets", "--", "-D", "warnings"],
            &[],
        ),
        ("tests", &["test"], cargo_test_args),
    ];
    // Two more steps after these: the .deb and the image, built and checked;
    // then the kernel matrix.
    let count = steps.len() + 2;
    for (i, (title, args, extra)) in steps.into_iter().enumerate() {
        eprintln!("==> xtask test [{}/{count}]: {title}", i + 1);
        cmd::run(
            Command::new(crate::cargo())
                .current_dir(crate::workspace_root())
                .env("RUST_BACKTRACE", "1")
                .args(args)
                .args(extra),
        )?;
    }
    eprintln!(
        "==> xtask test [{}/{count}]: packages (.deb and image, built and checked)",
        count - 1
    );
    crate::package::test()?;
    eprintln!(
        "==> xtask test [{count}/{count}]: kernel matrix (the kernel tests in Debian's 5.10, 6.1 and 6.12 under qemu)"
    );
    // For a quick local run; CI runs it.
    if std::env::var_os(SKIP_MATRIX).is_some_and(|v| v == "1") {
        eprintln!("skipped: {SKIP_MATRIX}=1");
        return Ok(());
    }
    crate::matrix::run(&crate::matrix::MatrixArgs::default())
}
