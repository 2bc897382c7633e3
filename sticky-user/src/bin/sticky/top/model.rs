//! What `sticky top` shows, as pure functions of two status reads: one row per slot with its
//! rates, the header lines, sorting, and the plain table printed when stdout is no terminal.

use std::{cmp::Ordering, time::Instant};

use sticky_user::control::{SlotStatus, Status};

/// One status, and when it was read.
pub struct Reading {
    pub status: Status,
    pub at: Instant,
}

/// A slot as `sticky top` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub slot: u32,
    pub pid: Option<u32>,
    pub state: String,
    /// Connections per second since the previous read.
    pub rate: Option<f64>,
    pub queue: Option<u32>,
    pub share: Option<f64>,
    pub restarts: u32,
    pub uptime: Option<f64>,
    /// CPU use of the same worker since the previous read, in percent of one CPU.
    pub cpu: Option<f64>,
    pub rss: Option<u64>,
    pub status: String,
}

/// The columns, in the order shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Slot,
    Pid,
    State,
    Rate,
    Queue,
    Share,
    Restarts,
    Uptime,
    Cpu,
    Rss,
    Status,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Self::Slot,
        Self::Pid,
        Self::State,
        Self::Rate,
        Self::Queue,
        Self::Share,
        Self::Restarts,
        Self::Uptime,
        Self::Cpu,
        Self::Rss,
        Self::Status,
    ];

    /// Its heading.
    pub fn title(self) -> &'static str {
        match self {
            Self::Slot => "SLOT",
            Self::Pid => "PID",
            Self::State => "STATE",
            Self::Rate => "CONN/S",
            Self::Queue => "QUEUE",
            Self::Share => "SHARE",
            Self::Restarts => "RST",
            Self::Uptime => "UPTIME",
            Self::Cpu => "CPU%",
            Self::Rss => "RSS",
            Self::Status => "STATUS",
        }
    }

    /// Its width in characters (the last column takes what is left): 80 columns hold them all.
    pub fn width(self) -> u16 {
        match self {
            Self::Slot => 4,
            Self::Pid => 7,
            Self::State => 13,
            Self::Rate => 7,
            Self::Queue => 5,
            Self::Share => 5,
            Self::Restarts => 3,
            Self::Uptime => 6,
            Self::Cpu => 5,
            Self::Rss => 5,
            Self::Status => 0,
        }
    }

    /// The next column, for `s`.
    pub fn next(self) -> Column {
        let index = Self::ALL.iter().position(|&c| c == self).unwrap_or(0);
        Self::ALL[(index + 1) % Self::ALL.len()]
    }

    /// Whether it holds text, aligned left.
    pub fn is_text(self) -> bool {
        matches!(self, Self::State | Self::Status)
    }
}

/// The rows of `current`, with rates from `previous` (none at the first read).
pub fn rows(previous: Option<&Reading>, current: &Reading) -> Vec<Row> {
    let elapsed = previous.map(|p| current.at.duration_since(p.at).as_secs_f64());
    let before = |slot: &SlotStatus| {
        previous.and_then(|p| p.status.slots.iter().find(|s| s.slot == slot.slot))
    };
    current
        .status
        .slots
        .iter()
        .map(|slot| {
            let prior = before(slot);
            let per_second = |delta: f64| elapsed.filter(|&e| e > 0.0).map(|e| delta / e);
            let rate = prior
                .and_then(|p| per_second(slot.connections.saturating_sub(p.connections) as f64));
            // CPU time belongs to one worker: compare the same pid only.
            let cpu = prior.filter(|p| p.pid == slot.pid).and_then(|p| {
                let delta = slot.cpu_secs? - p.cpu_secs?;
                per_second(delta.max(0.0) * 100.0)
            });
            Row {
                slot: slot.slot,
                pid: slot.pid,
                state: state_of(slot),
                rate,
                queue: slot.queue,
                share: slot.table_share,
                restarts: slot.restarts,
                uptime: slot.uptime_secs,
                cpu,
                rss: slot.rss_bytes,
                status: slot.status.clone().unwrap_or_default(),
            }
        })
        .collect()
}

/// The slot's state; from a loader that does not report it, what `ready` and `in_table` say.
fn state_of(slot: &SlotStatus) -> String {
    match slot.state {
        Some(state) => state.to_string(),
        None if !slot.in_table => "ejected".into(),
        None if slot.ready => "ready".into(),
        None => "starting".into(),
    }
}

