//! Least privilege where sticky is deployed: the unit `sticky install` writes, under a real
//! systemd booted in a container, workers as `nobody`. What the workers hold is read from
//! /proc; the unit's exposure is scored by `systemd-analyze security`.
//!
//! One test in its own binary: it is the only thing loading sk_reuseport programs while it runs.

use sticky_tests::{
    Container, eventually,
    privileges::{ProcStatus, assert_exposure_at_most_3, assert_unprivileged_worker, open_files},
};

const UNIT: &str = "sticky-web.service";
const CONTROL: &str = "/run/sticky/web/control.sock";

#[test]
fn the_unit_is_hardened_and_its_workers_hold_nothing() {
    let container = Container::boot();
    container.in_netns(|| {
        container.ok(&[
            "sticky",
            "install",
            "web",
            "--user",
            "nobody",
            "--listen",
            "[::]:80",
            "--workers",
            "2",
        ]);
        container.ok(&["systemctl", "start", UNIT]);
        eventually("the service serves with both workers", || {
            container.property(UNIT, "ActiveState") == "active"
                && container
                    .run(&["sticky", "status", "--json", "--control", CONTROL])
                    .status
                    .success()
                && container.sticky_status("sticky", CONTROL).slots.iter().all(|s| s.ready)
        });
        let journal = || container.journal(UNIT);

        assert_exposure_at_most_3(&container, UNIT);

        // The loader: its soft open-files limit raised to the unit's hard one.
        let loader: u32 = container.property(UNIT, "MainPID").parse().expect("MainPID");
        let limits = container.ok(&["cat", &format!("/proc/{loader}/limits")]);
        // LimitNOFILE=1024:65536, the hard limit capped by the container's own.
        let (loader_soft, loader_hard) = open_files(&limits);
        assert!(loader_hard > 1024, "{limits}");
        assert_eq!(loader_soft, loader_hard, "{limits}");

        // Every worker: no capability, nobody's groups, sticky's environment for workers only,
        // the limits of an ordinary process.
        let status = container.sticky_status("sticky", CONTROL);
        for slot in &status.slots {
            let pid = slot.pid.expect("a worker");
            let proc_status =
                ProcStatus::parse(&container.ok(&["cat", &format!("/proc/{pid}/status")]));
            let environ = container.ok(&["cat", &format!("/proc/{pid}/environ")]);
            let nobody_groups = container.ok(&["id", "-G", "nobody"]);
            let groups: Vec<u32> =
                nobody_groups.split_whitespace().map(|g| g.parse().expect("gid")).collect();
            assert_unprivileged_worker(&proc_status, 65534, &groups, &environ);
            let limits = container.ok(&["cat", &format!("/proc/{pid}/limits")]);
            assert_eq!(open_files(&limits), (1024, loader_hard), "worker {pid}:\n{limits}");
            assert!(!locked_memory_unlimited(&limits), "worker {pid}:\n{limits}");
        }

        // Files: the configuration and the seed are readable by root alone.
        let modes = container.ok(&[
            "stat",
            "-c",
            "%n %a %U",
            "/etc/sticky/web.toml",
            "/var/lib/sticky/web/seed",
            "/var/lib/sticky/web",
            CONTROL,
        ]);
        assert_eq!(
            modes.lines().collect::<Vec<_>>(),
            [
                "/etc/sticky/web.toml 600 root",
                "/var/lib/sticky/web/seed 600 root",
                "/var/lib/sticky/web 700 root",
                &format!("{CONTROL} 600 root"),
            ],
            "{}",
            journal()
        );
        container.ok(&["systemctl", "stop", UNIT]);
    });
}

/// Whether "Max locked memory" is unlimited in a /proc/PID/limits.
fn locked_memory_unlimited(limits: &str) -> bool {
    limits.lines().any(|l| l.starts_with("Max locked memory") && l.contains("unlimited"))
}
