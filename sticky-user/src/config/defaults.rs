//! What an option is when it is not given, in one place.

use std::time::Duration;

/// The listen address used when none is given: dual-stack, port 3000.
pub const DEFAULT_LISTEN: &str = "[::]:3000";
/// The IPv4 prefix length used when none is given: each address is its own client.
pub const DEFAULT_PREFIX_V4: u8 = 32;
/// The IPv6 prefix length used when none is given: a /64 is usually one host or site.
pub const DEFAULT_PREFIX_V6: u8 = 64;
/// Where the hash seed is kept when no state directory is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sticky";
/// The control socket when none is given.
pub const DEFAULT_CONTROL: &str = "/run/sticky/sticky.sock";
/// Exits within the crash window that take a slot out of the table, when none is given.
pub const DEFAULT_CRASH_LIMIT: u32 = 5;
/// The window the crash limit counts exits in, when none is given.
pub const DEFAULT_CRASH_WINDOW: Duration = Duration::from_secs(30);
/// How long a worker may take to exit after SIGTERM when none is given.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// The most listen addresses one `sticky run` serves.
pub const MAX_LISTEN_ADDRESSES: usize = 16;
/// How long a worker must stay up to count as ready in delay mode, when none is given.
pub const DEFAULT_READY_DELAY: Duration = Duration::from_secs(1);
/// How long a new worker may take to become ready, when none is given.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker of an earlier QUIC socket generation may drain, when none is given.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a draining QUIC socket must get no datagram to count as drained, when none is
/// given: QUIC's usual idle timeout (quinn's default), after which a silent connection is over.
pub const DEFAULT_DRAIN_IDLE: Duration = Duration::from_secs(30);
/// How long a slot may keep connections waiting without an accept, when none is given.
pub const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(10);

/// [`DEFAULT_DRAIN_TIMEOUT`], for a record from an image before it.
pub(super) fn drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

/// [`DEFAULT_DRAIN_IDLE`], for a record from an image before it.
pub(super) fn drain_idle() -> Duration {
    DEFAULT_DRAIN_IDLE
}
