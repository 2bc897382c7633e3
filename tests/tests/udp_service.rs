//! UDP under a real systemd: `sticky install` with a UDP listen address, its sockets kept in
//! systemd's fd store, and `systemctl restart` under a datagram load: the sockets never close,
//! so datagrams sent while the loader and its workers restart wait in their client's queue and
//! are answered by the next workers, and every client stays on its slot.
//!
//! One test in its own binary: it is the only thing loading sk_reuseport programs while it runs.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use sticky_tests::{Container, client_v4, eventually};

const UNIT: &str = "sticky-dns.service";
const APP: &str = "/usr/local/bin/app";
const PORT: u16 = 5353;

/// The slot that answers `client`'s datagram `payload`, from a new socket (a new source port).
fn ask(client: IpAddr, payload: &str) -> Option<u32> {
    let socket = UdpSocket::bind(SocketAddr::new(client, 0)).expect("bind a client");
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(payload.as_bytes(), SocketAddr::from(([127, 0, 0, 1], PORT))).ok()?;
    let mut answer = [0u8; 256];
    let length = socket.recv(&mut answer).ok()?;
    let text = std::str::from_utf8(&answer[..length]).ok()?;
    // The demo answers "worker: N <payload>".
    let rest = text.strip_prefix("worker: ")?;
    let (slot, echoed) = rest.split_once(' ')?;
    (echoed == payload).then(|| slot.parse().ok()).flatten()
}

/// Datagrams the kernel dropped on the UDP sockets bound to `port` in this thread's network
/// namespace (a full receive queue): the `drops` column of /proc/net/udp.
fn kernel_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/thread-self/net/udp").expect("read net/udp");
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(1).is_some_and(|local| local.ends_with(&port)))
        .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Each of `clients` asks once: its slot.
fn slots_of(clients: &[IpAddr]) -> HashMap<IpAddr, u32> {
    clients
        .iter()
        .map(|&client| {
            (client, ask(client, "probe").unwrap_or_else(|| panic!("{client}: no answer")))
        })
        .collect()
}

#[test]
fn udp_sockets_live_in_the_fd_store_and_a_restart_loses_no_datagram() {
    let container = Container::boot();
    container.in_netns(|| {
        container
            .sh(&format!("printf '#!/bin/sh\\nexec sticky demo\\n' > {APP} && chmod 755 {APP}"));
        let listen = format!("udp://127.0.0.1:{PORT}");
        let args = ["install", "dns", "--user", "nobody", "--listen", &listen, "--workers", "3"];
        container.ok(&[&["sticky"][..], &args, &["--", APP]].concat());
        container.ok(&["systemctl", "start", UNIT]);
        let clients: Vec<IpAddr> = (0..200).map(client_v4).collect();
        eventually("the service answers datagrams", || ask(clients[0], "hello").is_some());
        let before = slots_of(&clients);
        let mut served = [0; 3];
        for &slot in before.values() {
            served[slot as usize] += 1;
        }
        assert!(served.iter().all(|&n| n > 0), "an idle worker: {served:?}");
        // A socket per slot, and the program's socket array.
        assert_eq!(
            container.property(UNIT, "NFileDescriptorStore"),
            "4",
            "{}",
            container.journal(UNIT)
        );

        // Datagrams from 10 clients, one every 50 ms each (what waits through the restart fits
        // the sockets' queues), for 6 s with the restart in the middle; each is answered by its
        // client's slot, some only once the new workers run.
        let senders: Vec<IpAddr> = clients[..10].to_vec();
        let sending = AtomicBool::new(true);
        let (sent, answered, moved) = thread::scope(|scope| {
            let loads: Vec<_> = senders
                .iter()
                .map(|&client| {
                    let (sending, expected) = (&sending, before[&client]);
                    scope.spawn(move || {
                        let socket = UdpSocket::bind(SocketAddr::new(client, 0)).unwrap();
                        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let server = SocketAddr::from(([127, 0, 0, 1], PORT));
                        let (mut sent, mut answers, mut moved) = (0u32, Vec::new(), 0);
                        let mut buffer = [0u8; 256];
                        let mut receive = |answers: &mut Vec<String>, moved: &mut u32| {
                            while let Ok(length) = socket.recv(&mut buffer) {
                                let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                                if !text.starts_with(&format!("worker: {expected} ")) {
                                    *moved += 1;
                                }
                                answers.push(text);
                            }
                        };
                        while sending.load(Ordering::Relaxed) && sent < 4000 {
                            socket.send_to(format!("seq {sent}").as_bytes(), server).unwrap();
                            sent += 1;
                            receive(&mut answers, &mut moved);
                        }
                        // The last answers, once the new workers serve.
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while answers.len() < sent as usize && Instant::now() < deadline {
                            receive(&mut answers, &mut moved);
                        }
                        (sent, answers.len() as u32, moved)
                    })
                })
                .collect();
            let start = Instant::now();
            thread::sleep(Duration::from_secs(2));
            container.ok(&["systemctl", "restart", UNIT]);
            thread::sleep(Duration::from_secs(6).saturating_sub(start.elapsed()));
            sending.store(false, Ordering::Relaxed);
            loads.into_iter().map(|load| load.join().unwrap()).fold((0, 0, 0), |total, part| {
                (total.0 + part.0, total.1 + part.1, total.2 + part.2)
            })
        });
        let journal = container.journal(UNIT);
        assert!(journal.contains("adopted listening sockets"), "{journal}");
        let dropped = kernel_drops(PORT);
        println!(
            "systemctl restart: {sent} datagrams sent, {answered} answered, {dropped} dropped by \
             the kernel (queue full), {moved} answered by another slot"
        );
        assert!(sent > 500, "too little load: {sent}");
        assert_eq!(u64::from(answered) + dropped, u64::from(sent), "datagrams lost otherwise");
        assert_eq!(dropped, 0, "the queues overflowed: the load is too heavy for the test");
        assert_eq!(moved, 0, "answers from another slot");
        assert_eq!(slots_of(&clients), before, "clients moved");
        container.ok(&["systemctl", "stop", UNIT]);
    });
}
