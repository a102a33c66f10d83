//! Why the kernel would not load or attach the program, said in one line
//! with the way out: missing privileges or kernel features, a refused
//! `bpf()` or `perf_event_open()`, RLIMIT_MEMLOCK before 5.11, the
//! verifier's verdict.

use anyhow::{anyhow, bail};

use crate::host::sys;

/// perf_event_open() refused with EACCES where `kernel.perf_event_paranoid`
/// is above 2: Debian's (and Android's) kernels then refuse it to every
/// process without CAP_SYS_ADMIN, CAP_PERFMON notwithstanding (upstream
/// kernels stop at 2). Said as such, with the ways out.
pub(super) fn paranoid_refusal(
    e: &aya::programs::ProgramError,
    group: &str,
    name: &str,
) -> Option<anyhow::Error> {
    let aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) = e
    else {
        return None;
    };
    if io_error.raw_os_error() != Some(libc::EACCES) || sys::has_capability(sys::CAP_SYS_ADMIN) {
        return None;
    }
    let level: i32 = std::fs::read_to_string(PERF_EVENT_PARANOID)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (level > 2).then(|| {
        anyhow!(
            "attaching to tracepoint {group}:{name} was refused ({io_error}): {PERF_EVENT_PARANOID} is {level}, and at 3 or more this kernel (Debian's, Android's) lets only CAP_SYS_ADMIN call perf_event_open: run as root, add CAP_SYS_ADMIN, or set `sysctl kernel.perf_event_paranoid=2`"
        )
    })
}

pub(super) const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

pub(super) fn explain_load_error(
    e: &aya::EbpfError,
    memlock: Option<&std::io::Error>,
) -> anyhow::Error {
    let mut text = format!("{e:#}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    if let Some(limit) = memlock
        && text.contains("failed to create map")
    {
        // Linux < 5.11 charges maps to RLIMIT_MEMLOCK (64 KiB by default).
        anyhow!(
            "creating the kernel program's maps failed ({text}): Linux before 5.11 charges them to RLIMIT_MEMLOCK, which tcptrace could not raise ({limit}): raise it (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in a systemd unit, as deploy/tcptrace.service has) or grant CAP_SYS_RESOURCE"
        )
    } else if text.contains("Operation not permitted") {
        anyhow!(
            "loading the kernel program was refused ({text}): run as root, or grant CAP_BPF and CAP_PERFMON"
        )
    } else {
        anyhow!("loading the kernel program: {text}")
    }
}

/// The verifier's log is pages long: keep its verdict on one line, the
/// whole log under -v.
pub(super) fn verifier_error(program: &str, e: &aya::programs::ProgramError) -> anyhow::Error {
    let text = format!("{e:#}");
    log::debug!("verifier log of {program}: {text}");
    let verdict = text
        .lines()
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.trim().is_empty())
        .last()
        .unwrap_or("no verifier output");
    anyhow!(
        "the kernel verifier rejected the program {program}: {verdict} (run with -v for the full log)"
    )
}

/// Says which kernel feature is missing before the loader fails obscurely;
/// a refused `bpf()` system call is said as such, not as a missing feature.
pub(super) fn check_kernel_features() -> anyhow::Result<()> {
    use aya::{
        maps::MapType,
        programs::{ProgramError, ProgramType},
        sys::{is_map_supported, is_program_supported},
    };
    let refused = |e: &std::io::Error| {
        matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)).then(|| {
            anyhow!(
                "the bpf() system call was refused ({e}): a seccomp profile (a container runtime's default may allow bpf() only with CAP_SYS_ADMIN) or a security module blocks it; allow the bpf and perf_event_open system calls, or grant CAP_BPF and CAP_PERFMON"
            )
        })
    };
    let programs = is_program_supported(ProgramType::TracePoint);
    if let Err(ProgramError::SyscallError(e)) = &programs
        && let Some(refusal) = refused(&e.io_error)
    {
        return Err(refusal);
    }
    if !programs.unwrap_or(false) {
        bail!(
            "this kernel cannot load BPF tracepoint programs (needs CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS)"
        );
    }
    let ring = is_map_supported(MapType::RingBuf);
    if let Err(e) = &ring
        && let Some(refusal) = refused(&e.io_error)
    {
        return Err(refusal);
    }
    if !ring.unwrap_or(false) {
        bail!("this kernel has no BPF ring buffer (needs Linux >= 5.8)");
    }
    Ok(())
}

/// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN implies both on older kernels).
pub(super) fn check_privileges() -> anyhow::Result<()> {
    use sys::{CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE};
    let has = sys::has_capability;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        if !(has(CAP_SYS_PTRACE) && has(CAP_DAC_READ_SEARCH)) && sys::effective_uid() != 0 {
            eprintln!(
                "tcptrace: warning: without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH the owners of other users' sockets cannot be read from /proc"
            );
        }
        return Ok(());
    }
    bail!(
        "permission denied: tracing needs root or the capabilities CAP_BPF and CAP_PERFMON (try: sudo tcptrace ...)"
    )
}
