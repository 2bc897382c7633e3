//! What each worker uses, from `/proc/PID/stat`: CPU time and resident memory, for `sticky
//! status` and `/metrics`. One read per worker (stat has both, so `status` is not read).
//!
//! A task reads them every [`PERIOD`] on a blocking thread, without the supervisor's lock, and
//! keeps them by pid: a status (a scrape) only looks them up. Reading 128 workers' stat files
//! costs about as much as the rest of a scrape several times over; so the figures may be up to
//! a period old.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::state::State;
use crate::{endpoints::control::SlotStatus, sync::lock};

/// How often the workers' usage is read.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

/// The last usage read of each worker, by pid.
pub(super) type Usages = Arc<Mutex<HashMap<u32, Usage>>>;

/// Reads every worker's usage each [`PERIOD`] into `usages`, until the loader stops.
pub(super) async fn watch(shared: Arc<Mutex<State>>, usages: Usages) {
    loop {
        let pids: Vec<u32> = {
            let state = lock(&shared);
            if state.stopping {
                return;
            }
            state.slots.iter().filter_map(|slot| Some(slot.worker.as_ref()?.pid)).collect()
        };
        let read = tokio::task::spawn_blocking(move || {
            let (ticks, page) = units();
            pids.into_iter().filter_map(|pid| Some((pid, read(pid, ticks, page)?))).collect()
        });
        if let Ok(read) = read.await {
            *lock(&usages) = read;
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// A process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Usage {
    /// User plus system time, in seconds.
    pub(super) cpu_secs: f64,
    /// Resident memory, in bytes.
    pub(super) rss_bytes: u64,
}

/// Fills each slot's `cpu_secs` and `rss_bytes` from the last read of its worker.
pub(super) fn fill(slots: &mut [SlotStatus], usages: &Usages) {
    let usages = lock(usages);
    for slot in slots {
        if let Some(usage) = slot.pid.and_then(|pid| usages.get(&pid)) {
            slot.cpu_secs = Some(usage.cpu_secs);
            slot.rss_bytes = Some(usage.rss_bytes);
        }
    }
}

/// Clock ticks per second and the page size.
fn units() -> (u64, u64) {
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    (ticks.max(1) as u64, page.max(1) as u64)
}

/// Process `pid`'s usage, if it still runs.
fn read(pid: u32, ticks: u64, page: u64) -> Option<Usage> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?, ticks, page)
}

/// The usage in a `/proc/PID/stat` line, given the clock ticks per second and the page size.
/// The command name (field 2) may hold spaces and parentheses: fields are counted after its
/// last `)`.
pub(super) fn parse(stat: &str, ticks: u64, page: u64) -> Option<Usage> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3]: utime 14, stime 15, rss 24 (pages).
    let number = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime, rss) = (number(14)?, number(15)?, number(24)?);
    Some(Usage { cpu_secs: (utime + stime) as f64 / ticks as f64, rss_bytes: rss * page })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_memory_after_an_awkward_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 \
                    123 456789 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let usage = parse(stat, 100, 4096).unwrap();
        assert_eq!(usage, Usage { cpu_secs: 3.0, rss_bytes: 300 * 4096 });
        assert_eq!(parse("4242 (truncated) S 1", 100, 4096), None);
    }

    #[test]
    fn reads_this_process_and_fills_its_slot() {
        let (ticks, page) = units();
        let pid = std::process::id();
        let usage = read(pid, ticks, page).unwrap();
        assert!(usage.rss_bytes > 0, "{usage:?}");
        let usages: Usages = Arc::new(Mutex::new([(pid, usage)].into()));
        let mut slots = [
            SlotStatus { pid: Some(pid), ..Default::default() },
            SlotStatus { pid: Some(pid + 1), ..Default::default() },
        ];
        fill(&mut slots, &usages);
        assert_eq!(slots[0].cpu_secs, Some(usage.cpu_secs));
        assert_eq!(slots[0].rss_bytes, Some(usage.rss_bytes));
        assert_eq!(slots[1].rss_bytes, None, "an unread worker has none");
    }
}
