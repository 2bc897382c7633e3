//! UDP under a steady load of numbered datagrams from 1000 clients: a rolling restart, a
//! `kill -9` of each worker and a `sticky upgrade`. Every datagram is answered, unless the
//! kernel dropped it from a full socket queue (counted from /proc/net/udp, and 0 under this
//! modest load: one datagram in flight per load thread) or a killed worker had taken it;
//! no client moves.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    BinaryDir, Sticky, UdpLoad, UdpReport, eventually, in_netns, is_running, kernel_drops,
    load_clients,
};
use sticky_user::control::{Request, Response, Status};

const LOAD_THREADS: usize = 4;

/// Runs `event` (which returns its start and end) under the load against `port`; checks the
/// load went on through it and no client moved; returns what the load saw and the kernel's
/// drops.
fn under_load(
    port: u16,
    what: &str,
    event: impl FnOnce() -> (Instant, Instant),
) -> (UdpReport, u64) {
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let drops_before = kernel_drops(port);
    let load = UdpLoad::start(server, &load_clients(), LOAD_THREADS);
    thread::sleep(Duration::from_secs(1));
    let span = event();
    thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let drops = kernel_drops(port) - drops_before;
    let during = report.sent_within(span);
    println!("{what}: {}; {drops} dropped by the kernel; {during} during it", report.summary());
    assert!(report.answered.len() > 1000, "{what}: too little load: {}", report.summary());
    assert!(during > 0, "{what}: no datagram answered during it: {}", report.summary());
    report.assert_no_client_moved(what);
    (report, drops)
}

/// Every datagram answered or dropped by the kernel, and none dropped.
fn assert_all_answered(what: &str, report: &UdpReport, drops: u64) {
    let (sent, answered) = (report.sent.len() as u64, report.answered.len() as u64);
    assert_eq!(answered + drops, sent, "{what}: {}", report.summary());
    assert_eq!(drops, 0, "{what}: the queues overflowed under a modest load");
}

fn pids(status: &Status) -> Vec<Option<u32>> {
    status.slots.iter().map(|slot| slot.pid).collect()
}

#[test]
fn a_rolling_restart_under_a_datagram_load_answers_every_datagram() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "udp://127.0.0.1:5100", "-w", "4"], 4);
        let before = sticky.status();
        let (report, drops) = under_load(5100, "a rolling restart", || {
            let started = Instant::now();
            let done = sticky.control(Request::Reload);
            assert!(
                matches!(&done, Response::Done { message } if message == "restarted 4 workers"),
                "{done:?}"
            );
            (started, Instant::now())
        });
        assert_all_answered("a rolling restart", &report, drops);
        let after = sticky.status();
        for (old, new) in pids(&before).iter().zip(pids(&after)) {
            assert!(new.is_some() && *old != new, "a slot was not restarted");
        }
        sticky.stop_cleanly();
    });
}

#[test]
fn a_killed_worker_loses_at_most_the_datagram_it_held_and_its_clients_stay() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "udp://127.0.0.1:5101", "-w", "4"], 4);
        // Each kill: its slot, and from just before the signal until the worker is gone.
        let mut kills: Vec<(u32, Instant, Instant)> = Vec::new();
        let (report, drops) = under_load(5101, "a kill -9 of each worker", || {
            let started = Instant::now();
            for slot in 0..4u32 {
                let pid = sticky.status().slots[slot as usize].pid.expect("a worker");
                let sent = Instant::now();
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
                eventually("the killed worker is gone", || !is_running(pid));
                kills.push((slot, sent, Instant::now()));
                eventually("its slot serves again", || {
                    let now = &sticky.status().slots[slot as usize];
                    now.pid.is_some_and(|new| new != pid) && now.ready
                });
                thread::sleep(Duration::from_millis(300));
            }
            (started, Instant::now())
        });
        assert_eq!(drops, 0, "the queues overflowed under a modest load");
        // What the killed worker had read but not answered dies with it: at most one datagram
        // per kill (the demo answers one at a time), of a client of the killed slot, sent
        // before the worker was gone. Everything else is answered, by the client's own slot.
        let slots = report.assert_no_client_moved("a kill -9");
        let mut lost_per_kill = vec![0; kills.len()];
        for (sequence, sent) in report.unanswered() {
            let slot = slots.get(&sent.client);
            let kill = kills.iter().position(|&(killed, _, gone)| {
                slot.is_none_or(|&s| s == killed) && sent.at <= gone
            });
            let kill = kill.unwrap_or_else(|| {
                panic!("datagram {sequence} of {sent:?} (slot {slot:?}) lost outside any kill")
            });
            lost_per_kill[kill] += 1;
        }
        println!("lost per kill: {lost_per_kill:?}");
        assert!(lost_per_kill.iter().all(|&lost| lost <= 1), "{lost_per_kill:?}");
        let exit = sticky.stop_cleanly();
        assert!(exit.log.matches("worker exited").count() >= 4, "{}", exit.log);
    });
}

