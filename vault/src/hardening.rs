//! Process hardening at start: no core dumps (a dump would contain keys and tokens in clear).
//!
//! Both knobs through rustix, no `unsafe`: RLIMIT_CORE = 0 (soft and hard), and on Linux
//! `PR_SET_DUMPABLE = 0`, which also keeps other same-user processes from ptrace-attaching.

/// Turns core dumps off for this process. Failure is returned so `serve` can refuse to start.
pub fn disable_core_dumps() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}
