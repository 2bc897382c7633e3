//! `--quic` socket generations: a rolling restart, and scaling down, let the old workers drain
//! their connections on their own sockets while new connections reach the new workers; the
//! drain ends once the old sockets go quiet (`--drain-idle`), or at `--drain-timeout`. Real
//! quinn clients of `sticky-example-quic` workers, sticky as deployed.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use sticky_tests::{
    BinaryDir, Sticky, client_v4, eventually, in_netns, is_running,
    quic::{QuicClient, Served},
    target_bin,
};
use sticky_user::control::{QuicGeneration, Request, Response, Status};

const SERVER: &str = "127.0.0.1:4433";
const WORKERS: usize = 4;

fn server() -> SocketAddr {
    SERVER.parse().unwrap()
}

/// sticky (the binary at `binary`) with `--quic`, four example workers and `extra` options, all
/// ready.
fn start(binary: &Path, extra: &[&str]) -> Sticky {
    let example = target_bin("sticky-example-quic", "sticky-example-quic");
    let args = ["--listen", "udp://127.0.0.1:4433", "--quic", "-w", "4", "--ready", "notify"];
    let command = [&args[..], extra, &["--", example.to_str().unwrap()]].concat();
    let mut sticky = Sticky::start_binary(binary, &command);
    sticky.wait_until_serving(WORKERS);
    sticky
}

/// The generations `sticky status` shows: (slot, generation, pid, draining).
fn generations(status: &Status) -> Vec<(u32, u8, Option<u32>, bool)> {
    let quic = status.quic.as_ref().expect("sticky status shows QUIC");
    let row = |g: &QuicGeneration| (g.slot, g.generation, g.pid, g.draining_secs.is_some());
    quic.generations.iter().map(row).collect()
}

fn draining(status: &Status) -> Vec<(u32, u8, Option<u32>, bool)> {
    generations(status).into_iter().filter(|g| g.3).collect()
}

fn done(response: Response) -> String {
    match response {
        Response::Done { message } => message,
        other => panic!("{other:?}"),
    }
}

/// A client endpoint and its connections.
type Client = (QuicClient, Vec<Served>);

/// What the connections met while they kept exchanging.
#[derive(Debug, Default)]
struct Tally {
    exchanges: u64,
    /// Exchanges that failed, with why.
    broken: Vec<String>,
    /// Of those, connections a stateless reset ended.
    resets: u64,
    /// Answers from another worker than the connection's first.
    moved: u64,
}

/// Connections that exchange on their own threads (one per client) until stopped.
struct Exchanging {
    stop: Arc<AtomicBool>,
    /// Rounds done by the slowest client since the count was last reset.
    rounds: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<(Client, Tally)>>,
}

impl Exchanging {
    fn start(clients: Vec<Client>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut rounds = Vec::new();
        let threads = clients
            .into_iter()
            .map(|(client, connections)| {
                let (stop, done) = (stop.clone(), Arc::new(AtomicU64::new(0)));
                rounds.push(done.clone());
                thread::spawn(move || {
                    let mut tally = Tally::default();
                    let mut alive = vec![true; connections.len()];
                    while !stop.load(Relaxed) {
                        for ((connection, worker), alive) in connections.iter().zip(&mut alive) {
                            if !*alive {
                                continue;
                            }
                            tally.exchanges += 1;
                            match connection.exchange("still there") {
                                Ok(answer) => tally.moved += u64::from(answer != *worker),
                                Err(err) => {
                                    tally.resets += u64::from(err.is_reset());
                                    tally.broken.push(format!("{worker:?}: {err}"));
                                    *alive = false;
                                }
                            }
                        }
                        done.fetch_add(1, Relaxed);
                        thread::sleep(Duration::from_millis(50));
                    }
                    ((client, connections), tally)
                })
            })
            .collect();
        Self { stop, rounds, threads }
    }

    /// Waits until every client has done `n` more rounds.
    fn rounds(&self, n: u64) {
        let start: Vec<u64> = self.rounds.iter().map(|r| r.load(Relaxed)).collect();
        eventually("every client exchanged again", || {
            self.rounds.iter().zip(&start).all(|(r, start)| r.load(Relaxed) >= start + n)
        });
    }

    fn stop(self) -> (Vec<Client>, Tally) {
        self.stop.store(true, Relaxed);
        let mut total = Tally::default();
        let mut clients = Vec::new();
        for thread in self.threads {
            let (client, tally) = thread.join().unwrap();
            total.exchanges += tally.exchanges;
            total.broken.extend(tally.broken);
            total.resets += tally.resets;
            total.moved += tally.moved;
            clients.push(client);
        }
        (clients, total)
    }
}

