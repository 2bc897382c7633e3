//! What `cargo xtask dist` makes, as an operator installs it: the Debian package in a fresh
//! Debian with no Rust under a real systemd (dpkg, `sticky install`, an instance of the
//! template unit serving, upgraded in place by a second `dpkg -i`, `dpkg -r`), and the static
//! binary serving the demo on the host.

use std::{
    collections::HashSet,
    env, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use object::{
    Endianness, elf,
    read::elf::{ElfFile64, ProgramHeader as _},
};
use sticky_tests::{
    Container, StateDir, Sticky, client_v4, eventually, get, in_netns, loaded_programs,
    program_is_loaded,
};
use sticky_user::{control::Status, service::TEMPLATE_UNIT};

const UNIT: &str = "sticky@web.service";
const CONTROL: &str = "/run/sticky/web/control.sock";
const WORKERS: usize = 3;
/// Where the package puts what it ships besides the binary and the unit.
const PACKAGED_FILES: [&str; 7] = [
    "/usr/share/man/man1/sticky.1.gz",
    "/usr/share/bash-completion/completions/sticky",
    "/usr/share/zsh/vendor-completions/_sticky",
    "/usr/share/fish/vendor_completions.d/sticky.fish",
    "/usr/share/doc/sticky/examples/sticky.toml",
    "/usr/share/doc/sticky/README.md",
    "/usr/share/doc/sticky/docs/operations.md",
];

/// The one file in `target/dist/` (or `$STICKY_DIST`) whose name ends with `suffix`.
fn dist_file(suffix: &str) -> PathBuf {
    let dir = env::var_os("STICKY_DIST").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist"),
        PathBuf::from,
    );
    let entries = fs::read_dir(&dir).into_iter().flatten().flatten();
    let found: Vec<PathBuf> = entries
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    match &found[..] {
        [one] => one.clone(),
        _ => panic!(
            "want one *{suffix} in {}, found {found:?}: run `cargo xtask dist`",
            dir.display()
        ),
    }
}

fn status(container: &Container) -> Status {
    container.sticky_status("sticky", CONTROL)
}

/// Asserts that every client of `clients` reaches one worker on each of 3 requests, and that
/// every one of `workers` workers serves some of them.
fn assert_sticky(server: SocketAddr, clients: u32, workers: usize) {
    let mut seen = HashSet::new();
    for client in (0..clients).map(client_v4) {
        let first = get(client, server).worker;
        for _ in 0..2 {
            assert_eq!(get(client, server).worker, first, "{client} moved");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), workers, "workers that served: {seen:?}");
}

