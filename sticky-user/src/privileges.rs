//! The capabilities the loader needs, checked before it touches the kernel.

use caps::{CapSet, Capability};
use thiserror::Error;

/// Capabilities needed to load the SK_REUSEPORT program (CAP_BPF, Linux 5.8+) and to use a
/// networking program type with socket maps (CAP_NET_ADMIN).
pub const REQUIRED: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_NET_ADMIN];

/// The loader lacks a capability it needs.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// Effective capabilities are missing.
    #[error("missing capability {}: run sticky as root or grant it (e.g. AmbientCapabilities=)", names(.0))]
    Missing(Vec<Capability>),
    /// The capability sets could not be read.
    #[error("cannot read this process's capabilities")]
    Unreadable(#[source] caps::errors::CapsError),
}

fn names(missing: &[Capability]) -> String {
    missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Fails with the names of every required capability missing from the effective set.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Unreadable)?;
    let missing: Vec<Capability> =
        REQUIRED.into_iter().filter(|cap| !effective.contains(cap)).collect();
    if missing.is_empty() { Ok(()) } else { Err(PrivilegeError::Missing(missing)) }
}
