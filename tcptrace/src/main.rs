//! The `tcptrace` command: parse arguments, run one subcommand, map errors
//! to one line on stderr and an exit status (0 ok, 1 error, 2 usage, 3 leaks).

use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Command},
    commands,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tcptrace: {}", tcptrace::cli::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcptrace: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let run = commands::Run {
        stats_json: cli.stats_json.as_deref(),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => commands::watch(args, &run).await,
            Command::Leaks(args) => commands::leaks(args, &run).await,
            Command::Hist(args) => commands::hist(args, &run).await,
            Command::Serve(args) => commands::serve(args, &run).await,
            Command::Completions { shell } => commands::completions(shell),
            Command::Man { dir } => commands::man(dir.as_deref()),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tcptrace: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    // -v: our diagnostics and the kernel program's (aya-log records carry the
    // program's crate as target); -vv: also aya's loader internals.
    let (ours, others) = match verbose {
        0 => (log::LevelFilter::Warn, log::LevelFilter::Warn),
        1 => (log::LevelFilter::Debug, log::LevelFilter::Warn),
        _ => (log::LevelFilter::Trace, log::LevelFilter::Debug),
    };
    env_logger::Builder::new()
        .filter_level(others)
        .filter_module("tcptrace", ours)
        .filter_module("tcptrace_ebpf", ours)
        .format_target(false)
        .init();
}
