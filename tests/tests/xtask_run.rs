//! `cargo xtask run` as the README shows it: a real process tree (xtask → sticky → workers)
//! that a SIGTERM to xtask stops entirely, nothing left running or attached.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    client_v4, eventually, in_netns, processes_in_netns, reuseport_programs, target_bin, try_get,
};

/// The longest xtask may take to serve: it may build sticky in release first.
const START_LIMIT: Duration = Duration::from_secs(900);

#[test]
fn sigterm_to_cargo_xtask_run_stops_sticky_and_its_workers() {
    in_netns(|| {
        let server: SocketAddr = "127.0.0.1:3098".parse().unwrap();
        let before = reuseport_programs();
        let mut xtask = Command::new(target_bin("xtask", "xtask"))
            .args(["run", "--listen", "127.0.0.1:3098", "--workers", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cargo xtask run");
        let deadline = Instant::now() + START_LIMIT;
        while try_get(client_v4(1), server).is_err() {
            if let Some(status) = xtask.try_wait().expect("try_wait") {
                panic!("cargo xtask run exited ({status}) before serving");
            }
            assert!(Instant::now() < deadline, "cargo xtask run did not serve in time");
            thread::sleep(Duration::from_millis(200));
        }
        // xtask, sticky and both workers, in this test's namespace.
        let tree = processes_in_netns();
        assert!(tree.len() >= 4 && tree.contains(&xtask.id()), "processes: {tree:?}");
        let programs: Vec<u32> =
            reuseport_programs().into_iter().filter(|id| !before.contains(id)).collect();
        assert_eq!(programs.len(), 1, "sticky's program is not loaded");

        kill(Pid::from_raw(xtask.id() as i32), Signal::SIGTERM).expect("SIGTERM to xtask");
        let status = xtask.wait().expect("wait for xtask");
        assert!(status.success(), "cargo xtask run ended with {status}");
        eventually("nothing is left running", || processes_in_netns().is_empty());
        eventually("the program is unloaded", || {
            let now = reuseport_programs();
            programs.iter().all(|id| !now.contains(id))
        });
        assert!(try_get(client_v4(1), server).is_err(), "something still listens");
    });
}
