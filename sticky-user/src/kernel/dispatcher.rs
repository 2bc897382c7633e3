//! Loads the SK_REUSEPORT program for one reuseport group, fills its maps and attaches it.
//!
//! A REUSEPORT_SOCKARRAY can only select sockets of the group it serves, so each listen address
//! gets its own instance of the program and maps (`Dispatcher`), all filled from the same seed
//! and table. Requires Linux 4.19 (REUSEPORT_SOCKARRAY) and CAP_BPF + CAP_NET_ADMIN.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, LpmTrie, Map, MapData, MapError, PerCpuArray, ReusePortSockArray, lpm_trie::Key,
    },
    programs::{ProgramError, SkReuseport},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sticky_common::{
    CONFIG_MAP, COUNTERS_MAP, DispatchConfig, GENERATIONS_MAP, PROGRAM_MIGRATE, PROGRAM_SELECT,
    PROXIES_MAP, SOCKET_ENTRIES, SOCKETS_MAP, TABLE_MAP, Table, client::Client,
};

pub use super::map_fds::MapFds;
use super::{
    counters::Counters,
    error::{DispatchError, map_error, refused, refused_or_object, write_error},
    generations::SlotGenerations,
    logs::{self, ProgramLogs},
    map_fds::MAP_NAMES,
};
use crate::listeners::ListenerGroup;

/// The eBPF object built from `sticky-ebpf` by this crate's build script.
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sticky"));

/// The program attached to one listen address's reuseport group, and its maps.
///
/// An SK_REUSEPORT program stays attached to the group as long as the group has a socket, or
/// until [`Dispatcher::detach`]: the loader keeps only fds of the program and its maps, which
/// it can hand to its next image ([`Dispatcher::handover`], [`Dispatcher::resume`]).
pub struct Dispatcher {
    program: OwnedFd,
    sockets: ReusePortSockArray<MapData>,
    table: Array<MapData, Table>,
    config_map: Array<MapData, DispatchConfig>,
    pub(super) counters: PerCpuArray<MapData, u64>,
    proxies: LpmTrie<MapData, [u32; 4], u8>,
    /// The maps' fds (copies the typed handles do not expose).
    map_fds: MapFds<OwnedFd>,
    /// The program's log ring buffer (a copy of the reader's fd, for a handover).
    log_ring: Option<OwnedFd>,
    /// Its reader, until [`Dispatcher::take_logs`].
    logs: Option<ProgramLogs>,
    /// Each slot's QUIC socket generation (none in a program an image before them loaded).
    pub(super) generations: Option<SlotGenerations>,
    config: DispatchConfig,
    program_id: u32,
    migrates: bool,
}

/// An attached dispatcher as fd numbers and facts: what an upgrade hands to the next image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatcherFds {
    /// The program's fd.
    pub program: RawFd,
    /// The maps' fds.
    pub maps: MapFds,
    /// The kernel's id of the program.
    pub program_id: u32,
    /// Whether it is the migrating variant.
    pub migrates: bool,
    /// The program's log ring buffer (none from an image before aya-log).
    #[serde(default)]
    pub logs: Option<RawFd>,
    /// The slots' QUIC socket generations (none from an image before them).
    #[serde(default)]
    pub generations: Option<RawFd>,
}

impl DispatcherFds {
    /// Every fd it names.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> {
        std::iter::once(self.program)
            .chain(self.maps.into_array())
            .chain(self.logs)
            .chain(self.generations)
    }
}