#[test]
fn the_package_installs_serves_under_systemd_and_is_removed_with_its_instances() {
    let deb = dist_file(".deb");
    // A fresh Debian with no sticky and no Rust: only the package is bound in.
    let container = Container::boot_with(&[(&deb, "/root/sticky.deb")]);
    assert!(!container.exists("/usr/bin/sticky") && !container.exists("/usr/local/bin/sticky"));
    // No network in the container: dpkg succeeds only if nothing else is needed.
    container.ok(&["dpkg", "-i", "/root/sticky.deb"]);
    for path in [&["/usr/bin/sticky", TEMPLATE_UNIT][..], &PACKAGED_FILES[..]].concat() {
        assert!(container.exists(path), "the package did not install {path}");
    }
    let man = container.ok(&["zcat", "/usr/share/man/man1/sticky.1.gz"]);
    assert!(man.contains(".TH sticky 1"), "{man}");
    // Every command's part, with its options, is in the one page.
    for part in [".SS \"sticky run\"", ".SS \"sticky install\"", "\\-\\-prefix\\-v4"] {
        assert!(man.contains(part), "the man page lacks {part}:\n{man}");
    }
    let complete = "source /usr/share/bash-completion/completions/sticky && complete -p sticky";
    assert!(container.ok(&["bash", "-c", complete]).contains("sticky"));

    // `sticky install` with the template there: only the configuration, and the instance.
    let install = ["sticky", "install", "web", "--user", "nobody", "--listen", "[::]:80"];
    let installed = container.ok(&[&install[..], &["--workers", "3"]].concat());
    assert!(installed.contains(TEMPLATE_UNIT), "{installed}");
    assert!(container.exists("/etc/sticky/web.toml"));
    assert!(!container.exists("/etc/systemd/system/sticky-web.service"));
    assert_eq!(container.ok(&["systemctl", "is-enabled", UNIT]).trim(), "enabled");
    container.ok(&["systemd-analyze", "verify", UNIT]);
    sticky_tests::privileges::assert_exposure_at_most_3(&container, UNIT);
    container.ok(&["systemctl", "start", UNIT]);
    assert_eq!(container.property(UNIT, "ActiveState"), "active");
    let programs = loaded_programs(status(&container).program_ids);
    container.in_netns(|| {
        assert_sticky(SocketAddr::from(([127, 0, 0, 1], 80)), 60, WORKERS);
    });
    assert!(programs.iter().all(|&id| program_is_loaded(id)));

    // Installing the package again is an upgrade: the running instance re-executes the new
    // binary in place, keeping its pid, workers and program.
    let before = status(&container);
    let main_pid = container.property(UNIT, "MainPID");
    container.ok(&["dpkg", "-i", "/root/sticky.deb"]);
    let after = status(&container);
    assert_eq!(after.loader.upgrades, before.loader.upgrades + 1, "{:?}", after.last_upgrade);
    assert_eq!(container.property(UNIT, "MainPID"), main_pid);
    assert_eq!(container.property(UNIT, "ActiveState"), "active");
    let workers = |status: &Status| status.slots.iter().map(|slot| slot.pid).collect::<Vec<_>>();
    assert_eq!(workers(&after), workers(&before));
    assert_eq!(after.program_ids, programs);
    container.in_netns(|| {
        assert_sticky(SocketAddr::from(([127, 0, 0, 1], 80)), 30, WORKERS);
    });

    // `sticky uninstall` of another instance mirrors its install: disabled, stopped, its
    // configuration gone, the template and the other instance left alone.
    container.ok(&["sticky", "install", "api", "--user", "nobody", "--listen", "127.0.0.1:8080"]);
    container.ok(&["systemctl", "start", "sticky@api.service"]);
    let uninstalled = container.ok(&["sticky", "uninstall", "api"]);
    assert!(uninstalled.contains("disabled sticky@api.service"), "{uninstalled}");
    assert_eq!(container.property("sticky@api.service", "ActiveState"), "inactive");
    assert_eq!(container.property("sticky@api.service", "UnitFileState"), "disabled");
    assert!(!container.exists("/etc/sticky/api.toml") && container.exists(TEMPLATE_UNIT));
    assert_eq!(container.property(UNIT, "ActiveState"), "active");

    // Removal stops the instance first; the configuration under /etc stays.
    container.ok(&["dpkg", "-r", "sticky"]);
    assert_eq!(container.property(UNIT, "ActiveState"), "inactive");
    assert_eq!(container.property(UNIT, "LoadState"), "not-found");
    for path in [
        "/usr/bin/sticky",
        TEMPLATE_UNIT,
        "/etc/systemd/system/multi-user.target.wants/sticky@web.service",
    ] {
        assert!(!container.exists(path), "{path} is left after dpkg -r");
    }
    assert!(container.exists("/etc/sticky/web.toml"), "dpkg -r removed the configuration");
    let processes = container.ok(&["ps", "-e", "-o", "user=,comm="]);
    let left: Vec<&str> =
        processes.lines().filter(|p| p.contains("sticky") || p.starts_with("nobody")).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    eventually("the dispatch programs are unloaded", || {
        programs.iter().all(|&id| !program_is_loaded(id))
    });
}

/// Whether an ELF executable names a program interpreter: the dynamic loader, which loads
/// shared libraries.
fn has_interpreter(executable: &[u8]) -> bool {
    let file = ElfFile64::<Endianness>::parse(executable).expect("an ELF executable");
    let headers = file.elf_program_headers();
    headers.iter().any(|header| header.p_type(file.endian()) == elf::PT_INTERP)
}

#[test]
fn the_static_binary_serves_the_demo_and_needs_no_shared_library() {
    let tarball = dist_file("-x86_64-unknown-linux-musl.tar.gz");
    let dir = StateDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let untar = Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&dir.0).status();
    assert!(untar.unwrap().success());
    let name = tarball.file_name().unwrap().to_str().unwrap().trim_end_matches(".tar.gz");
    let unpacked = dir.0.join(name);
    for file in ["sticky", "sticky.1.gz", "sticky.bash", "_sticky", "sticky.fish"] {
        assert!(unpacked.join(file).exists(), "the tarball lacks {file}");
    }
    let sticky = unpacked.join("sticky");
    assert!(!has_interpreter(&fs::read(&sticky).unwrap()), "the binary is dynamically linked");
    in_netns(|| {
        let mut demo = Sticky::start_binary(&sticky, &["--listen", "127.0.0.1:3090", "-w", "3"]);
        demo.wait_until_serving(WORKERS);
        assert_sticky(SocketAddr::from(([127, 0, 0, 1], 3090)), 60, WORKERS);
        // Its workers are the static binary too (the built-in demo).
        for slot in demo.status().slots {
            let exe = fs::read_link(format!("/proc/{}/exe", slot.pid.unwrap())).unwrap();
            assert_eq!(exe, sticky);
        }
        demo.stop_cleanly();
    });
}
