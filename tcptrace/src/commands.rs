//! Each subcommand: turn its arguments into a probe configuration and a sink.

use std::{io::BufWriter, process::ExitCode};

use crate::{
    cli::{FilterArgs, TuningArgs, WatchArgs},
    holders::HolderIndex,
    loader::ProbeConfig,
    owner::Attributor,
    trace::{DEFAULT_TICK, Filters, Tracer},
    watch::WatchSink,
};

/// Batch wake-ups: the reader also polls every tick, so a quiet socket's
/// transition shows within a tick; a storm wakes us once per this many bytes.
const WAKEUP_BYTES: u64 = 64 * 1024;

fn probe_config(filter: &FilterArgs, tuning: &TuningArgs) -> anyhow::Result<ProbeConfig> {
    Ok(ProbeConfig {
        filter: filter.kernel_filter()?,
        ring_bytes: tuning.ring_size,
        wakeup_bytes: WAKEUP_BYTES.min(u64::from(tuning.ring_size) / 4),
        inodes: true,
    })
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let probe = probe_config(&args.filter, &args.tuning)?;
    let filters = Filters {
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        states: args.states.clone(),
    };
    let tracer = Tracer::attach(
        &probe,
        filters,
        args.tuning.max_sockets,
        Attributor::new(Some(HolderIndex::new())),
    )?;
    let stdout = std::io::stdout().lock();
    let mut sink = WatchSink::new(
        BufWriter::with_capacity(64 * 1024, stdout),
        args.json,
        args.timestamp,
    );
    let stats = tracer.run(&mut sink, args.duration, DEFAULT_TICK).await?;
    eprintln!("{}", stats.summary());
    Ok(ExitCode::SUCCESS)
}
