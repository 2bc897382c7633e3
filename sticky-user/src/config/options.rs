//! `sticky run`'s options, each defined once: the same struct is parsed from the command line
//! (clap), read from and written to the TOML file (serde, keys named like the flags), and
//! merged (flags over the file).

use std::{collections::BTreeMap, path::PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::{ConfigError, client_address::AddressSource, handoff::HandoffTransport};

/// `sticky run`'s options as the user gave them; `None` and empty mean "the default" (see
/// [`super::defaults`]).
#[derive(Debug, Default, Clone, PartialEq, Args, Deserialize, Serialize)]
// `None` is left out when written (TOML has no null), so only the options given appear.
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunOptions {
    /// TOML file with any of these options (keys named like the flags); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on, ADDR:PORT; repeat for several. On [::], IPv4 clients arrive
    /// v4-mapped and are hashed by their IPv4 address. [default: [::]:3000, dual-stack]
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// Number of worker processes, 1 to 128. [default: number of CPUs]
    #[arg(long, short = 'w', value_name = "N")]
    pub workers: Option<u32>,
    /// IPv4 prefix length that makes one client, e.g. 24 keeps a /24 on one worker. [default: 32]
    #[arg(long, value_name = "LEN")]
    pub prefix_v4: Option<u8>,
    /// IPv6 prefix length that makes one client. [default: 64]
    #[arg(long, value_name = "LEN")]
    pub prefix_v6: Option<u8>,
    /// Directory that keeps the hash seed across restarts. [default: /var/lib/sticky]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a worker may take to exit after SIGTERM before it is killed. [default: 10]
    #[arg(long, value_name = "SECS")]
    pub grace_period: Option<f64>,
    /// Who picks the worker. [default: kernel]
    #[arg(long, value_name = "MODE")]
    pub dispatch: Option<DispatchMode>,
    /// Worker exits within --crash-window that take the slot out of the table until its worker
    /// stays up. [default: 5]
    #[arg(long, value_name = "N")]
    pub crash_limit: Option<u32>,
    /// Seconds the crash limit counts exits in. [default: 30]
    #[arg(long, value_name = "SECS")]
    pub crash_window: Option<f64>,
    /// When a new worker counts as ready: `delay` (it stayed up for --ready-delay) or `notify`
    /// (it sent READY=1 to NOTIFY_SOCKET). [default: delay]
    #[arg(long, value_name = "MODE")]
    pub ready: Option<ReadyMode>,
    /// Seconds a worker must stay up to count as ready with `--ready delay` (a READY=1 before
    /// that counts too); shorter than --ready-timeout. [default: 1]
    #[arg(long, value_name = "SECS")]
    pub ready_delay: Option<f64>,
    /// Seconds a new worker may take to become ready, at start and on reload. [default: 30]
    #[arg(long, value_name = "SECS")]
    pub ready_timeout: Option<f64>,
    /// Seconds a slot may keep connections waiting without accepting one before its worker
    /// counts as hung (kernel dispatch); 0 turns it off. [default: 10]
    #[arg(long, value_name = "SECS")]
    pub hang_timeout: Option<f64>,
    /// Give workers WATCHDOG_USEC: one that stops sending WATCHDOG=1 for this many seconds
    /// counts as hung. [default: off]
    #[arg(long, value_name = "SECS")]
    pub worker_watchdog: Option<f64>,
    /// Control socket for `sticky status|reload|scale|stop|upgrade`. [default:
    /// /run/sticky/sticky.sock]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Extra environment variable for the workers, KEY=VALUE; repeat for several. Not one sticky
    /// sets itself (LISTEN_*, STICKY_WORKER(S), STICKY_HANDOFF, NOTIFY_SOCKET, WATCHDOG_*,
    /// NODE_CHANNEL_*). (In
    /// the file: an `[environment]` table.)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    #[serde(skip_serializing_if = "Vec::is_empty", with = "environment_table")]
    pub environment: Vec<(String, String)>,
    /// The workers' working directory.
    #[arg(long, value_name = "DIR")]
    pub working_directory: Option<PathBuf>,
    /// Run the workers as this user (name or uid), with its supplementary groups and without
    /// capabilities; sticky checks at start that it can execute the worker command.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Run the workers with this group (name or gid). [default: the user's primary group]
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Let workers run as root: without --user while sticky is root, or with --user root/0 or
    /// --group root/0. Needed whenever sticky is root or holds any capability.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub allow_root_workers: Option<bool>,
    /// A proxy or load balancer (ADDR or ADDR/LEN, repeatable) whose connections carry the
    /// client's address (see --client-address); no other peer's header is believed.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxy: Vec<String>,
    /// Where a trusted proxy's connections carry the client's address: a PROXY protocol header
    /// (v1 or v2), or the first HTTP request's X-Forwarded-For or Forwarded header.
    #[arg(long, value_name = "SOURCE")]
    pub client_address: Option<AddressSource>,
    /// Seconds a trusted proxy's connection may take to deliver that header. [default: 5]
    #[arg(long, value_name = "SECS")]
    pub client_address_timeout: Option<f64>,
    /// How connections the loader passes on reach the workers (with --dispatch userspace or
    /// --trusted-proxy only): `socket` (the sticky-handoff socket) or `node` (Node's IPC
    /// channel, NODE_CHANNEL_FD). [default: node when the worker program is node or nodejs]
    #[arg(long, value_name = "TRANSPORT")]
    pub handoff: Option<HandoffTransport>,
    /// Route QUIC by connection ID on the UDP addresses: a datagram whose destination CID a
    /// worker minted in sticky's layout (docs/quic.md) reaches that worker wherever the client
    /// moved; any other goes by the client's address.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub quic: Option<bool>,
    /// With --quic: the length of the workers' connection IDs, 8 to 20. [default: 20]
    #[arg(long, value_name = "LEN")]
    pub quic_cid_len: Option<u8>,
    /// With --quic: seconds a restarted or removed worker may keep serving its QUIC
    /// connections on its own socket before it gets SIGTERM. [default: 300]
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<f64>,
    /// With --quic: a draining worker whose socket got no datagram for this many seconds has
    /// no connection left (set it to the servers' QUIC idle timeout). [default: 30]
    #[arg(long, value_name = "SECS")]
    pub drain_idle: Option<f64>,
    /// Serve Prometheus metrics on PORT (127.0.0.1) or ADDR:PORT. [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// What sticky logs, and its program: at debug also each fallback, connection left to the
    /// kernel, unreadable address and unroutable QUIC datagram. STICKY_LOG overrides the
    /// loader's. [default: info]
    #[arg(long, value_name = "LEVEL")]
    // Left out when not given, so an upgrade's record stays readable by an image without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// Worker command; it finds its listening sockets at fd 3 (LISTEN_FDS). [default: sticky demo]
    #[arg(last = true, value_name = "CMD")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// Who picks the worker for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DispatchMode {
    /// sticky's eBPF program picks the client's worker, in the kernel.
    #[default]
    Kernel,
    /// sticky accepts each connection and passes it to the client's worker (no eBPF needed).
    Userspace,
    /// plain SO_REUSEPORT, the kernel's hash of the 4-tuple: not sticky, for comparison.
    None,
}

/// When a new worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyMode {
    /// Once it has stayed up for the ready delay.
    #[default]
    Delay,
    /// Once it sends READY=1 to its NOTIFY_SOCKET (itself or a child of it).
    Notify,
}

