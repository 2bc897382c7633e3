//! docs/deployment.md's several-hosts recipe, run by its own script (examples/cluster/cluster.sh):
//! three hosts, each a network namespace with its own sticky, behind a gateway namespace that
//! balances with nftables (`jhash ip saddr mod 256` into a bucket map filled like sticky's
//! table), and 1000 clients in a client namespace. Each client always reaches the same host and
//! worker; draining a host rewrites only its buckets and moves only its clients, with no failed
//! connection.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use sticky_tests::{Load, Netns, Response, Sticky, for_each_client, get, in_netns, sticky_bin};

const HOSTS: usize = 3;
const WORKERS: usize = 3;
const CLIENTS: u32 = 1000;
/// The host the test drains.
const DRAINED: usize = 2;
/// The service address the gateway balances (cluster.sh's VIP and PORT).
const SERVICE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 32, 0, 100)), 8080);

/// Where a client landed: (host, worker slot).
type Place = (usize, u32);

/// examples/cluster/cluster.sh, run for one cluster of namespaces named after this test.
struct Cluster {
    name: String,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster/cluster.sh")
    }

    /// `cluster.sh ARGS`, with its output; panics unless it succeeds.
    fn run(&self, args: &[&str]) -> String {
        let output = Command::new(Self::script())
            .args(args)
            .env("CLUSTER", &self.name)
            .env("STICKY", sticky_bin())
            .output()
            .expect("run cluster.sh (needs nft: `cargo xtask test` installs it)");
        assert!(
            output.status.success(),
            "cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn up(hosts: usize) -> Self {
        let cluster = Self { name: format!("sticky-{}", std::process::id()) };
        cluster.run(&["up", &hosts.to_string()]);
        cluster
    }

    fn netns(&self, suffix: &str) -> Netns {
        Netns::adopt(format!("{}-{suffix}", self.name))
    }

    /// The bucket map: bucket → host.
    fn buckets(&self) -> BTreeMap<u32, usize> {
        self.run(&["buckets"])
            .lines()
            .map(|line| {
                let (bucket, addr) = line.split_once(' ').expect(line);
                let host = addr.split('.').nth(2).and_then(|h| h.parse().ok()).expect(line);
                (bucket.parse().expect(line), host)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script()).arg("down").env("CLUSTER", &self.name).status();
    }
}

/// Client `i`: an address of 10.31.0.0/16, which only the client namespace has.
fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 31, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// Where each client lands, from two requests each on 4 threads; panics if one moved.
fn placements(
    clients: &[IpAddr],
    place: &(impl Fn(&Response) -> Place + Sync),
) -> HashMap<IpAddr, Place> {
    for_each_client(clients, 4, |client| {
        let first = place(&get(client, SERVICE));
        assert_eq!(place(&get(client, SERVICE)), first, "{client} moved");
        first
    })
}

#[test]
fn hosts_behind_an_nftables_balancer_keep_clients_and_drain_only_their_own() {
    in_netns(|| {
        let cluster = Cluster::up(HOSTS);
        let hosts: Vec<Netns> = (0..HOSTS).map(|h| cluster.netns(&format!("h{h}"))).collect();
        let client_ns = cluster.netns("client");
        let workers = WORKERS.to_string();
        let stickies: Vec<Sticky> = hosts
            .iter()
            .map(|host| {
                host.enter(|| {
                    Sticky::serving(&["--listen", "0.0.0.0:8080", "--workers", &workers], WORKERS)
                })
            })
            .collect();
        // A worker's pid tells its host (the hosts share the pid namespace).
        let host_of: HashMap<u32, usize> = stickies
            .iter()
            .enumerate()
            .flat_map(|(host, sticky)| {
                sticky.status().slots.into_iter().map(move |slot| (slot.pid.expect("pid"), host))
            })
            .collect();
        let place = |response: &Response| -> Place {
            let host = *host_of.get(&response.pid).unwrap_or_else(|| panic!("{response:?}"));
            (host, response.worker)
        };
        let clients: Vec<IpAddr> = (0..CLIENTS).map(client).collect();

        let (before, report, after, buckets_before, buckets_after) = client_ns.enter(|| {
            let before = placements(&clients, &place);
            let load = Load::start(SERVICE, &clients, 8);
            thread::sleep(Duration::from_secs(2));
            let buckets_before = cluster.buckets();
            cluster.run(&["drain", &DRAINED.to_string()]);
            let buckets_after = cluster.buckets();
            thread::sleep(Duration::from_secs(2));
            let report = load.stop();
            (before, report, placements(&clients, &place), buckets_before, buckets_after)
        });

        // Every host and every worker got clients.
        let mut per_place: BTreeMap<Place, usize> = BTreeMap::new();
        for &place in before.values() {
            *per_place.entry(place).or_default() += 1;
        }
        assert_eq!(per_place.len(), HOSTS * WORKERS, "{per_place:?}");

        // Draining rewrote exactly the drained host's buckets.
        assert_eq!(buckets_before.len(), 256);
        let rewritten: Vec<u32> = buckets_before
            .keys()
            .filter(|b| buckets_before[b] != buckets_after[b])
            .copied()
            .collect();
        let drained: Vec<u32> =
            buckets_before.iter().filter(|(_, h)| **h == DRAINED).map(|(b, _)| *b).collect();
        assert_eq!(rewritten, drained);

        // No connection failed, and under load each client stayed where it was, but the drained
        // host's clients, which moved once, to another host.
        assert_eq!(report.failures().len(), 0, "{}", report.summary());
        // A client's outcomes are in order (one load thread serves it).
        let mut moved: HashMap<IpAddr, bool> = HashMap::new();
        for outcome in &report.outcomes {
            let now = place(outcome.result.as_ref().expect("no failure"));
            let (client, was) = (outcome.client, before[&outcome.client]);
            let has_moved = moved.entry(client).or_default();
            if now == was {
                assert!(!*has_moved, "{client} moved back to {was:?}");
            } else {
                assert_eq!(was.0, DRAINED, "{client} moved from {was:?} to {now:?}");
                assert_eq!(now, after[&client], "{client} moved to {now:?}, then elsewhere");
                *has_moved = true;
            }
        }
        assert!(moved.values().any(|&m| m), "the load saw no drained client move");
        for client in &clients {
            let (was, now) = (before[client], after[client]);
            if was.0 == DRAINED {
                assert_ne!(now.0, DRAINED, "{client} still on the drained host");
            } else {
                assert_eq!(now, was, "{client} moved though its host was not drained");
            }
        }
        let moved_to: Vec<usize> = (0..HOSTS)
            .map(|h| before.keys().filter(|c| before[c].0 == DRAINED && after[c].0 == h).count())
            .collect();
        assert!(
            moved_to.iter().enumerate().all(|(h, &n)| (h == DRAINED) == (n == 0)),
            "{moved_to:?}"
        );

        for (host, sticky) in hosts.iter().zip(stickies) {
            host.enter(|| sticky.stop_cleanly());
        }
        eprintln!(
            "{CLIENTS} clients on (host, worker) {per_place:?}; load: {}; draining host \
             {DRAINED} rewrote {} of 256 buckets and moved its {} clients to hosts {moved_to:?}",
            report.summary(),
            rewritten.len(),
            moved_to.iter().sum::<usize>(),
        );
        drop(client_ns);
        drop(hosts);
    });
}
