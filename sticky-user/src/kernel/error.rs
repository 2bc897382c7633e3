//! Why the program could not be loaded, configured or attached, and the one-line verifier
//! finding a refusal becomes.

use aya::{EbpfError, maps::MapError, programs::ProgramError};
use thiserror::Error;

/// Why the program could not be loaded, configured or attached.
#[derive(Debug, Error)]
pub enum DispatchError {
    /// The kernel's verifier refused the program.
    #[error("the kernel refused the eBPF program ({io_error}); verifier: {reason}")]
    Refused {
        /// The error of the BPF_PROG_LOAD call.
        io_error: std::io::Error,
        /// The last lines of the verifier log.
        reason: String,
    },
    /// The object file could not be parsed or its maps created.
    #[error("cannot load the eBPF object")]
    Object(#[source] EbpfError),
    /// The object lacks a program or map this loader expects.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// Any other program error (e.g. attaching).
    #[error("cannot {action} the eBPF program")]
    Program {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: ProgramError,
    },
    /// The program's log could not be opened.
    #[error("cannot read the eBPF program's log")]
    Log(#[source] aya_log::Error),
    /// A map could not be read or written.
    #[error("cannot {action} map {map}")]
    Map {
        /// What was being done.
        action: &'static str,
        /// The map's name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
}

/// The error of a failed `action` on map `name`.
pub(super) fn map_error(
    action: &'static str,
    name: &'static str,
) -> impl Fn(MapError) -> DispatchError {
    move |source| DispatchError::Map { action, map: name, source }
}

/// The error of a failed write to map `name`.
pub(super) fn write_error(name: &'static str) -> impl Fn(MapError) -> DispatchError {
    map_error("write", name)
}

pub(super) fn refused_or_object(err: EbpfError) -> DispatchError {
    match err {
        EbpfError::ProgramError(err) => refused(err),
        err => DispatchError::Object(err),
    }
}

/// Turns a verifier refusal into one line with the verifier's last findings (its closing
/// statistics left out); the whole log goes to the debug log.
pub(super) fn refused(err: ProgramError) -> DispatchError {
    const STATISTICS: [&str; 3] = ["verification time", "stack depth", "processed "];
    match err {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = format!("{verifier_log:?}");
            tracing::debug!("verifier log:\n{log}");
            let findings: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !STATISTICS.iter().any(|s| line.starts_with(s)))
                .collect();
            let reason = findings[findings.len().saturating_sub(2)..].join(" | ");
            DispatchError::Refused { io_error, reason }
        }
        source => DispatchError::Program { action: "load", source },
    }
}