/// How much sticky logs (`--log-level`), the loader and its program alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// What the loader does (starts, stops, restarts, reloads, upgrades).
    #[default]
    Info,
    /// Also the program's exceptional paths, and the loader's details.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => Self::ERROR,
            LogLevel::Warn => Self::WARN,
            LogLevel::Info => Self::INFO,
            LogLevel::Debug => Self::DEBUG,
            LogLevel::Trace => Self::TRACE,
        }
    }
}

impl std::fmt::Display for DispatchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
            Self::None => "none",
        })
    }
}

impl RunOptions {
    /// These options with every option `over` gives replacing this one's (flags over a file);
    /// environment variables are merged, `over`'s winning.
    pub fn overlay(self, over: RunOptions) -> Result<RunOptions, ConfigError> {
        let config = over.config.clone().or(self.config.clone());
        let (mut base, over) = (table(&self)?, table(&over)?);
        for (key, value) in over {
            match (base.get_mut(&key), value) {
                (Some(toml::Value::Table(base)), toml::Value::Table(over)) => base.extend(over),
                (_, value) => {
                    base.insert(key, value);
                }
            }
        }
        let merged: RunOptions =
            toml::Value::Table(base).try_into().map_err(|err| unrepresentable(&err))?;
        Ok(RunOptions { config, ..merged })
    }
}

/// The options as a TOML table of the keys that are set.
fn table(options: &RunOptions) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(options).map_err(|err| unrepresentable(&err))
}

/// An option TOML cannot carry (a path that is not UTF-8).
fn unrepresentable(err: &dyn std::fmt::Display) -> ConfigError {
    ConfigError::Unrepresentable(err.to_string())
}

/// `--env KEY=VALUE`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((key.to_owned(), value.to_owned()))
}

/// The environment as the file's `[environment]` table, in key order.
mod environment_table {
    use std::collections::BTreeMap;

    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    pub fn serialize<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        pairs.iter().cloned().collect::<BTreeMap<_, _>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?.into_iter().collect())
    }
}

/// The environment as a map, later entries winning.
pub(super) fn environment_map(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let file = RunOptions {
            workers: Some(2),
            listen: vec!["[::]:80".into()],
            environment: vec![("A".into(), "1".into()), ("B".into(), "1".into())],
            ..Default::default()
        };
        let flags = RunOptions {
            workers: Some(3),
            environment: vec![("B".into(), "2".into())],
            config: Some("web.toml".into()),
            ..Default::default()
        };
        let merged = file.overlay(flags).unwrap();
        assert_eq!((merged.workers, merged.listen), (Some(3), vec!["[::]:80".to_string()]));
        assert_eq!(merged.environment, [("A".into(), "1".into()), ("B".into(), "2".into())]);
        assert_eq!(merged.config, Some("web.toml".into()));
    }

    #[test]
    fn options_read_back_from_the_file_they_are_written_as() {
        let options = RunOptions {
            workers: Some(4),
            dispatch: Some(DispatchMode::Userspace),
            allow_root_workers: Some(true),
            log_level: Some(LogLevel::Debug),
            environment: vec![("NODE_ENV".into(), "production".into())],
            command: vec!["node".into(), "app.js".into()],
            ..Default::default()
        };
        let text = toml::to_string(&options).unwrap();
        assert!(text.contains("dispatch = \"userspace\""), "{text}");
        assert!(text.contains("log-level = \"debug\""), "{text}");
        assert_eq!(toml::from_str::<RunOptions>(&text).unwrap(), options);
    }

    #[test]
    fn an_unset_log_level_stays_out_of_the_upgrade_record() {
        // An image without --log-level reads the options of one that was not given it.
        let json = serde_json::to_string(&RunOptions::default()).unwrap();
        assert!(!json.contains("log-level"), "{json}");
    }
}
