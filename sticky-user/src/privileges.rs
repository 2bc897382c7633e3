//! The capabilities the loader needs for a configuration, checked before it touches the kernel.
//!
//! The same list is what `sticky install` grants the unit, so the service gets exactly what the
//! loader asks for.

use std::fmt;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Uid};
use thiserror::Error;

use crate::config::{DispatchMode, RunConfig};

/// One capability the loader needs, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The capability.
    pub capability: Capability,
    /// Why the loader needs it, as a short phrase.
    pub reason: &'static str,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.capability, self.reason)
    }
}

/// The loader lacks a capability it needs.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// Effective capabilities are missing.
    #[error("missing capability {}: {}", list(.0), remedy(.0))]
    Missing(Vec<Need>),
    /// The capability sets could not be read.
    #[error("cannot read this process's capabilities")]
    Unreadable(#[source] caps::errors::CapsError),
}

fn list(needs: &[Need]) -> String {
    needs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// What to do about the missing `needs`.
fn remedy(needs: &[Need]) -> String {
    let them = if needs.len() == 1 { "it" } else { "them" };
    let mut remedy = format!("run sticky as root or grant {them} (e.g. AmbientCapabilities=)");
    if needs.contains(&BPF) || needs.contains(&NET_ADMIN) {
        remedy.push_str(", or use --dispatch userspace, which loads no eBPF program");
    }
    remedy
}

/// What the loader needs to run `config` as a process with effective ids `uid` and `gid`:
///
/// - CAP_BPF and CAP_NET_ADMIN to load and attach the SK_REUSEPORT program (kernel dispatch);
/// - CAP_SETUID and CAP_SETGID to start workers as another user (with that user's
///   supplementary groups), CAP_KILL to stop them and for their parent-death signal to reach them: the
///   kernel checks both signals against the loader's credentials;
/// - CAP_NET_BIND_SERVICE for a port below 1024.
///
/// CAP_PERFMON is not needed: the program passes the verifier's rules for loaders without it.
pub fn required(config: &RunConfig, uid: Uid, gid: Gid) -> Vec<Need> {
    let mut needs = Vec::new();
    if config.dispatch == DispatchMode::Kernel {
        needs.extend([BPF, NET_ADMIN]);
    }
    if let Some(credentials) = &config.credentials {
        let other_user = credentials.uid != uid.as_raw();
        if other_user {
            needs.push(SETUID);
        }
        // Setting the user's supplementary groups (initgroups) needs it whatever the group.
        if other_user || credentials.gid != gid.as_raw() || uid.is_root() {
            needs.push(SETGID);
        }
        if other_user {
            needs.push(KILL);
        }
    }
    let listen = config.listen.iter().map(|listen| listen.address);
    let ports = listen.chain(config.metrics).map(|address| address.port());
    if ports.into_iter().any(|port| port < 1024) {
        needs.push(NET_BIND_SERVICE);
    }
    needs
}

/// Every capability some configuration needs ([`required`] for each): what a unit that serves
/// any configuration grants, the packaged template `sticky@.service`.
pub fn any_configuration() -> Vec<Need> {
    vec![BPF, NET_ADMIN, SETUID, SETGID, KILL, NET_BIND_SERVICE]
}

const BPF: Need = Need { capability: Capability::CAP_BPF, reason: "to load the dispatch program" };
const NET_ADMIN: Need =
    Need { capability: Capability::CAP_NET_ADMIN, reason: "to attach it to the listening sockets" };
const SETUID: Need =
    Need { capability: Capability::CAP_SETUID, reason: "to start the workers as their user" };
const SETGID: Need = Need {
    capability: Capability::CAP_SETGID,
    reason: "to start the workers with their user's groups",
};
const KILL: Need = Need {
    capability: Capability::CAP_KILL,
    reason: "to stop workers of another user, and kill them if sticky dies",
};
const NET_BIND_SERVICE: Need =
    Need { capability: Capability::CAP_NET_BIND_SERVICE, reason: "to listen on a port below 1024" };

/// Fails naming every capability `config` needs that is missing from the effective set.
pub fn check(config: &RunConfig) -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Unreadable)?;
    let missing: Vec<Need> = required(config, Uid::effective(), Gid::effective())
        .into_iter()
        .filter(|need| !effective.contains(&need.capability))
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(PrivilegeError::Missing(missing)) }
}
