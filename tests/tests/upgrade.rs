//! `sticky upgrade`: the loader re-executes its binary in place under load, keeping workers,
//! sockets, program and counters. A binary someone else could have written, or one that cannot
//! take the state, is refused; one that fails to take over hands the loader back to the old
//! image, which goes on serving. Workers start from the loader's own image, whatever is at its
//! path.

use std::{
    fs,
    os::unix::fs::chown,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use sticky_tests::{BinaryDir, Failure, Load, Sticky, in_netns, load_clients, sticky_bin};
use sticky_user::{
    control::{self, Request, Response, Status},
    upgrade::STATE_VERSION,
};

/// The test double of a new sticky build (tests/src/bin/sticky-double.rs).
const DOUBLE: &str = env!("CARGO_BIN_EXE_sticky-double");

/// Puts the test double at `binary`'s path, doing `behaviour` (see the double).
fn install_double(binary: &BinaryDir, behaviour: &str) {
    fs::write(binary.dir().join("double"), behaviour).unwrap();
    binary.install(Path::new(DOUBLE));
}

fn pids(status: &Status) -> Vec<Option<u32>> {
    status.slots.iter().map(|slot| slot.pid).collect()
}

fn connections(status: &Status) -> Vec<u64> {
    status.slots.iter().map(|slot| slot.connections).collect()
}

/// The process name `ps` and `pgrep` show for `pid`.
fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_owned()
}

/// Runs `sticky upgrade` against `sticky`, expecting a one-line refusal that contains `reason`,
/// and checks that nothing changed and the refusal is kept.
fn assert_refused(sticky: &Sticky, before: &Status, reason: &str) {
    let upgrade = Command::new(sticky_bin())
        .args(["upgrade", "--control"])
        .arg(sticky.control_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&upgrade.stderr);
    assert!(!upgrade.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sticky: error: upgrade refused: "), "{stderr}");
    assert!(stderr.contains(reason), "{stderr} does not say {reason:?}");
    let after = sticky.status();
    assert_eq!(after.loader, before.loader, "a refused upgrade changed the loader");
    assert_eq!(pids(&after), pids(before));
    assert_eq!(after.program_ids, before.program_ids);
    let last = after.last_upgrade.expect("the refusal is kept");
    assert!(!last.ok && last.message.contains(reason), "{last:?}");
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
            assert_eq!(comm(after.pid), "sticky", "executed by fd, still named sticky");
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
fn a_binary_someone_else_could_have_written_is_refused_and_changes_nothing() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-unsafe");
        let mut sticky =
            Sticky::start_binary(&binary.sticky(), &["--listen", "127.0.0.1:3093", "-w", "2"]);
        sticky.wait_until_serving(2);
        let before = sticky.status();
        let (path, dir) = (binary.sticky(), binary.dir().to_path_buf());
        let path_text = path.display().to_string();
        binary.install(&sticky_bin());
        binary.chmod(&path, 0o775);
        assert_refused(&sticky, &before, &format!("{path_text} is writable by its group"));
        binary.chmod(&path, 0o757);
        assert_refused(&sticky, &before, &format!("{path_text} is writable by others"));
        binary.chmod(&path, 0o755);
        binary.chmod(&dir, 0o775);
        let in_dir = format!("{path_text} is in {}, which is writable by its group", dir.display());
        assert_refused(&sticky, &before, &in_dir);
        binary.chmod(&dir, 0o755);
        chown(&path, Some(65534), Some(65534)).unwrap();
        assert_refused(&sticky, &before, &format!("{path_text} is owned by uid 65534, not root"));
        binary.install_script("#!/bin/sh\nexec /bin/true\n");
        assert_refused(&sticky, &before, &format!("{path_text} is not an ELF executable"));
        // A real sticky, root's and only root's to write: the upgrade goes through.
        binary.install(&sticky_bin());
        assert!(matches!(sticky.control(Request::Upgrade), Response::Done { .. }));
        assert_eq!(sticky.status().loader.upgrades, 1);
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
            ("other-version", other_version.as_str()),
            ("not-sticky", "it does not answer `resume --probe`"),
            ("exit-3", "`resume --probe` failed (exit status: 3)"),
        ];
        for (behaviour, reason) in refusals {
            install_double(&binary, behaviour);
            assert_refused(&sticky, &before, reason);
        }
        // A real sticky at the path again: the upgrade goes through.
        binary.install(&sticky_bin());
        assert!(matches!(sticky.control(Request::Upgrade), Response::Done { .. }));
        assert_eq!(sticky.status().loader.upgrades, 1);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_binary_that_fails_to_take_over_hands_back_to_the_old_one_under_load() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-rollback");
        let mut sticky =
            Sticky::start_binary(&binary.sticky(), &["--listen", "127.0.0.1:3092", "-w", "4"]);
        sticky.wait_until_serving(4);
        let server = "127.0.0.1:3092".parse().unwrap();
        let before = sticky.status();
        let load = Load::start(server, &load_clients(), 4);
        thread::sleep(Duration::from_millis(500));
        // It answers the probe as sticky does, then cannot take over: no fd is free.
        install_double(&binary, "no-fds");
        let message = match sticky.control(Request::Upgrade) {
            Response::Error { message } => message,
            other => panic!("the failed upgrade answered {other:?}:\n{}", sticky.log()),
        };
        let (version, build) = (&before.loader.version, &before.loader.build_id[..12]);
        let path = binary.sticky().display().to_string();
        let start = format!("upgrade failed: {path}: sticky {version} (build ");
        let reason = "cannot take over: cannot copy inherited fd ";
        let errno = ": Too many open files (os error 24); ";
        let end = format!(
            "rolled back to sticky {version} (build {build}), pid {}, 4 workers kept",
            sticky.pid()
        );
        println!("{message}");
        assert!(message.starts_with(&start) && message.ends_with(&end), "{message}");
        assert!(message.contains(reason) && message.contains(errno), "{message}");
        let after = sticky.status();
        assert_eq!(after.pid, sticky.pid(), "the loader keeps its pid");
        assert_eq!(after.loader, before.loader, "the old image goes on as it was");
        assert_eq!(pids(&after), pids(&before), "the rollback changed a worker");
        assert_eq!(after.program_ids, before.program_ids);
        assert!(after.slots.iter().all(|slot| slot.ready && slot.in_table));
        let last = after.last_upgrade.expect("the failure is kept");
        assert!(!last.ok && last.message == message, "{last:?}");
        assert_eq!(comm(after.pid), "sticky");
        thread::sleep(Duration::from_millis(500));
        // The old image upgrades again as usual.
        binary.install(&sticky_bin());
        assert!(matches!(sticky.control(Request::Upgrade), Response::Done { .. }));
        assert_eq!(sticky.status().loader.upgrades, 1);
        assert_eq!(pids(&sticky.status()), pids(&before));
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        let refused = (report.failures().iter())
            .filter(|(_, failure)| matches!(failure, Failure::Connect(_)))
            .count();
        println!("{}; refused: {refused}", report.summary());
        assert!(report.failures().is_empty(), "{}", report.summary());
        assert!(report.succeeded() > 1000, "{}", report.summary());
        for (client, seen) in report.workers_by_client() {
            assert!(seen.iter().all(|&w| w == seen[0]), "{client} moved: {seen:?}");
        }
        let log = sticky.log();
        assert!(log.contains(&message), "{log}");
        assert_eq!(log.matches("worker started").count(), 4, "{log}");
        sticky.stop_cleanly();
    });
}

