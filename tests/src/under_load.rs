//! Operations under load: `sticky reload` and `sticky upgrade` while [`crate::Load`] runs, with
//! what each must keep (no failure, no client moved) and change.

use std::{
    thread,
    time::{Duration, Instant},
};

use sticky_user::control::{Request, Response, Status};

use crate::Sticky;

impl Sticky {
    /// `sticky reload` under a load from 1000 addresses: no request fails (more than
    /// [`crate::MIN_SUCCEEDED`] succeed, some during the reload), every slot gets a new
    /// worker, no client moves. `server` is where the load goes; `what` names it in messages.
    pub fn reload_under_load(&self, server: std::net::SocketAddr, what: &str) {
        let (before, done, after) = self.under_load(server, what, Request::Reload);
        let restarted = format!("restarted {} workers", before.slots.len());
        assert!(matches!(&done, Response::Done { message } if *message == restarted), "{done:?}");
        for (old, new) in before.slots.iter().zip(&after.slots) {
            assert!(new.pid.is_some() && old.pid != new.pid, "slot {} was not restarted", old.slot);
        }
    }

    /// `sticky upgrade` (to the binary at the path it was started from) under a load from 1000
    /// addresses: it is upgraded in place, its workers kept, no request fails (some during
    /// it), and no client moves.
    pub fn upgrade_under_load(&self, server: std::net::SocketAddr, what: &str) {
        let (before, done, after) = self.under_load(server, what, Request::Upgrade);
        assert!(
            matches!(&done, Response::Done { message } if message.starts_with("upgraded in place")),
            "{what}: {done:?}\n{}",
            self.log()
        );
        assert_eq!(after.loader.upgrades, before.loader.upgrades + 1, "{what}");
        let pids = |status: &Status| status.slots.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(&after), pids(&before), "{what}: the workers were not kept");
    }

    /// `request` while [`crate::Load`] runs against `server`: no request fails, some complete
    /// during it, and no client moves. Returns the status before, the answer, the status after.
    fn under_load(
        &self,
        server: std::net::SocketAddr,
        what: &str,
        request: Request,
    ) -> (Status, Response, Status) {
        let before = self.status();
        let load = crate::Load::start(server, &crate::load_clients(), 4);
        thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let done = self.control(request);
        let during = (started, Instant::now());
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        report.assert_no_failure_during(what, during);
        for (client, seen) in report.workers_by_client() {
            assert!(seen.iter().all(|&w| w == seen[0]), "{what}: {client} moved: {seen:?}");
        }
        (before, done, self.status())
    }
}