/// New connections, one after another from ever new client addresses, until stopped: each
/// must be answered. Returns the workers (pids) that answered them, and the failures.
fn newcomers(first: u32, stop: Arc<AtomicBool>) -> JoinHandle<(Vec<u32>, Vec<String>)> {
    thread::spawn(move || {
        let (mut pids, mut failures) = (Vec::new(), Vec::new());
        let mut i = first;
        while !stop.load(Relaxed) {
            let client = QuicClient::bind(client_v4(i));
            match client.connect(server()).and_then(|c| {
                let answer = c.exchange("new");
                c.close();
                answer
            }) {
                Ok((_, pid)) => pids.push(pid),
                Err(err) => failures.push(err.to_string()),
            }
            i += 1;
            thread::sleep(Duration::from_millis(100));
        }
        (pids, failures)
    })
}

/// Closes every connection.
fn close_all(clients: &[Client]) {
    clients.iter().flat_map(|(_, connections)| connections).for_each(|(c, _)| c.close());
}

#[test]
fn a_rolling_restart_and_an_upgrade_break_no_connection_and_the_old_workers_drain() {
    in_netns(|| {
        let binary = BinaryDir::new("quic-generations");
        let sticky = start(&binary.sticky(), &["--drain-idle", "3"]);
        let before = sticky.status();
        let old_pids: Vec<u32> = before.slots.iter().filter_map(|s| s.pid).collect();
        assert_eq!(old_pids.len(), WORKERS);
        assert!(draining(&before).is_empty(), "{:?}", generations(&before));
        // 200 long-lived connections (20 client endpoints × 10) keep exchanging, and new
        // connections start throughout.
        let exchanging = Exchanging::start(sticky_tests::quic::connect_all(server(), 0, 20, 10));
        let stop_newcomers = Arc::new(AtomicBool::new(false));
        let newcomers = newcomers(1000, stop_newcomers.clone());
        exchanging.rounds(3);
        assert_eq!(done(sticky.control(Request::Reload)), "restarted 4 workers");
        // Each slot has a new worker on generation 1; its generation 0 drains on the old one.
        let after = sticky.status();
        let new_pids: Vec<u32> = after.slots.iter().filter_map(|s| s.pid).collect();
        assert!(new_pids.iter().all(|pid| !old_pids.contains(pid)), "{new_pids:?}");
        let expected: Vec<_> = (0..WORKERS as u32)
            .flat_map(|slot| {
                let index = slot as usize;
                [(slot, 1, Some(new_pids[index]), false), (slot, 0, Some(old_pids[index]), true)]
            })
            .collect();
        assert_eq!(generations(&after), expected);
        exchanging.rounds(5);
        // An upgrade in place while they drain: the new image goes on with the drains.
        assert!(done(sticky.control(Request::Upgrade)).starts_with("upgraded in place"));
        assert_eq!(draining(&sticky.status()).len(), WORKERS);
        exchanging.rounds(5);
        stop_newcomers.store(true, Relaxed);
        let (new_served, new_failed) = newcomers.join().unwrap();
        let (clients, tally) = exchanging.stop();
        assert!(
            tally.broken.is_empty(),
            "{} of {} broke: {:?}",
            tally.broken.len(),
            tally.exchanges,
            tally.broken
        );
        assert_eq!((tally.resets, tally.moved), (0, 0), "{tally:?}");
        assert!(new_failed.is_empty(), "new connections failed: {new_failed:?}");
        // New connections reached the new workers once the restart was done.
        let last = new_served.last().expect("new connections were served");
        assert!(new_pids.contains(last), "{last} not among {new_pids:?}");
        // Once their connections are closed, the old sockets go quiet: the old workers stop.
        close_all(&clients);
        eventually("the old generations drained", || draining(&sticky.status()).is_empty());
        eventually("the old workers exited", || !old_pids.iter().any(|&pid| is_running(pid)));
        let drained = "drained: its socket got no datagram for --drain-idle";
        assert_eq!(sticky.log().matches(drained).count(), WORKERS, "{}", sticky.log());
        sticky.stop_cleanly();
    });
}

