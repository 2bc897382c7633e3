//! Why a configuration is refused: one variant per problem, each naming it in one line.

use std::path::PathBuf;

use sticky_common::MAX_SLOTS;
use thiserror::Error;

use super::{DispatchMode, Listen, defaults::MAX_LISTEN_ADDRESSES};

/// Why a `sticky run` configuration is invalid.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A listen address does not parse.
    #[error(
        "invalid listen address '{input}': expected ADDR:PORT or udp://ADDR:PORT, e.g. \
         0.0.0.0:3000, [::]:3000 or udp://0.0.0.0:5000"
    )]
    ListenSyntax {
        /// The address as given.
        input: String,
    },
    /// A listen address has port 0.
    #[error("invalid listen address '{0}': port 0 is not supported, name a port")]
    ListenPortZero(Listen),
    /// The same listen address is given twice.
    #[error("listen address {0} is given twice")]
    ListenTwice(Listen),
    /// More listen addresses than [`MAX_LISTEN_ADDRESSES`].
    #[error("at most {MAX_LISTEN_ADDRESSES} listen addresses are supported, got {0}")]
    TooManyListen(usize),
    /// The worker count is out of range.
    #[error("--workers must be between 1 and {MAX_SLOTS}, got {0}")]
    Workers(u32),
    /// The IPv4 prefix length is out of range.
    #[error("--prefix-v4 must be between 0 and 32, got {0}")]
    PrefixV4(u8),
    /// The IPv6 prefix length is out of range.
    #[error("--prefix-v6 must be between 0 and 128, got {0}")]
    PrefixV6(u8),
    /// The grace period is negative, not a number or absurdly long.
    #[error("--grace-period must be between 0 and 3600 seconds, got {0}")]
    GracePeriod(f64),
    /// The ready delay is out of range.
    #[error("--ready-delay must be between 0 and 3600 seconds, got {0}")]
    ReadyDelay(f64),
    /// The ready timeout is out of range.
    #[error("--ready-timeout must be between 0.1 and 3600 seconds, got {0}")]
    ReadyTimeout(f64),
    /// The hang timeout is out of range.
    #[error("--hang-timeout must be 0 (off) or between 0.5 and 3600 seconds, got {0}")]
    HangTimeout(f64),
    /// The worker watchdog is out of range.
    #[error("--worker-watchdog must be between 0.1 and 3600 seconds, got {0}")]
    WorkerWatchdog(f64),
    /// The crash limit is out of range.
    #[error("--crash-limit must be between 1 and 1000, got {0}")]
    CrashLimit(u32),
    /// The crash window is out of range.
    #[error("--crash-window must be between 0.1 and 86400 seconds, got {0}")]
    CrashWindow(f64),
    /// The user does not exist.
    #[error("unknown user '{0}'")]
    User(String),
    /// The group does not exist.
    #[error("unknown group '{0}'")]
    Group(String),
    /// A group without a user.
    #[error("--group needs --user")]
    GroupWithoutUser,
    /// Workers would run as root (how, in words) without being allowed to.
    #[error(
        "refusing to run workers {0}: give --user an unprivileged user (e.g. --user nobody), or \
         --allow-root-workers"
    )]
    RootWorkers(String),
    /// The working directory is not a directory.
    #[error("working directory {} is not a directory", .0.display())]
    WorkingDirectory(PathBuf),
    /// An environment variable name is empty or holds '='.
    #[error("invalid environment variable name '{0}'")]
    EnvironmentName(String),
    /// The metrics address does not parse.
    #[error("invalid metrics address '{0}': expected PORT or ADDR:PORT")]
    Metrics(String),
    /// A `--trusted-proxy` that is no address or network.
    #[error(
        "--trusted-proxy: '{0}' is not an address or network (e.g. 10.0.0.0/8, 192.0.2.7, \
         2001:db8::/32)"
    )]
    TrustedProxy(String),
    /// More trusted proxies than the program's trie holds.
    #[error("--trusted-proxy is given {0} times: at most {max} networks", max = sticky_common::MAX_PROXIES)]
    TooManyProxies(usize),
    /// `--client-address` with no proxy to believe.
    #[error("--client-address needs at least one --trusted-proxy: only their headers are believed")]
    ClientAddressWithoutProxy,
    /// Trusted proxies with nothing to read from their connections.
    #[error(
        "--trusted-proxy needs --client-address (proxy-protocol, x-forwarded-for or forwarded): \
         where the proxy's connections carry the client's address"
    )]
    ProxyWithoutClientAddress,
    /// Trusted proxies under plain SO_REUSEPORT.
    #[error("--client-address needs sticky dispatch (kernel or userspace), not --dispatch none")]
    ClientAddressDispatch,
    /// UDP addresses under userspace dispatch, which accepts TCP connections.
    #[error(
        "{0} needs kernel dispatch: --dispatch userspace accepts TCP connections, and UDP has \
         none"
    )]
    UdpDispatch(Listen),
    /// Trusted proxies without a TCP address to read their headers on.
    #[error(
        "--client-address reads TCP streams, and every listen address is UDP: give a TCP \
         address too, or drop --trusted-proxy and --client-address"
    )]
    ClientAddressWithoutTcp,
    /// `--quic` without a UDP address.
    #[error(
        "--quic routes UDP datagrams, and no listen address is UDP: add --listen udp://ADDR:PORT"
    )]
    QuicWithoutUdp,
    /// `--quic` without the program.
    #[error(
        "--quic needs --dispatch kernel (its program reads the connection IDs), got --dispatch {0}"
    )]
    QuicDispatch(DispatchMode),
    /// `--quic-cid-len` out of range.
    #[error("--quic-cid-len must be between 8 and 20, got {0}")]
    QuicCidLen(u8),
    /// A `--quic` option (named) without `--quic`.
    #[error("{0} is given without --quic: add --quic, or drop {0}")]
    WithoutQuic(&'static str),
    /// `--drain-timeout` out of range.
    #[error("--drain-timeout must be between 0 and 86400 seconds, got {0}")]
    DrainTimeout(f64),
    /// `--drain-idle` out of range.
    #[error("--drain-idle must be between 0.1 and 3600 seconds, got {0}")]
    DrainIdle(f64),
    /// `--client-address-timeout` out of range.
    #[error("--client-address-timeout must be between 0.1 and 300 seconds, got {0}")]
    ClientAddressTimeout(f64),
    /// The configuration file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration file is not valid.
    #[error("{}:{line}:{column}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What was expected.
        message: String,
    },
    /// An option cannot be merged with the file (TOML carries UTF-8 only).
    #[error("an option is not valid UTF-8 ({0})")]
    Unrepresentable(String),
    /// An environment variable sticky sets itself.
    #[error("--env {0}: sticky sets this variable for every worker itself")]
    ReservedVariable(String),
    /// In delay mode, the ready delay leaves no time before the ready timeout.
    #[error("--ready-delay ({delay} s) must be shorter than --ready-timeout ({timeout} s)")]
    ReadyDelayTooLong {
        /// The ready delay, in seconds.
        delay: f64,
        /// The ready timeout, in seconds.
        timeout: f64,
    },
    /// The worker command cannot be found or is not executable.
    #[error("worker command '{command}' {reason}")]
    Command {
        /// The command as given.
        command: String,
        /// What is wrong with it.
        reason: CommandProblem,
    },
}

/// What is wrong with a worker command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CommandProblem {
    /// A bare name that no PATH directory holds.
    #[error("was not found in PATH")]
    NotInPath,
    /// A path to something that is not an executable file.
    #[error("is not an executable file")]
    NotExecutable,
    /// A path to nothing.
    #[error("does not exist")]
    Missing,
}
