//! The program's own log (aya-log): its level, set at load, and the reader that passes its
//! messages on to the loader's log, tagged with their listen address.
//!
//! Each program instance writes to its object's ring buffer map, `AYA_LOGS`. aya-log 0.3 makes
//! its reader ([`EbpfLogger`]) only from a loaded object (or from the program's id, which
//! takes CAP_SYS_ADMIN to open the map by). A new image after an upgrade has the ring buffer's
//! fd alone, so [`ProgramLogs::adopt`] loads the object's maps once more (no program), puts
//! the handed-over ring buffer in place of its own, and lets aya-log take that.

use std::os::fd::{AsFd as _, OwnedFd};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    dispatcher::EBPF_OBJECT,
    error::{DispatchError, map_error, refused_or_object},
};

/// The ring buffer map aya-log's program side writes to.
pub(super) const LOG_MAP: &str = "AYA_LOGS";
/// The target the program's messages have in the loader's log (what `STICKY_LOG` filters by).
const TARGET: &str = "sticky_ebpf";

/// The program's level, as aya-log's `AYA_LOG_LEVEL` global holds it.
pub(super) fn program_level(level: tracing::Level) -> u8 {
    let level = match level {
        tracing::Level::ERROR => aya_log::Level::Error,
        tracing::Level::WARN => aya_log::Level::Warn,
        tracing::Level::INFO => aya_log::Level::Info,
        tracing::Level::DEBUG => aya_log::Level::Debug,
        tracing::Level::TRACE => aya_log::Level::Trace,
    };
    level.into()
}

/// A program's log: its ring buffer, read by aya-log.
pub struct ProgramLogs(EbpfLogger<Forward>);

impl ProgramLogs {
    /// The log of the program `ebpf` loaded for `listen`.
    pub(super) fn init(ebpf: &mut Ebpf, listen: String) -> Result<Self, DispatchError> {
        EbpfLogger::init_with_logger(ebpf, Forward { listen }).map(Self).map_err(DispatchError::Log)
    }

    /// The reader of the log of a program an earlier image loaded for `listen`, whose ring
    /// buffer is `ring`. None, logged, if it has none or it cannot be read: the program still
    /// dispatches, so the takeover goes on.
    pub(super) fn resume(ring: Option<&OwnedFd>, listen: String) -> Option<Self> {
        let Some(ring) = ring else {
            tracing::info!(%listen, "the program has no log (loaded by an image before aya-log)");
            return None;
        };
        let ring =
            ring.try_clone().map_err(|err| map_error("open", LOG_MAP)(MapError::IoError(err)));
        let reader = ring.and_then(|ring| Self::adopt(ring, listen));
        reader.inspect_err(|err| tracing::warn!(error = %err, "the program's log is not read")).ok()
    }

    /// The log of a program an earlier image loaded for `listen`, from its ring buffer's fd.
    fn adopt(ring: OwnedFd, listen: String) -> Result<Self, DispatchError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(refused_or_object)?;
        let map = ebpf.map_mut(LOG_MAP).ok_or(DispatchError::Missing(LOG_MAP))?;
        *map = Map::RingBuf(MapData::from_fd(ring).map_err(map_error("open", LOG_MAP))?);
        Self::init(&mut ebpf, listen)
    }

    /// A copy of the ring buffer's fd.
    pub(super) fn ring(&self) -> Result<OwnedFd, DispatchError> {
        let ring = self.0.as_fd().try_clone_to_owned();
        ring.map_err(|err| map_error("open", LOG_MAP)(MapError::IoError(err)))
    }

    /// Passes the program's messages on to the loader's log as they come, until the runtime
    /// stops.
    pub async fn forward(self) {
        // SAFETY: the logger owns the ring buffer's fd, open and the same for its life.
        let ring = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) };
        let mut ring = match ring {
            Ok(ring) => ring,
            Err(err) => {
                tracing::warn!(error = %err, "the program's log cannot be read");
                return;
            }
        };
        loop {
            let Ok(mut ready) = ring.readable_mut().await else { return };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }
}

/// Writes each message of the program into the loader's log (tracing), with its listen
/// address.
struct Forward {
    listen: String,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let (listen, message) = (&self.listen, record.args());
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, %listen, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, %listen, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, %listen, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, %listen, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, %listen, "{message}"),
        }
    }

    fn flush(&self) {}
}