#[test]
fn without_time_to_drain_a_restart_ends_the_old_connections_by_reset() {
    in_netns(|| {
        let sticky = start(&sticky_tests::sticky_bin(), &["--drain-timeout", "0"]);
        let clients = sticky_tests::quic::connect_all(server(), 0, 4, 5);
        assert_eq!(done(sticky.control(Request::Reload)), "restarted 4 workers");
        eventually("the old workers stopped", || draining(&sticky.status()).is_empty());
        // Their connections' datagrams now reach their slots' new workers, which reset them
        // (the slot's key): what the drain spares the connections above.
        for (_, connections) in &clients {
            for (connection, worker) in connections {
                let err = connection.exchange("after").expect_err("the old worker is gone");
                assert!(err.is_reset(), "{worker:?}: {err}");
            }
        }
        let fresh = sticky_tests::quic::connect_all(server(), 100, 4, 2);
        let new_pids: HashSet<u32> = sticky.status().slots.iter().filter_map(|s| s.pid).collect();
        for (_, connections) in &fresh {
            assert!(connections.iter().all(|(_, (_, pid))| new_pids.contains(pid)));
        }
        let timeout = "drained: --drain-timeout passed";
        assert_eq!(sticky.log().matches(timeout).count(), WORKERS, "{}", sticky.log());
        sticky.stop_cleanly();
    });
}

#[test]
fn scaling_down_lets_the_removed_workers_drain_beside_new_ones() {
    in_netns(|| {
        let sticky = start(&sticky_tests::sticky_bin(), &["--drain-idle", "3"]);
        let pids: Vec<u32> = sticky.status().slots.iter().filter_map(|s| s.pid).collect();
        let exchanging = Exchanging::start(sticky_tests::quic::connect_all(server(), 0, 16, 3));
        exchanging.rounds(2);
        assert_eq!(done(sticky.control(Request::Scale { workers: 2 })), "2 workers");
        let status = sticky.status();
        assert_eq!(status.slots.len(), 2);
        let removed = |status: &Status| -> Vec<(u32, u8, Option<u32>)> {
            draining(status).into_iter().map(|(slot, g, pid, _)| (slot, g, pid)).collect()
        };
        assert_eq!(removed(&status), [(2, 0, Some(pids[2])), (3, 0, Some(pids[3]))]);
        exchanging.rounds(3);
        // Back to four: slots 2 and 3 get new workers of generation 1 beside the draining ones.
        assert_eq!(done(sticky.control(Request::Scale { workers: 4 })), "4 workers");
        let mut sticky = sticky;
        sticky.wait_until_serving(WORKERS);
        let status = sticky.status();
        assert_eq!(removed(&status), [(2, 0, Some(pids[2])), (3, 0, Some(pids[3]))]);
        let current: Vec<_> = generations(&status).into_iter().filter(|g| !g.3).collect();
        assert_eq!(current.iter().map(|g| g.1).collect::<Vec<_>>(), [0, 0, 1, 1], "{current:?}");
        exchanging.rounds(3);
        let (clients, tally) = exchanging.stop();
        assert!(tally.broken.is_empty(), "{:?}", tally.broken);
        assert_eq!((tally.resets, tally.moved), (0, 0), "{tally:?}");
        close_all(&clients);
        eventually("the removed workers drained", || draining(&sticky.status()).is_empty());
        assert!(!is_running(pids[2]) && !is_running(pids[3]));
        sticky.stop_cleanly();
    });
}

#[test]
fn a_second_reload_ends_the_earlier_drain_and_spares_the_later_generation() {
    in_netns(|| {
        let sticky = start(&sticky_tests::sticky_bin(), &["--drain-idle", "30"]);
        let first: Vec<u32> = sticky.status().slots.iter().filter_map(|s| s.pid).collect();
        assert_eq!(done(sticky.control(Request::Reload)), "restarted 4 workers");
        // Connections of generation 1, made while generation 0 drains.
        let exchanging = Exchanging::start(sticky_tests::quic::connect_all(server(), 0, 12, 3));
        exchanging.rounds(2);
        assert_eq!(done(sticky.control(Request::Reload)), "restarted 4 workers");
        // Generation 0 ended (one draining generation per slot); 1 drains, 2 serves.
        let status = sticky.status();
        let drains: Vec<u8> = draining(&status).iter().map(|g| g.1).collect();
        assert_eq!(drains, [1; WORKERS], "{:?}", generations(&status));
        eventually("the first workers exited", || !first.iter().any(|&pid| is_running(pid)));
        exchanging.rounds(3);
        let (clients, tally) = exchanging.stop();
        assert!(tally.broken.is_empty(), "{:?}", tally.broken);
        assert_eq!((tally.resets, tally.moved), (0, 0), "{tally:?}");
        close_all(&clients);
        sticky.stop_cleanly();
    });
}
