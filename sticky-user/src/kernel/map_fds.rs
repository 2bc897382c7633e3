//! The maps of one dispatcher by name: their fds in a handover, their data, their names.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};
use sticky_common::{CONFIG_MAP, COUNTERS_MAP, PROXIES_MAP, SOCKETS_MAP, TABLE_MAP};

/// One thing per map of a dispatcher, by name: their fds in a handover (`RawFd`), or the maps'
/// data, names or owned fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFds<T = RawFd> {
    /// The socket array's.
    pub sockets: T,
    /// The lookup table's.
    pub table: T,
    /// The dispatch configuration's.
    pub config: T,
    /// The counters'.
    pub counters: T,
    /// The trusted proxies' trie's.
    pub proxies: T,
}

/// The maps' names, as the program declares them.
pub(super) const MAP_NAMES: MapFds<&str> = MapFds {
    sockets: SOCKETS_MAP,
    table: TABLE_MAP,
    config: CONFIG_MAP,
    counters: COUNTERS_MAP,
    proxies: PROXIES_MAP,
};

impl<T> MapFds<T> {
    /// `f` of each, with its map's name; the first error stops it.
    pub fn try_map<U, E>(
        self,
        mut f: impl FnMut(T, &'static str) -> Result<U, E>,
    ) -> Result<MapFds<U>, E> {
        let MapFds { sockets, table, config, counters, proxies } = self;
        Ok(MapFds {
            sockets: f(sockets, SOCKETS_MAP)?,
            table: f(table, TABLE_MAP)?,
            config: f(config, CONFIG_MAP)?,
            counters: f(counters, COUNTERS_MAP)?,
            proxies: f(proxies, PROXIES_MAP)?,
        })
    }

    /// Each, in a fixed order.
    pub fn into_array(self) -> [T; 5] {
        let MapFds { sockets, table, config, counters, proxies } = self;
        [sockets, table, config, counters, proxies]
    }

    /// References to each.
    pub fn as_ref(&self) -> MapFds<&T> {
        MapFds {
            sockets: &self.sockets,
            table: &self.table,
            config: &self.config,
            counters: &self.counters,
            proxies: &self.proxies,
        }
    }
}