#[test]
fn an_upgrade_under_a_datagram_load_answers_every_datagram_and_keeps_the_workers() {
    in_netns(|| {
        let binary = BinaryDir::new("udp-upgrade");
        let args = ["--listen", "udp://127.0.0.1:5102", "--listen", "127.0.0.1:5102", "-w", "4"];
        let mut sticky = Sticky::start_binary(&binary.sticky(), &args);
        sticky.wait_until_serving(4);
        let before = sticky.status();
        let (report, drops) = under_load(5102, "sticky upgrade", || {
            let started = Instant::now();
            let done = sticky.control(Request::Upgrade);
            assert!(
                matches!(&done, Response::Done { message } if message.starts_with("upgraded in place")),
                "{done:?}\n{}",
                sticky.log()
            );
            (started, Instant::now())
        });
        assert_all_answered("sticky upgrade", &report, drops);
        let after = sticky.status();
        assert_eq!(after.loader.upgrades, before.loader.upgrades + 1);
        assert_eq!(pids(&after), pids(&before), "the workers were not kept");
        assert_eq!(after.pid, before.pid, "not upgraded in place");
        // The handed-over sockets still form one group each: a second upgrade, and TCP.
        let (report, drops) = under_load(5102, "a second sticky upgrade", || {
            let started = Instant::now();
            assert!(matches!(sticky.control(Request::Upgrade), Response::Done { .. }));
            (started, Instant::now())
        });
        assert_all_answered("a second sticky upgrade", &report, drops);
        sticky_tests::get(sticky_tests::client_v4(1), "127.0.0.1:5102".parse().unwrap());
        sticky.stop_cleanly();
    });
}

#[test]
fn a_worker_that_reads_no_datagram_is_found_hung_and_replaced() {
    in_netns(|| {
        // Workers that never read: `sleep`. The hang check peeks at the head of each slot's
        // queue; one that stays put for the hang timeout is a hung worker.
        let args = ["--listen", "udp://127.0.0.1:5090", "-w", "2", "--hang-timeout", "1"];
        let sticky = Sticky::serving(&[&args[..], &["--", "/bin/sleep", "3600"]].concat(), 2);
        let before: Vec<Option<u32>> = sticky.status().slots.iter().map(|s| s.pid).collect();
        // Datagrams for one slot only: the first client's.
        let server = SocketAddr::from(([127, 0, 0, 1], 5090));
        let client = sticky_tests::udp_client(sticky_tests::client_v4(0));
        for sequence in 0..20 {
            client.send_to(format!("unread {sequence}").as_bytes(), server).expect("send");
        }
        let waiting = eventually_slot_with_datagrams(&sticky);
        eventually("the slot whose queue does not move is found hung", || {
            sticky.status().slots[waiting].hangs >= 1
        });
        let after = sticky.status();
        assert_ne!(after.slots[waiting].pid, before[waiting], "the hung worker was not replaced");
        let idle = 1 - waiting;
        assert_eq!(after.slots[idle].hangs, 0, "a slot with nothing waiting counted as hung");
        assert_eq!(after.slots[idle].pid, before[idle]);
        assert!(sticky.log().contains("worker is hung"), "{}", sticky.log());
        sticky.stop_cleanly();
    });
}

/// The slot the program gave datagrams to (its counter moved).
fn eventually_slot_with_datagrams(sticky: &Sticky) -> usize {
    let mut slot = None;
    eventually("the program selected a slot", || {
        slot = sticky.status().slots.iter().position(|s| s.connections > 0);
        slot.is_some()
    });
    slot.expect("a slot")
}
