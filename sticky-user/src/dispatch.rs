//! Loads the SK_REUSEPORT program for one reuseport group, fills its maps and attaches it.
//!
//! A REUSEPORT_SOCKARRAY can only select sockets of the group it serves, so each listen address
//! gets its own instance of the program and maps (`Dispatcher`), all filled from the same seed
//! and table. Requires Linux 4.19 (REUSEPORT_SOCKARRAY) and CAP_BPF + CAP_NET_ADMIN.

use std::{net::TcpListener, os::fd::OwnedFd};

use aya::{
    Ebpf, EbpfError,
    maps::{Array, MapError, PerCpuArray, ReusePortSockArray},
    programs::{ProgramError, SkReuseport},
};
use sticky_common::{
    CONFIG_MAP, COUNTER_FALLBACK, COUNTER_PASSED, COUNTER_UNREADABLE, COUNTERS_MAP, DispatchConfig,
    PROGRAM, SOCKETS_MAP, TABLE_MAP,
};
use thiserror::Error;

use crate::listeners::ListenerGroup;

/// The eBPF object built from `sticky-ebpf` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sticky"));

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

/// Connection counts read from the program's per-CPU counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections the program selected each slot for (index = slot).
    pub selected: Vec<u64>,
    /// Connections whose slot was empty and went to another live slot.
    pub fallback: u64,
    /// Connections left to the kernel's own choice.
    pub passed: u64,
    /// Packets whose source address could not be read.
    pub unreadable: u64,
}

/// The program attached to one listen address's reuseport group.
///
/// Dropping it detaches the program: an SK_REUSEPORT program stays attached to the group when
/// its `Ebpf` object is dropped, so this is done explicitly.
pub struct Dispatcher {
    ebpf: Ebpf,
    /// A handle on one of the group's sockets, to detach through.
    socket: OwnedFd,
    slots: u32,
    program_id: u32,
}

impl Dispatcher {
    /// Loads the program, writes `config` and `table`, puts the group's sockets in the socket
    /// array (slot = index in the group) and attaches the program to the group.
    pub fn attach(
        group: &ListenerGroup,
        config: &DispatchConfig,
        table: &[u32],
    ) -> Result<Self, DispatchError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(refused_or_object)?;
        set_map(&mut ebpf, CONFIG_MAP, |map: &mut Array<_, DispatchConfig>| map.set(0, config, 0))?;
        set_map(&mut ebpf, TABLE_MAP, |map: &mut Array<_, u32>| {
            table.iter().zip(0..).try_for_each(|(slot, entry)| map.set(entry, slot, 0))
        })?;
        set_map(&mut ebpf, SOCKETS_MAP, |map: &mut ReusePortSockArray<_>| {
            group.sockets.iter().zip(0..).try_for_each(|(socket, slot)| map.set(slot, socket, 0))
        })?;
        let program: &mut SkReuseport = ebpf
            .program_mut(PROGRAM)
            .ok_or(DispatchError::Missing("program"))?
            .try_into()
            .map_err(|source| DispatchError::Program { action: "find", source })?;
        program.load().map_err(refused)?;
        let program_id = program
            .info()
            .map_err(|source| DispatchError::Program { action: "inspect", source })?
            .id();
        let first: &TcpListener = &group.sockets[0];
        program
            .attach(first)
            .map_err(|source| DispatchError::Program { action: "attach", source })?;
        let socket =
            first.try_clone().map(OwnedFd::from).map_err(|err| DispatchError::Program {
                action: "keep a handle for",
                source: ProgramError::IOError(err),
            })?;
        Ok(Self { ebpf, socket, slots: group.sockets.len() as u32, program_id })
    }

    /// The kernel's id of the loaded program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DispatchError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(DispatchError::Missing(COUNTERS_MAP))?;
        let map_error = |source| DispatchError::Map { action: "read", map: COUNTERS_MAP, source };
        let counters = PerCpuArray::<_, u64>::try_from(map).map_err(map_error)?;
        let read =
            |index| counters.get(&index, 0).map(|per_cpu| per_cpu.iter().sum()).map_err(map_error);
        Ok(Counters {
            selected: (0..self.slots).map(read).collect::<Result<_, _>>()?,
            fallback: read(COUNTER_FALLBACK)?,
            passed: read(COUNTER_PASSED)?,
            unreadable: read(COUNTER_UNREADABLE)?,
        })
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Err(err) = SkReuseport::detach(&self.socket) {
            tracing::warn!(error = %err, "cannot detach the eBPF program");
        }
    }
}

/// Opens map `name` as `M` and applies `write` to it.
fn set_map<'a, M>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    write: impl FnOnce(&mut M) -> Result<(), MapError>,
) -> Result<(), DispatchError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(DispatchError::Missing(name))?;
    let mut map = M::try_from(map).map_err(|source| DispatchError::Map {
        action: "open",
        map: name,
        source,
    })?;
    write(&mut map).map_err(|source| DispatchError::Map { action: "write", map: name, source })
}

fn refused_or_object(err: EbpfError) -> DispatchError {
    match err {
        EbpfError::ProgramError(err) => refused(err),
        err => DispatchError::Object(err),
    }
}

/// Turns a verifier refusal into one line with the verifier's last findings (its closing
/// statistics left out); the whole log goes to the debug log.
fn refused(err: ProgramError) -> DispatchError {
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
