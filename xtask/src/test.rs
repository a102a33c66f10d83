//! `cargo xtask test`: set-up, then formatting, clippy and the test suite,
//! stopping at the first failure.
use std::ffi::OsString;
use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

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
    // One more step after these: the .deb and the image, built and checked.
    let count = steps.len() + 1;
    for (i, (title, args, extra)) in steps.into_iter().enumerate() {
        println!("==> xtask test [{}/{count}]: {title}", i + 1);
        cmd::run(
            Command::new(crate::cargo())
                .current_dir(crate::workspace_root())
                .env("RUST_BACKTRACE", "1")
                .args(args)
                .args(extra),
        )?;
    }
    eprintln!("==> xtask test [{count}/{count}]: packages (.deb and image, built and checked)");
    crate::package::test()?;
    Ok(())
}