/// Sorts `rows` by `column`, descending if `descending`; ties by slot.
pub fn sort(rows: &mut [Row], column: Column, descending: bool) {
    rows.sort_by(|a, b| {
        let order = compare(a, b, column);
        let order = if descending { order.reverse() } else { order };
        order.then(a.slot.cmp(&b.slot))
    });
}

fn compare(a: &Row, b: &Row, column: Column) -> Ordering {
    let float = |x: Option<f64>, y: Option<f64>| {
        x.unwrap_or(f64::NEG_INFINITY).total_cmp(&y.unwrap_or(f64::NEG_INFINITY))
    };
    match column {
        Column::Slot => a.slot.cmp(&b.slot),
        Column::Pid => a.pid.cmp(&b.pid),
        Column::State => a.state.cmp(&b.state),
        Column::Rate => float(a.rate, b.rate),
        Column::Queue => a.queue.cmp(&b.queue),
        Column::Share => float(a.share, b.share),
        Column::Restarts => a.restarts.cmp(&b.restarts),
        Column::Uptime => float(a.uptime, b.uptime),
        Column::Cpu => float(a.cpu, b.cpu),
        Column::Rss => a.rss.cmp(&b.rss),
        Column::Status => a.status.cmp(&b.status),
    }
}

/// The row's cells, in the order of [`Column::ALL`]; `-` where nothing is known.
pub fn cells(row: &Row) -> [String; 11] {
    let or_dash = |cell: Option<String>| cell.unwrap_or_else(|| "-".into());
    [
        row.slot.to_string(),
        or_dash(row.pid.map(|p| p.to_string())),
        row.state.clone(),
        or_dash(row.rate.map(|r| format!("{r:.0}"))),
        or_dash(row.queue.map(|q| q.to_string())),
        or_dash(row.share.map(|s| format!("{:.1}%", s * 100.0))),
        row.restarts.to_string(),
        or_dash(row.uptime.map(duration)),
        or_dash(row.cpu.map(|c| format!("{c:.1}"))),
        or_dash(row.rss.map(bytes)),
        row.status.clone(),
    ]
}

/// The lines above the table: the loader, the addresses, the total rate, the last reload.
pub fn header(status: &Status, rows: &[Row], now_unix: u64) -> Vec<String> {
    let loader = &status.loader;
    let build: String = loader.build_id.chars().take(12).collect();
    let up = duration(now_unix.saturating_sub(loader.started_at_unix_secs) as f64);
    let total = match rows.iter().any(|r| r.rate.is_some()) {
        true => format!("{:.0} conn/s", rows.iter().filter_map(|r| r.rate).sum::<f64>()),
        false => "- conn/s".into(),
    };
    let reload = match &status.last_reload {
        Some(r) => {
            let outcome = if r.ok { "ok" } else { "FAILED" };
            let ago = duration(now_unix.saturating_sub(r.at_unix_secs) as f64);
            format!("last reload {ago} ago, {outcome}: {}", r.message)
        }
        None => "no reload yet".into(),
    };
    let running = rows.iter().filter(|r| r.pid.is_some()).count();
    vec![
        format!(
            "sticky {} (build {build}) · pid {} · up {up} · dispatch {}",
            loader.version, status.pid, status.dispatch
        ),
        format!("listen {}", status.listen.join(", ")),
        format!(
            "total {total} · {running}/{} workers · fallback {} · passed {}",
            rows.len(),
            status.fallback,
            status.passed
        ),
        reload,
    ]
}

/// The snapshot printed when stdout is no terminal: the header lines, then a table.
pub fn plain(header: &[String], rows: &[Row]) -> String {
    let mut out = header.join("\n");
    out.push('\n');
    let line = |cells: &[String]| {
        let mut line = String::new();
        for (column, cell) in Column::ALL.iter().zip(cells) {
            let width = usize::from(column.width());
            match (column, column.is_text()) {
                (Column::Status, _) => line.push_str(cell),
                (_, true) => line.push_str(&format!("{cell:<width$} ")),
                (_, false) => line.push_str(&format!("{cell:>width$} ")),
            }
        }
        line.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(&Column::ALL.map(|c| c.title().to_owned())));
    for row in rows {
        out.push_str(&line(&cells(row)));
    }
    out
}

/// A duration, short: `42s`, `5m07s`, `3h02m`, `4d03h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A size in bytes, short: `512K`, `12M`, `1.5G`.
pub fn bytes(n: u64) -> String {
    const K: u64 = 1024;
    match n {
        0..K => format!("{n}B"),
        K..1_048_576 => format!("{}K", n / K),
        1_048_576..1_073_741_824 => format!("{}M", n / 1_048_576),
        _ => format!("{:.1}G", n as f64 / 1_073_741_824.0),
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
