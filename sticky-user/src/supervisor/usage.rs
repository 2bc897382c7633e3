//! What each worker uses, from `/proc/PID/stat`: CPU time and resident memory, for `sticky
//! status` and `/metrics`. One read per worker (stat has both, so `status` is not read), done
//! without the supervisor's lock.

use crate::endpoints::control::SlotStatus;

/// A process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Usage {
    /// User plus system time, in seconds.
    pub(super) cpu_secs: f64,
    /// Resident memory, in bytes.
    pub(super) rss_bytes: u64,
}

/// Fills each slot's `cpu_secs` and `rss_bytes` from its worker's `/proc/PID/stat`.
pub(super) fn fill(slots: &mut [SlotStatus]) {
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (ticks.max(1) as u64, page.max(1) as u64);
    for slot in slots {
        let Some(pid) = slot.pid else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        if let Some(usage) = stat.ok().and_then(|stat| parse(&stat, ticks, page)) {
            slot.cpu_secs = Some(usage.cpu_secs);
            slot.rss_bytes = Some(usage.rss_bytes);
        }
    }
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
    fn reads_this_process() {
        let mut slots = [SlotStatus { pid: Some(std::process::id()), ..Default::default() }];
        fill(&mut slots);
        assert!(slots[0].rss_bytes.is_some_and(|rss| rss > 0), "{slots:?}");
        assert!(slots[0].cpu_secs.is_some());
    }
}
