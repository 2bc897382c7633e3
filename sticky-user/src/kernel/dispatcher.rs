//! Loads the SK_REUSEPORT program for one reuseport group, fills its maps and attaches it.
//!
//! A REUSEPORT_SOCKARRAY can only select sockets of the group it serves, so each listen address
//! gets its own instance of the program and maps (`Dispatcher`), all filled from the same seed
//! and table. Requires Linux 4.19 (REUSEPORT_SOCKARRAY) and CAP_BPF + CAP_NET_ADMIN.

use std::net::TcpListener;

use aya::{
    Ebpf, EbpfError,
    maps::{Array, MapData, MapError, PerCpuArray, ReusePortSockArray},
    programs::{ProgramError, SkReuseport},
};
use sticky_common::{
    CONFIG_MAP, COUNTER_FALLBACK, COUNTER_PASSED, COUNTER_UNREADABLE, COUNTERS_MAP, DispatchConfig,
    PROGRAM_MIGRATE, PROGRAM_SELECT, SOCKETS_MAP, TABLE_MAP, Table,
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

impl Counters {
    /// Connections the program selected `slot` for, summed over `counters` (one per listen
    /// address).
    pub fn selected_total(counters: &[Counters], slot: usize) -> u64 {
        counters.iter().filter_map(|counters| counters.selected.get(slot)).sum()
    }
}

/// The program attached to one listen address's reuseport group, and its maps.
///
/// An SK_REUSEPORT program stays attached to the group when its `Ebpf` object is dropped; it
/// goes away with the group's last socket, or with [`Dispatcher::detach`].
pub struct Dispatcher {
    /// Holds the programs.
    ebpf: Ebpf,
    sockets: ReusePortSockArray<MapData>,
    table: Array<MapData, Table>,
    config_map: Array<MapData, DispatchConfig>,
    counters: PerCpuArray<MapData, u64>,
    config: DispatchConfig,
    program_id: u32,
    migrates: bool,
}

impl Dispatcher {
    /// Loads the program, writes `config` and `table`, puts the group's sockets in the socket
    /// array (slot = index in the group) and attaches the program to the group.
    ///
    /// The migrating variant is used where the kernel has it (5.14+), the select-only one
    /// elsewhere.
    pub fn attach(
        group: &ListenerGroup,
        config: &DispatchConfig,
        table: &Table,
    ) -> Result<Self, DispatchError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(refused_or_object)?;
        let mut dispatcher = Self {
            sockets: take_map(&mut ebpf, SOCKETS_MAP)?,
            table: take_map(&mut ebpf, TABLE_MAP)?,
            config_map: take_map(&mut ebpf, CONFIG_MAP)?,
            counters: take_map(&mut ebpf, COUNTERS_MAP)?,
            ebpf,
            config: *config,
            program_id: 0,
            migrates: false,
        };
        dispatcher.write_config()?;
        dispatcher.update_table(table)?;
        for (slot, socket) in (0..).zip(&group.sockets) {
            dispatcher.set_socket(slot, socket)?;
        }
        dispatcher.migrates = match dispatcher.program(PROGRAM_MIGRATE)?.load() {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(
                    error = %refused(err),
                    "no connection migration (needs Linux 5.14): connections queued on a \
                     listener that closes are reset"
                );
                dispatcher.program(PROGRAM_SELECT)?.load().map_err(refused)?;
                false
            }
        };
        let program = dispatcher.program(dispatcher.program_name())?;
        let program_id = program
            .info()
            .map_err(|source| DispatchError::Program { action: "inspect", source })?
            .id();
        program
            .attach(&group.sockets[0])
            .map_err(|source| DispatchError::Program { action: "attach", source })?;
        dispatcher.program_id = program_id;
        Ok(dispatcher)
    }

    fn program_name(&self) -> &'static str {
        if self.migrates { PROGRAM_MIGRATE } else { PROGRAM_SELECT }
    }

    fn program(&mut self, name: &'static str) -> Result<&mut SkReuseport, DispatchError> {
        self.ebpf
            .program_mut(name)
            .ok_or(DispatchError::Missing(name))?
            .try_into()
            .map_err(|source| DispatchError::Program { action: "find", source })
    }

    /// The kernel's id of the attached program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Whether the program also migrates the queue of a closing listener.
    pub fn migrates(&self) -> bool {
        self.migrates
    }

    /// Writes the lookup table (entry → slot). The program may read a mix of the old and the new
    /// table while it is written; every entry of either names a slot to try.
    pub fn update_table(&mut self, table: &Table) -> Result<(), DispatchError> {
        self.table.set(0, table, 0).map_err(write_error(TABLE_MAP))
    }

    /// Puts `socket` in the socket array at `slot`, replacing what was there.
    pub fn set_socket(&mut self, slot: u32, socket: &TcpListener) -> Result<(), DispatchError> {
        self.sockets.set(slot, socket, 0).map_err(write_error(SOCKETS_MAP))
    }

    /// Empties `slot` in the socket array.
    pub fn clear_socket(&mut self, slot: u32) -> Result<(), DispatchError> {
        match self.sockets.clear_index(&slot) {
            // Already empty.
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            other => other.map_err(write_error(SOCKETS_MAP)),
        }
    }

    /// Sets the number of slots the fallback scan and the counters cover.
    pub fn set_slot_count(&mut self, slots: u32) -> Result<(), DispatchError> {
        self.config.slots = slots;
        self.write_config()
    }

    fn write_config(&mut self) -> Result<(), DispatchError> {
        self.config_map.set(0, self.config, 0).map_err(write_error(CONFIG_MAP))
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DispatchError> {
        let map_error = |source| DispatchError::Map { action: "read", map: COUNTERS_MAP, source };
        let read = |index| {
            self.counters.get(&index, 0).map(|per_cpu| per_cpu.iter().sum()).map_err(map_error)
        };
        Ok(Counters {
            selected: (0..self.config.slots).map(read).collect::<Result<_, _>>()?,
            fallback: read(COUNTER_FALLBACK)?,
            passed: read(COUNTER_PASSED)?,
            unreadable: read(COUNTER_UNREADABLE)?,
        })
    }

    /// Detaches the program from the group `socket` belongs to.
    pub fn detach(self, socket: &TcpListener) -> Result<(), DispatchError> {
        SkReuseport::detach(socket)
            .map_err(|source| DispatchError::Program { action: "detach", source })
    }
}

/// Takes map `name` out of the object as its typed handle `M`, once, at attach.
fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, DispatchError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DispatchError::Missing(name))?;
    M::try_from(map).map_err(|source| DispatchError::Map { action: "open", map: name, source })
}

/// The error of a failed write to map `name`.
fn write_error(name: &'static str) -> impl FnOnce(MapError) -> DispatchError {
    move |source| DispatchError::Map { action: "write", map: name, source }
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