impl Dispatcher {
    /// Loads the program, writes `config` and `table`, puts the group's sockets in the socket
    /// array (slot = index in the group) and attaches the program to the group.
    ///
    /// The migrating variant is used where the kernel has it (5.14+), the select-only one
    /// elsewhere.
    ///
    /// With `previous`, the socket array of the program an earlier loader attached to this
    /// group (which still holds the sockets: a socket is in one array at most), each socket
    /// moves from it to this program's array, one slot at a time, before the attach replaces
    /// that program.
    ///
    /// The program logs at `log_level` and below (its exceptional paths, at debug).
    pub fn attach(
        group: &ListenerGroup,
        config: &DispatchConfig,
        table: &Table,
        previous: Option<OwnedFd>,
        log_level: tracing::Level,
    ) -> Result<Self, DispatchError> {
        let level = logs::program_level(log_level);
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .map_err(refused_or_object)?;
        let maps = MAP_NAMES.try_map(|name, _| take_map(&mut ebpf, name))?;
        let logs = ProgramLogs::init(&mut ebpf, group.listen.to_string())?;
        let generations = take_map(&mut ebpf, GENERATIONS_MAP)?;
        let migrates = match program(&mut ebpf, PROGRAM_MIGRATE)?.load() {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(
                    error = %refused(err),
                    "no connection migration (needs Linux 5.14): connections queued on a \
                     listener that closes are reset"
                );
                program(&mut ebpf, PROGRAM_SELECT)?.load().map_err(refused)?;
                false
            }
        };
        let name = if migrates { PROGRAM_MIGRATE } else { PROGRAM_SELECT };
        let loaded = program(&mut ebpf, name)?;
        let inspect = |source| DispatchError::Program { action: "inspect", source };
        let program_id = loaded.info().map_err(inspect)?.id();
        let program_fd = loaded.fd().map_err(inspect)?.as_fd().try_clone_to_owned();
        let program_fd = program_fd.map_err(|err| inspect(ProgramError::IOError(err)))?;
        let mut dispatcher =
            Self::from_parts(program_fd, maps, Some(*config), program_id, migrates)?;
        dispatcher.log_ring = Some(logs.ring()?);
        dispatcher.logs = Some(logs);
        dispatcher.generations = Some(generations_of(generations)?);
        dispatcher.write_config()?;
        dispatcher.update_table(table)?;
        dispatcher.take_sockets(group, previous)?;
        program(&mut ebpf, name)?
            .attach(&group.sockets[0])
            .map_err(|source| DispatchError::Program { action: "attach", source })?;
        Ok(dispatcher)
    }

    /// Puts the group's sockets in the socket array (slot = index in the group), each taken out
    /// of the `previous` loader's array first, if given.
    fn take_sockets(
        &mut self,
        group: &ListenerGroup,
        previous: Option<OwnedFd>,
    ) -> Result<(), DispatchError> {
        let mut previous = match previous {
            Some(fd) => Some(typed::<ReusePortSockArray<MapData>>(
                map_from_fd(fd, SOCKETS_MAP)?,
                SOCKETS_MAP,
            )?),
            None => None,
        };
        for (slot, socket) in (0..).zip(&group.sockets) {
            if let Some(previous) = &mut previous {
                let _ = previous.clear_index(&slot);
            }
            if let Err(err) = self.set_socket(slot, socket) {
                // Held at another index of the previous array: empty it all, then retry.
                let Some(previous) = &mut previous else { return Err(err) };
                for index in 0..SOCKET_ENTRIES {
                    let _ = previous.clear_index(&index);
                }
                self.set_socket(slot, socket)?;
            }
        }
        Ok(())
    }

    /// Takes over a dispatcher an earlier image of this loader handed over: its program stays
    /// attached, its maps (counters included) keep their contents, its log is read here now
    /// (tagged with `listen`).
    ///
    /// # Safety
    ///
    /// Every fd in `handover` must be open, owned by nobody else in this process, and be what
    /// it names.
    pub unsafe fn resume(handover: &DispatcherFds, listen: String) -> Result<Self, DispatchError> {
        use std::os::fd::FromRawFd as _;
        let DispatcherFds { program, maps, program_id, migrates, logs, generations } = handover;
        // SAFETY: the caller guarantees these fds are open and ours alone.
        let owned = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let maps = maps.try_map(|fd, name| map_from_fd(owned(fd), name))?;
        let log_ring = logs.map(owned);
        // The configuration is the one in the map, as the program reads it.
        let mut dispatcher = Self::from_parts(owned(*program), maps, None, *program_id, *migrates)?;
        dispatcher.logs = ProgramLogs::resume(log_ring.as_ref(), listen);
        dispatcher.log_ring = log_ring;
        if let Some(fd) = generations {
            dispatcher.generations =
                Some(generations_of(map_from_fd(owned(*fd), GENERATIONS_MAP)?)?);
        }
        Ok(dispatcher)
    }

    /// The reader of the program's log, to run ([`ProgramLogs::forward`]); once.
    pub fn take_logs(&mut self) -> Option<ProgramLogs> {
        self.logs.take()
    }

    /// The socket array's fd (what a restart takes its sockets back from).
    pub fn sockets_map(&self) -> std::os::fd::BorrowedFd<'_> {
        self.map_fds.sockets.as_fd()
    }

    /// What [`Dispatcher::resume`] needs in the next image (the fds stay owned by this one).
    pub fn handover(&self) -> DispatcherFds {
        let raw = |fd: &OwnedFd, _| Ok::<_, std::convert::Infallible>(fd.as_raw_fd());
        let Ok(maps) = self.map_fds.as_ref().try_map(raw);
        DispatcherFds {
            program: self.program.as_raw_fd(),
            maps,
            program_id: self.program_id,
            migrates: self.migrates,
            logs: self.log_ring.as_ref().map(AsRawFd::as_raw_fd),
            generations: self.generations.as_ref().map(SlotGenerations::raw_fd),
        }
    }

    /// A dispatcher of `program` and its maps, with `config` (or the one its config map holds).
    fn from_parts(
        program: OwnedFd,
        maps: MapFds<MapData>,
        config: Option<DispatchConfig>,
        program_id: u32,
        migrates: bool,
    ) -> Result<Self, DispatchError> {
        let map_fds = maps.as_ref().try_map(|data, name| {
            let fd = data.fd().as_fd().try_clone_to_owned();
            fd.map_err(|err| map_error("open", name)(MapError::IoError(err)))
        })?;
        let MapFds { sockets, table, config: config_map, counters, proxies } = maps;
        let config_map: Array<MapData, DispatchConfig> = typed(config_map, CONFIG_MAP)?;
        let config = match config {
            Some(config) => config,
            None => config_map.get(&0, 0).map_err(map_error("read", CONFIG_MAP))?,
        };
        Ok(Self {
            program,
            sockets: typed(sockets, SOCKETS_MAP)?,
            table: typed(table, TABLE_MAP)?,
            config_map,
            counters: typed(counters, COUNTERS_MAP)?,
            proxies: typed(proxies, PROXIES_MAP)?,
            map_fds,
            log_ring: None,
            logs: None,
            generations: None,
            config,
            program_id,
            migrates,
        })
    }

    /// The kernel's id of the attached program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// With `--quic` on a UDP address, the program routes QUIC by connection IDs of this
    /// length.
    pub fn quic_cid_len(&self) -> Option<u8> {
        (self.config.quic_cid_len != 0).then_some(self.config.quic_cid_len as u8)
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
    pub fn set_socket(&mut self, slot: u32, socket: &impl AsRawFd) -> Result<(), DispatchError> {
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

    /// Puts the trusted proxies in the program's trie: their connections go to the loader's
    /// socket.
    pub fn set_trusted_proxies(&mut self, proxies: &[IpNet]) -> Result<(), DispatchError> {
        for net in proxies {
            let client = Client::from(net.network());
            // An IPv4 network is keyed v4-mapped: 96 bits more.
            let offset = if matches!(client, Client::V4(_)) { 96 } else { 0 };
            let key = Key::new(u32::from(net.prefix_len()) + offset, client.trie_words());
            self.proxies.insert(&key, 1, 0).map_err(write_error(PROXIES_MAP))?;
        }
        // The program looks proxies up only once it is told there are some.
        self.config.proxies = proxies.len() as u32;
        self.write_config()
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
        let quic = self.quic_cid_len().is_some();
        Counters::read(&self.counters, self.config.slots, quic)
    }

    /// Detaches the program from the group `socket` belongs to.
    pub fn detach(self, socket: &impl AsFd) -> Result<(), DispatchError> {
        Self::detach_any(socket)
    }

    /// Detaches whatever program is attached to the group `socket` belongs to.
    pub fn detach_any(socket: &impl AsFd) -> Result<(), DispatchError> {
        SkReuseport::detach(socket)
            .map_err(|source| DispatchError::Program { action: "detach", source })
    }
}

/// The object's program `name`.
fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SkReuseport, DispatchError> {
    ebpf.program_mut(name)
        .ok_or(DispatchError::Missing(name))?
        .try_into()
        .map_err(|source| DispatchError::Program { action: "find", source })
}

/// Takes map `name` out of the object, once, at attach.
fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, DispatchError> {
    match ebpf.take_map(name).ok_or(DispatchError::Missing(name))? {
        Map::ReusePortSockArray(data)
        | Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::LpmTrie(data) => Ok(data),
        _ => Err(DispatchError::Missing(name)),
    }
}

/// Map `name` as its typed handle `M`.
fn typed<M>(data: MapData, name: &'static str) -> Result<M, DispatchError>
where
    M: TryFrom<Map, Error = MapError>,
{
    M::try_from(Map::from_map_data(data).map_err(map_error("open", name))?)
        .map_err(map_error("open", name))
}

/// The generations map, with a copy of its fd.
fn generations_of(data: MapData) -> Result<SlotGenerations, DispatchError> {
    let fd = data.fd().as_fd().try_clone_to_owned();
    let fd = fd.map_err(|err| map_error("open", GENERATIONS_MAP)(MapError::IoError(err)))?;
    SlotGenerations::new(typed(data, GENERATIONS_MAP)?, fd)
}

/// Map `name` from an fd an earlier loader left (handed over, or kept in the fd store).
fn map_from_fd(fd: OwnedFd, name: &'static str) -> Result<MapData, DispatchError> {
    MapData::from_fd(fd).map_err(map_error("open", name))
}