#[test]
fn workers_start_from_the_loaders_own_image_whatever_is_at_its_path() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-own-image");
        let path = binary.sticky();
        let mut sticky = Sticky::start_binary(&path, &["--listen", "127.0.0.1:3094", "-w", "2"]);
        sticky.wait_until_serving(2);
        let before = sticky.status();
        // Something else at the path, as a half-done package upgrade could leave it.
        binary.install_script("#!/bin/sh\nexit 1\n");
        assert!(
            matches!(sticky.control(Request::Reload), Response::Done { .. }),
            "{}",
            sticky.log()
        );
        let after = sticky.status();
        for (old, new) in pids(&before).iter().zip(pids(&after)) {
            assert!(new.is_some() && new != *old, "{before:?} -> {after:?}");
        }
        assert!(after.slots.iter().all(|slot| slot.ready && slot.in_table));
        for pid in pids(&after).into_iter().flatten() {
            // The demo worker: the loader's image, named by the path it was started from.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).take(2).collect();
            assert_eq!(args, [path.to_str().unwrap().as_bytes(), b"demo"]);
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(exe, PathBuf::from(format!("{} (deleted)", path.display())));
            assert_eq!(comm(pid), "sticky");
        }
        sticky.stop_cleanly();
    });
}

#[test]
fn sigusr2_upgrades_in_place_like_sticky_upgrade() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-sigusr2");
        let mut sticky =
            Sticky::start_binary(&binary.sticky(), &["--listen", "127.0.0.1:3093", "-w", "2"]);
        sticky.wait_until_serving(2);
        let before = sticky.status();
        binary.install(&sticky_bin());
        sticky.signal(nix::sys::signal::Signal::SIGUSR2);
        // A scale asked meanwhile (to the same count: it waits its turn, changes nothing) is
        // carried out, before the upgrade or by the new image, or refused, never left
        // unanswered by the exec.
        let control = sticky.control_path().to_owned();
        let scale =
            thread::spawn(move || control::request(&control, &Request::Scale { workers: 2 }));
        // Asked back to back through the exec, every status is answered (`status` panics
        // otherwise), by the old image or, from its queue, the new one.
        let mut asked = 0;
        while sticky.status().loader.upgrades == 0 {
            asked += 1;
            assert!(asked < 200_000, "no upgrade after {asked} status requests");
        }
        match scale.join().unwrap().expect("the scale's answer") {
            Response::Done { .. } => {}
            Response::Error { message } if message.contains("upgrading in place") => {}
            other => panic!("{other:?}"),
        }
        let after = sticky.status();
        let last = after.last_upgrade.clone().expect("the upgrade's outcome");
        assert!(last.ok && last.message.starts_with("upgraded in place"), "{last:?}");
        assert_eq!(after.pid, before.pid, "the loader keeps its pid");
        let pids = |status: &Status| status.slots.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(&after), pids(&before), "a worker was replaced");
        assert_eq!(after.program_ids, before.program_ids);
        sticky.stop_cleanly();
    });
}

#[test]
fn userspace_dispatch_upgrades_in_place_under_load() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-userspace");
        let args = ["--listen", "127.0.0.1:3091", "-w", "4", "--dispatch", "userspace"];
        let mut sticky = Sticky::start_binary(&binary.sticky(), &args);
        sticky.wait_until_serving(4);
        // The loader's accept loop stops, the connections it accepted reach their workers,
        // and the new image takes over the listeners and every slot's handoff pair.
        sticky.upgrade_under_load("127.0.0.1:3091".parse().unwrap(), "userspace upgrade");
        sticky.stop_cleanly();
    });
}
