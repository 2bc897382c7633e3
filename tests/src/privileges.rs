//! What a process holds, read from /proc: its ids, groups and capability sets, its
//! environment, its open files, and the checks that a sticky worker holds nothing.

use std::collections::BTreeMap;

/// The fields of /proc/PID/status that say what a process may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// Real, effective, saved and filesystem uid.
    pub uid: Vec<u32>,
    /// Real, effective, saved and filesystem gid.
    pub gid: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// CapInh, CapPrm, CapEff, CapAmb, as hex masks.
    pub capabilities: BTreeMap<String, u64>,
    /// NoNewPrivs.
    pub no_new_privs: bool,
}

impl ProcStatus {
    /// Reads /proc/PID/status of a process on this host.
    pub fn of(pid: u32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/status: {err}"));
        Self::parse(&text)
    }

    /// Parses the text of a /proc/PID/status.
    pub fn parse(text: &str) -> Self {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
                .trim()
                .to_owned()
        };
        let ids = |name: &str| -> Vec<u32> {
            field(name).split_whitespace().map(|id| id.parse().expect("an id")).collect()
        };
        let capabilities = ["CapInh", "CapPrm", "CapEff", "CapAmb"]
            .into_iter()
            .map(|name| {
                let mask = u64::from_str_radix(&field(name), 16).expect("a hex mask");
                (name.to_owned(), mask)
            })
            .collect();
        Self {
            uid: ids("Uid"),
            gid: ids("Gid"),
            groups: ids("Groups"),
            capabilities,
            no_new_privs: field("NoNewPrivs") == "1",
        }
    }
}

/// Reads /proc/PID/environ of a process on this host, as `KEY=VALUE\0…`.
pub fn environ_of(pid: u32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/environ: {err}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Variables addressed to sticky itself, which a worker must never see (docs/operations.md,
/// "What a worker gets").
pub const LOADER_ONLY: [&str; 8] = [
    "FDSTORE",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "MAINPID",
    "SYSTEMD_EXEC_PID",
    "MEMORY_PRESSURE_WATCH",
    "STICKY_LOG",
    "WATCHDOG_USEC",
];

/// The `STICKY_*` variables sticky sets for a worker (docs/operations.md, "What a worker gets").
pub const WORKER_STICKY_VARIABLES: [&str; 3] =
    ["STICKY_WORKER", "STICKY_WORKERS", "STICKY_HANDOFF"];

/// Asserts that a worker runs as `uid` with exactly `groups` as its supplementary groups,
/// with every capability set empty and no_new_privs, and that `environ` (its
/// /proc/PID/environ) holds the variables sticky gives workers and none addressed to sticky.
pub fn assert_unprivileged_worker(status: &ProcStatus, uid: u32, groups: &[u32], environ: &str) {
    assert_eq!(status.uid, [uid; 4], "{status:?}");
    for (set, mask) in &status.capabilities {
        assert_eq!(*mask, 0, "the worker's {set} is {mask:016x}: {status:?}");
    }
    assert!(status.no_new_privs, "the worker may gain privileges: {status:?}");
    let mut expected = groups.to_vec();
    expected.sort_unstable();
    let mut actual = status.groups.clone();
    actual.sort_unstable();
    assert_eq!(actual, expected, "the worker's supplementary groups");
    let variables: BTreeMap<&str, &str> = environ
        .split('\0')
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| entry.split_once('='))
        .collect();
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "STICKY_WORKER", "STICKY_WORKERS"] {
        assert!(variables.contains_key(name), "the worker has no {name}: {variables:?}");
    }
    for name in variables.keys() {
        assert!(!LOADER_ONLY.contains(name), "the worker inherited {name}: {variables:?}");
        if name.starts_with("STICKY_") {
            assert!(
                WORKER_STICKY_VARIABLES.contains(name),
                "the worker inherited sticky's {name}: {variables:?}"
            );
        }
    }
}

/// How many file descriptors process `pid` holds open now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list fds").count()
}

/// The soft and hard "Max open files" of the text of a /proc/PID/limits.
pub fn open_files(limits: &str) -> (u64, u64) {
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let mut numbers = line["Max open files".len()..].split_whitespace().map(|n| n.parse().ok());
    (numbers.next().flatten().expect("soft"), numbers.next().flatten().expect("hard"))
}

/// Asserts that `systemd-analyze security UNIT` in `container` rates the unit's exposure at
/// most 3.0 (and prints the report, with each check that still fails, for the record).
pub fn assert_exposure_at_most_3(container: &crate::Container, unit: &str) {
    let report = container.ok(&["systemd-analyze", "security", "--no-pager", unit]);
    eprintln!("{report}");
    let exposure = overall_exposure(&report);
    assert!(exposure <= 3.0, "{unit}: exposure {exposure} > 3.0:\n{report}");
}

/// The overall exposure in `systemd-analyze security UNIT`'s last line
/// (`→ Overall exposure level for UNIT: 4.6 MEDIUM 😐`).
fn overall_exposure(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    let value = line.rsplit_once(':').expect("a colon").1.split_whitespace().next();
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number in {line:?}"))
}
