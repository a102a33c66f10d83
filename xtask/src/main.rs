//! tcptrace's developer tasks: `cargo xtask <task>` (see `cargo xtask --help`).
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// One module per task (or group of tasks), plus the helpers they share. A new
// task adds its module here and its variant to `Task`.
mod bench;
mod build;
mod cmd;
mod matrix;
mod package;
mod setup;
mod test;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "tcptrace's build, run, set-up and test tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (apt packages, bpf-linker, BPF toolchain, tracefs); needs root
    Setup,
    /// Set up, then build tcptrace with its kernel program (`cargo build -p tcptrace`)
    Build {
        /// Build the release profile
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run tcptrace as root with the ARGS after `--`
    Run {
        /// Run the release build (the default)
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Run the debug build
        #[arg(long)]
        debug: bool,
        /// Arguments for tcptrace
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Set up, then check formatting, run clippy and run the tests (ARGS after `--` go to cargo test)
    Test {
        /// Arguments for `cargo test`
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Benchmark tracing overhead under a connection storm and write BENCHMARKS.md; needs root
    Bench(Box<bench::BenchArgs>),
    /// Set up, build, then pack target/debian/tcptrace_<version>_<arch>.deb (binary, unit, man page, completions)
    Deb {
        /// Then check it: dpkg-deb -I/-c, lintian, systemd-analyze verify, a real dpkg -i and -r here
        #[arg(long)]
        check: bool,
    },
    /// Set up, build, then build the image localhost/tcptrace:<version> with buildah, and its OCI archive
    Image {
        /// Then check it: inspect, its files, and tcptrace run in it with the DaemonSet's capabilities
        #[arg(long)]
        check: bool,
    },
    /// Run the real-kernel integration tests in Debian's 5.10, 6.1 and 6.12 kernels under qemu
    Matrix(matrix::MatrixArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    put_cargo_bin_on_path();
    let result = match cli.task {
        Task::Setup => setup::ensure(true),
        Task::Build { release } => build::build(release),
        Task::Run { debug, args, .. } => build::run(!debug, &args),
        Task::Test { args } => test::test(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::Deb { check } => package::deb::deb(check),
        Task::Image { check } => package::image::image(check),
        Task::Matrix(args) => matrix::matrix(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            // A failed command's own exit code, when it has one.
            let code = err
                .downcast_ref::<cmd::Failed>()
                .and_then(|f| f.code)
                .and_then(|c| u8::try_from(c).ok())
                .filter(|&c| c != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}

/// The workspace's root directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

/// The cargo that runs us (`$CARGO`), else the one on PATH.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// cargo's target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Puts cargo's bin directory (where `cargo install` leaves bpf-linker) on
/// PATH for every command we run, if it isn't there already.
fn put_cargo_bin_on_path() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let Some(bin) = cargo_home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        // SAFETY: called from main before any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}
