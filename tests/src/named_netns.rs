//! Named network namespaces (`ip netns`), for tests that need more than one: clients, a
//! gateway, several hosts. Each is made by the test and deleted when dropped.

use std::{fs::File, process::Command, thread};

use nix::sched::{CloneFlags, setns};

/// A network namespace `ip netns add` made, deleted on drop (it lives on while processes
/// started in it do).
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named `sticky-<pid>-<label>`, with `lo` up.
    pub fn new(label: &str) -> Self {
        let netns = Self::adopt(format!("sticky-{}-{label}", std::process::id()));
        run_ip(&["netns", "add", &netns.name]);
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace `name`, made by someone else (a script the test ran), deleted on drop.
    pub fn adopt(name: String) -> Self {
        Self { name }
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` in it; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend(args);
        run_ip(&all);
    }

    /// Runs `body` on a new thread inside it: what the thread starts (processes, threads,
    /// sockets) belongs to this namespace. Panics in `body` propagate.
    pub fn enter<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open the namespace");
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                    body()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair: `here` in the calling thread's namespace with `here_addr`, `there` in `netns`
/// with `there_addr` (addresses with their prefix length), both up.
pub fn veth(here: &str, here_addr: &str, netns: &Netns, there: &str, there_addr: &str) {
    run_ip(&["link", "add", here, "type", "veth", "peer", "name", there, "netns", netns.name()]);
    run_ip(&["addr", "add", here_addr, "dev", here]);
    run_ip(&["link", "set", here, "up"]);
    netns.ip(&["addr", "add", there_addr, "dev", there]);
    netns.ip(&["link", "set", there, "up"]);
}

fn run_ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}
