//! The loader's log: tracing to stderr, filtered by `STICKY_LOG` if set, or else by
//! `--log-level` once the configuration is known (info until then).

use std::io::IsTerminal as _;

use tracing_subscriber::{
    EnvFilter, Registry, fmt, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};

/// The variable whose filter (tracing's `EnvFilter` syntax) overrides `--log-level`.
const STICKY_LOG: &str = "STICKY_LOG";

/// The installed log's filter, which [`LogFilter::set_level`] changes.
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    /// Whether `STICKY_LOG` chose the filter.
    from_environment: bool,
}

impl LogFilter {
    /// Installs the log, at `STICKY_LOG`'s filter or info.
    pub fn init() -> Self {
        let chosen = EnvFilter::try_from_env(STICKY_LOG);
        let from_environment = chosen.is_ok();
        let (filter, handle) = reload::Layer::new(chosen.unwrap_or_else(|_| "info".into()));
        let output =
            fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
        tracing_subscriber::registry().with(filter).with(output).init();
        Self { handle, from_environment }
    }

    /// Logs at `level` and above, unless `STICKY_LOG` chose.
    pub fn set_level(&self, level: tracing::Level) {
        if !self.from_environment {
            let _ = self.handle.reload(EnvFilter::new(directives(level)));
        }
    }
}

/// The filter of `--log-level LEVEL`: sticky's own messages (the loader's and the program's)
/// at `level`, the libraries' at info at most (aya's debug messages retell every relocation
/// of the object).
fn directives(level: tracing::Level) -> String {
    let level = level.as_str().to_ascii_lowercase();
    match level.as_str() {
        "debug" | "trace" => format!("info,sticky={level},sticky_user={level},sticky_ebpf={level}"),
        _ => level,
    }
}
