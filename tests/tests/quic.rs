//! `--quic`: quinn clients of `sticky-example-quic` workers. A connection keeps its worker when
//! its client's address and port change, since the program routes it by connection ID, and
//! through an upgrade in place; a worker's `kill -9` breaks its connections only (its successor resets them, with the slot's
//! key); garbage is counted and routed by address, and breaks nothing.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
};

use sticky_tests::{
    BinaryDir, Sticky, client_v4, in_netns,
    quic::{QuicClient, Served},
    target_bin,
};
use sticky_user::control::{QuicStatus, Request, Response, Status};

const SERVER: &str = "127.0.0.1:4433";
const WORKERS: usize = 4;

fn example() -> PathBuf {
    target_bin("sticky-example-quic", "sticky-example-quic")
}

/// sticky with `--quic` and four example workers, all ready.
fn start() -> Sticky {
    start_binary(&sticky_tests::sticky_bin())
}

/// [`start`], from the sticky binary at `binary`.
fn start_binary(binary: &std::path::Path) -> Sticky {
    let example = example();
    let args = ["--listen", "udp://127.0.0.1:4433", "--quic", "-w", "4", "--ready", "notify"];
    let command = [&args[..], &["--", example.to_str().unwrap()]].concat();
    let mut sticky = Sticky::start_binary(binary, &command);
    sticky.wait_until_serving(WORKERS);
    sticky
}

fn server() -> SocketAddr {
    SERVER.parse().unwrap()
}

fn quic_status(status: &Status) -> QuicStatus {
    status.quic.clone().expect("sticky status shows the QUIC counters")
}

/// [`sticky_tests::quic::connect_all`] to the server.
fn connect_all(first: u32, clients: u32, per_client: usize) -> Vec<(QuicClient, Vec<Served>)> {
    sticky_tests::quic::connect_all(server(), first, clients, per_client)
}

#[test]
fn two_hundred_connections_keep_their_worker_when_their_clients_move() {
    in_netns(|| {
        let sticky = start();
        // 20 client endpoints with 10 connections each: a rebinding moves all ten.
        let clients = connect_all(0, 20, 10);
        let mut moved_by_address = 0;
        for (i, (client, connections)) in (0..).zip(&clients) {
            // A new port and a new address, as after a NAT rebinding or a migration.
            let old = client.local_addr();
            let new = client.rebind(Some(client_v4(1000 + i)));
            assert_ne!(old, new);
            for round in 0..5 {
                for (connection, worker) in connections {
                    let answer =
                        connection.exchange(&format!("moved {round}")).unwrap_or_else(|err| {
                            panic!("a connection broke after its client moved ({old} -> {new}): {err}; {:?}", sticky.status().quic)
                        });
                    assert_eq!(answer, *worker, "the connection moved to another worker");
                }
            }
            // Where the new address alone leads: a fresh connection goes by address.
            let fresh = client.connect(server()).expect("a connection from the new address");
            let (slot, _) = fresh.exchange("fresh").expect("answer");
            if connections.iter().any(|(_, (old_slot, _))| *old_slot != slot) {
                moved_by_address += 1;
            }
        }
        // Routing by address would have moved these clients' connections: the test could fail.
        assert!(moved_by_address > 0, "no client's new address led to another worker");
        let status = sticky.status();
        let quic = quic_status(&status);
        assert!(quic.routed > 0, "{quic:?}");
        let workers: HashMap<u32, u32> = clients
            .iter()
            .flat_map(|(_, connections)| connections.iter().map(|(_, worker)| *worker))
            .collect();
        assert!(workers.len() > 1, "every connection reached one worker: {workers:?}");
        sticky.stop_cleanly();
    });
}

