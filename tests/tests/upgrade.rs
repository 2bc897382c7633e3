//! `sticky upgrade`: the loader re-executes its binary in place under load, keeping workers,
//! sockets, program and counters; a binary that cannot take the state is refused.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use sticky_tests::{Load, Sticky, in_netns, load_clients, sticky_bin};
use sticky_user::{
    control::{Request, Response, Status},
    upgrade::STATE_VERSION,
};

/// A directory the workers' user can read, holding a copy of the sticky binary that the test
/// may replace; removed on drop.
struct BinaryDir(PathBuf);

impl BinaryDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sticky-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let this = Self(dir);
        this.install(&sticky_bin());
        this
    }

    fn sticky(&self) -> PathBuf {
        self.0.join("sticky")
    }

    /// Puts a copy of `source` at the binary's path, as a package upgrade does (a new file
    /// renamed over the old one, which keeps running).
    fn install(&self, source: &Path) {
        let next = self.0.join("sticky.new");
        fs::copy(source, &next).unwrap();
        fs::set_permissions(&next, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&next, self.sticky()).unwrap();
    }

    /// Puts a shell script at the binary's path.
    fn install_script(&self, script: &str) {
        let source = self.0.join("script");
        fs::write(&source, script).unwrap();
        self.install(&source);
    }
}

impl Drop for BinaryDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn pids(status: &Status) -> Vec<Option<u32>> {
    status.slots.iter().map(|slot| slot.pid).collect()
}

fn connections(status: &Status) -> Vec<u64> {
    status.slots.iter().map(|slot| slot.connections).collect()
}

#[test]
fn three_upgrades_under_load_fail_no_connection_and_keep_every_worker() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-load");
        let mut sticky =
            Sticky::start_binary(&binary.sticky(), &["--listen", "127.0.0.1:3090", "-w", "4"]);
        sticky.wait_until_serving(4);
        let server = "127.0.0.1:3090".parse().unwrap();
        let first = sticky.status();
        let load = Load::start(server, &load_clients(), 4);
        let mut before = first.clone();
        for round in 1..=3 {
            thread::sleep(Duration::from_millis(500));
            // A new build at the path, as a package upgrade leaves it.
            binary.install(&sticky_bin());
            let message = match sticky.control(Request::Upgrade) {
                Response::Done { message } => message,
                other => panic!("upgrade {round} answered {other:?}:\n{}", sticky.log()),
            };
            assert!(message.starts_with("upgraded in place"), "{message}");
            let after = sticky.status();
            assert_eq!(after.pid, sticky.pid(), "the loader keeps its pid");
            assert_eq!(after.loader.upgrades, round);
            assert!(after.loader.started_at_unix_secs >= before.loader.started_at_unix_secs);
            assert_eq!(pids(&after), pids(&first), "upgrade {round} changed a worker");
            assert_eq!(after.program_ids, first.program_ids, "upgrade {round} changed the program");
            for (old, new) in connections(&before).iter().zip(connections(&after)) {
                assert!(new >= *old, "counters went back: {before:?} -> {after:?}");
            }
            assert!(after.slots.iter().all(|slot| slot.ready && slot.in_table));
            before = after;
        }
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        println!("{}", report.summary());
        assert!(report.failures().is_empty(), "{}", report.summary());
        assert!(report.succeeded() > 1000, "{}", report.summary());
        for (client, seen) in report.workers_by_client() {
            assert!(seen.iter().all(|&w| w == seen[0]), "{client} moved: {seen:?}");
        }
        let last = sticky.status();
        let counted: u64 = connections(&last).iter().sum();
        assert!(counted >= report.succeeded() as u64, "{counted} counted, {}", report.summary());
        assert_eq!(sticky.log().matches("worker started").count(), 4, "{}", sticky.log());
        sticky.stop_cleanly();
    });
}

#[test]
fn a_binary_that_cannot_take_the_state_is_refused_and_changes_nothing() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-refused");
        let mut sticky =
            Sticky::start_binary(&binary.sticky(), &["--listen", "127.0.0.1:3091", "-w", "2"]);
        sticky.wait_until_serving(2);
        let before = sticky.status();
        let other_version =
            format!("reads state versions [99], this loader writes {STATE_VERSION}");
        let refusals = [
            (
                // A sticky of another state version.
                "#!/bin/sh\necho '{\"version\":\"9.0.0\",\"build_id\":\"x\",\"state_versions\":[99]}'\n",
                other_version.as_str(),
            ),
            ("#!/bin/sh\necho 'not sticky'\n", "it does not answer `resume --probe`"),
            ("#!/bin/sh\nexit 3\n", "`resume --probe` failed (exit status: 3)"),
        ];
        for (script, reason) in refusals {
            binary.install_script(script);
            let upgrade = Command::new(sticky_bin())
                .args(["upgrade", "--control"])
                .arg(sticky.control_path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&upgrade.stderr);
            assert!(!upgrade.status.success(), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with("sticky: error: upgrade refused: "), "{stderr}");
            assert!(stderr.contains(reason), "{stderr}");
            let after = sticky.status();
            assert_eq!(after.loader, before.loader, "a refused upgrade changed the loader");
            assert_eq!(pids(&after), pids(&before));
            assert_eq!(after.program_ids, before.program_ids);
            let last = after.last_upgrade.expect("the refusal is kept");
            assert!(!last.ok && last.message.contains(reason), "{last:?}");
        }
        // A real sticky at the path again: the upgrade goes through.
        binary.install(&sticky_bin());
        assert!(matches!(sticky.control(Request::Upgrade), Response::Done { .. }));
        assert_eq!(sticky.status().loader.upgrades, 1);
        sticky.stop_cleanly();
    });
}
