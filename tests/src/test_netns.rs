//! Private network namespaces per test.

use std::{fs, os::unix::fs::MetadataExt as _, process::Command, thread};

use nix::sched::{CloneFlags, unshare};

/// Runs `body` on a new thread inside a new network namespace with `lo` up and `fd00::/16`
/// routed to it, so clients can bind any address of 127.0.0.0/8 and `fd00::/16`. The namespace
/// disappears with the thread and every process started in it. Panics in `body` propagate.
pub fn in_netns<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    assert!(nix::unistd::geteuid().is_root(), "sticky's integration tests need root");
    thread::scope(|scope| {
        scope
            .spawn(|| {
                // Only this thread (and what it starts) moves to the new namespace.
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                ip(&["link", "set", "lo", "up"]);
                ip(&["-6", "route", "add", "local", "fd00::/16", "dev", "lo", "table", "local"]);
                body()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

/// Pids of the processes in the calling thread's network namespace (sticky, its workers and
/// anything they started), excluding this test process.
pub fn processes_in_netns() -> Vec<u32> {
    let ours = fs::metadata("/proc/thread-self/ns/net").expect("own netns").ino();
    let me = std::process::id();
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns.ino() == ours))
        .collect()
}