#[test]
fn connections_keep_their_worker_through_an_upgrade_and_then_a_move() {
    in_netns(|| {
        let binary = BinaryDir::new("quic-upgrade");
        let sticky = start_binary(&binary.sticky());
        let clients = connect_all(0, 4, 5);
        let before = sticky.status();
        match sticky.control(Request::Upgrade) {
            Response::Done { message } => assert!(message.starts_with("upgraded in place")),
            other => panic!("{other:?}"),
        }
        // The program, its maps and the workers stayed: the connections go on, also once
        // their clients move, and the new image counts on.
        for (i, (client, connections)) in (0..).zip(&clients) {
            client.rebind(Some(client_v4(2000 + i)));
            for (connection, worker) in connections {
                assert_eq!(connection.exchange("after the upgrade").unwrap(), *worker);
            }
        }
        let after = sticky.status();
        assert_eq!(after.loader.upgrades, 1);
        assert!(quic_status(&after).routed > quic_status(&before).routed);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_killed_worker_breaks_its_own_connections_only() {
    in_netns(|| {
        let mut sticky = start();
        let clients = connect_all(0, 8, 5);
        let connections: Vec<&Served> =
            clients.iter().flat_map(|(_, connections)| connections).collect();
        let (_, (victim_slot, victim_pid)) = *connections[0];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        sticky.wait_for_workers(WORKERS + 1);
        // New connections are served meanwhile.
        let fresh = connect_all(100, 8, 2);
        assert_eq!(fresh.iter().map(|(_, c)| c.len()).sum::<usize>(), 16);
        let (mut broken, mut going_on) = (0, 0);
        for (connection, (slot, pid)) in connections.iter().map(|c| (&c.0, c.1)) {
            match connection.exchange("after the kill") {
                Ok(answer) => {
                    assert_ne!(slot, victim_slot, "a killed worker's connection went on");
                    assert_eq!(answer, (slot, pid));
                    going_on += 1;
                }
                Err(err) => {
                    assert_eq!(slot, victim_slot, "another worker's connection broke: {err}");
                    // The slot's new worker knew the slot's reset key.
                    assert!(err.is_reset(), "ended otherwise than by a stateless reset: {err}");
                    broken += 1;
                }
            }
        }
        let victims = connections.iter().filter(|(_, (slot, _))| *slot == victim_slot).count();
        assert_eq!((broken, going_on), (victims, connections.len() - victims));
        sticky.stop_cleanly();
    });
}

#[test]
fn garbage_is_counted_routed_by_address_and_breaks_nothing() {
    in_netns(|| {
        let sticky = start();
        let clients = connect_all(0, 4, 2);
        let before = sticky.status();
        let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
        let key = 0; // Not the loader's: every check below is wrong.
        let mut short_datagrams = 0;
        for n in 0u32..3000 {
            let datagram: Vec<u8> = match n % 5 {
                // Random bytes, of every length up to 64, QUIC bit or not.
                0 => (0..n % 64).map(|i| (n.wrapping_mul(2654435761) >> (i % 24)) as u8).collect(),
                // A short header whose CID has sticky's rotation bits and a wrong check.
                1 => {
                    let id = sticky_common::quic::ServerId { slot: (n % 4) as u8, generation: 0 };
                    let mut cid = sticky_common::quic::routing_octets(key, id, n as u8).to_vec();
                    cid[4] ^= 0x5a;
                    [&[0x40][..], &cid, &[0; 40]].concat()
                }
                // A truncated long header.
                2 => vec![0xc0, 0, 0, 0, 1, 20, 0x40],
                // A short header shorter than the program reads.
                3 => vec![0x40, 1, 2, 3],
                // A long header that claims 255 octets of CID.
                _ => [&[0xc0, 0, 0, 0, 1, 255][..], &[7; 60]].concat(),
            };
            short_datagrams += u64::from(n % 5 != 2 && n % 5 != 4);
            garbage.send_to(&datagram, server()).unwrap();
        }
        // Every connection goes on with its worker, and every worker is the one before.
        for (_, connections) in &clients {
            for (connection, worker) in connections {
                assert_eq!(connection.exchange("after the garbage").unwrap(), *worker);
            }
        }
        let after = sticky.status();
        let pids = |status: &Status| status.slots.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(&after), pids(&before), "a worker died");
        let (quic_before, quic_after) = (quic_status(&before), quic_status(&after));
        // Counted: short headers with a CID not sticky's, and datagrams too short to be QUIC
        // (a random one may look like a long header, which goes by address uncounted).
        let counted = quic_after.unroutable - quic_before.unroutable;
        assert!(counted >= short_datagrams / 2, "{counted} of {short_datagrams} counted");
        assert!(counted <= 3000, "{counted}");
        sticky.stop_cleanly();
    });
}

#[test]
fn the_example_worker_serves_by_address_without_quic() {
    in_netns(|| {
        // Without --quic the example has no key to mint CIDs with: it says so and serves with
        // quinn's random ones, which the program routes by address.
        let example = example();
        let args = ["--listen", "udp://127.0.0.1:4433", "-w", "2", "--ready", "notify"];
        let mut sticky = Sticky::start(&[&args[..], &["--", example.to_str().unwrap()]].concat());
        sticky.wait_until_serving(2);
        let client = QuicClient::bind(client_v4(0));
        let connection = client.connect(server()).expect("handshake");
        let (slot, _) = connection.exchange("hello").expect("answer");
        assert!(slot < 2, "slot {slot}");
        connection.close();
        let line = "not under sticky --quic: random connection IDs, routed by address only";
        assert_eq!(sticky.log().matches(line).count(), 2, "{}", sticky.log());
        sticky.stop_cleanly();
    });
}
