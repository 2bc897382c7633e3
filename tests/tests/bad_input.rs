//! Every bad input: one clear error line, a non-zero exit, nothing left running or attached.

use std::{fs, net::TcpListener, os::unix::fs::PermissionsExt as _, process::Command};

use sticky_tests::{
    Exit, StateDir, Sticky, in_netns, processes_in_netns, reuseport_programs, sticky_bin,
};

/// Runs `sticky run ARGS` to its exit and checks the common promises; returns the error line.
fn refused(args: &[&str]) -> String {
    let mut command = Command::new(sticky_bin());
    command.arg("run").arg("--allow-root-workers").args(args);
    refused_command(command)
}

fn refused_command(command: Command) -> String {
    let programs_before = reuseport_programs();
    let exit: Exit = Sticky::spawn(command).wait();
    assert!(!exit.status.success(), "sticky accepted bad input:\n{}", exit.log);
    let errors = exit.errors();
    assert_eq!(errors.len(), 1, "expected one error line:\n{}", exit.log);
    assert!(!exit.log.contains("worker started"), "workers were started:\n{}", exit.log);
    assert!(!exit.log.contains("program attached"), "the program was attached:\n{}", exit.log);
    // What the log does not say, the kernel does: no dispatch program came (or stayed).
    assert_eq!(reuseport_programs(), programs_before, "a program was loaded:\n{}", exit.log);
    assert_eq!(processes_in_netns(), Vec::<u32>::new(), "something is left running");
    errors[0].to_owned()
}

fn assert_says(error: &str, expected: &str) {
    assert!(error.contains(expected), "error {error:?} does not say {expected:?}");
}

#[test]
fn invalid_listen_addresses() {
    in_netns(|| {
        assert_says(&refused(&["--listen", "localhost"]), "invalid listen address 'localhost'");
        assert_says(
            &refused(&["--listen", "300.1.1.1:80"]),
            "invalid listen address '300.1.1.1:80'",
        );
        assert_says(&refused(&["--listen", "127.0.0.1:0"]), "port 0 is not supported");
        assert_says(&refused(&["--listen", "192.0.2.1:3020"]), "is not an address of this host");
    });
}

#[test]
fn a_port_held_by_another_socket() {
    in_netns(|| {
        let _holder = TcpListener::bind("127.0.0.1:3021").unwrap();
        let error = refused(&["--listen", "127.0.0.1:3021", "--workers", "2"]);
        assert_says(&error, "listen address 127.0.0.1:3021 is already in use");
        // Also through a dual-stack listener that would overlap it.
        let error = refused(&["--listen", "[::]:3021", "--workers", "2"]);
        assert_says(&error, "listen address [::]:3021 is already in use");
    });
}

#[test]
fn udp_addresses_that_do_not_fit() {
    in_netns(|| {
        let udp = ["--listen", "udp://127.0.0.1:3026", "--workers", "2"];
        assert_says(
            &refused(
                &[&udp[..], &["--listen", "127.0.0.1:3026", "--dispatch", "userspace"]].concat(),
            ),
            "udp://127.0.0.1:3026 needs kernel dispatch: --dispatch userspace accepts TCP",
        );
        let trusting = ["--trusted-proxy", "127.0.0.1", "--client-address", "proxy-protocol"];
        assert_says(
            &refused(&[&udp[..], &trusting[..]].concat()),
            "--client-address reads TCP streams, and every listen address is UDP",
        );
        // A UDP port another socket holds, also through a dual-stack address.
        let _holder = std::net::UdpSocket::bind("127.0.0.1:3026").unwrap();
        assert_says(&refused(&udp), "listen address udp://127.0.0.1:3026 is already in use");
        let error = refused(&["--listen", "udp://[::]:3026", "--workers", "2"]);
        assert_says(&error, "listen address udp://[::]:3026 is already in use");
    });
}

#[test]
fn quic_options_that_do_not_fit() {
    in_netns(|| {
        let udp = ["--listen", "udp://127.0.0.1:3027", "--workers", "2"];
        let quic = |more: &[&str]| refused(&[&udp[..], &["--quic"], more].concat());
        assert_says(&quic(&["--quic-cid-len", "7"]), "--quic-cid-len must be between 8 and 20");
        assert_says(&quic(&["--quic-cid-len", "21"]), "got 21");
        assert_says(&quic(&["--dispatch", "none"]), "--quic needs --dispatch kernel");
        let tcp_only = refused(&["--listen", "127.0.0.1:3027", "--quic"]);
        assert_says(&tcp_only, "--quic routes UDP datagrams, and no listen address is UDP");
        let alone = refused(&[&udp[..], &["--quic-cid-len", "16"]].concat());
        assert_says(&alone, "--quic-cid-len is given without --quic");
        assert_says(&quic(&["--env", "STICKY_QUIC_KEY=1"]), "STICKY_QUIC_KEY");
        assert_says(&quic(&["--env", "STICKY_QUIC_GENERATION=1"]), "STICKY_QUIC_GENERATION");
        let drain = refused(&[&udp[..], &["--drain-timeout", "60"]].concat());
        assert_says(&drain, "--drain-timeout is given without --quic");
        let idle = quic(&["--drain-idle", "0"]);
        assert_says(&idle, "--drain-idle must be between 0.1 and 3600 seconds, got 0");
        assert_says(&quic(&["--drain-timeout=-1"]), "--drain-timeout must be between 0 and");
    });
}

#[test]
fn worker_counts_out_of_range() {
    in_netns(|| {
        assert_says(&refused(&["--workers", "0"]), "--workers must be between 1 and 128, got 0");
        assert_says(&refused(&["--workers", "100000"]), "got 100000");
    });
}

#[test]
fn prefixes_out_of_range() {
    in_netns(|| {
        assert_says(
            &refused(&["--prefix-v4", "33"]),
            "--prefix-v4 must be between 0 and 32, got 33",
        );
        assert_says(
            &refused(&["--prefix-v6", "129"]),
            "--prefix-v6 must be between 0 and 128, got 129",
        );
    });
}

#[test]
fn worker_commands_that_cannot_run() {
    in_netns(|| {
        let error = refused(&["--", "no-such-worker-program"]);
        assert_says(&error, "worker command 'no-such-worker-program' was not found in PATH");
        let not_executable =
            std::env::temp_dir().join(format!("sticky-not-executable-{}", std::process::id()));
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let path = not_executable.to_str().unwrap();
        let error = refused(&["--", path]);
        std::fs::remove_file(&not_executable).unwrap();
        assert_says(&error, &format!("worker command '{path}' is not an executable file"));
        // Executable, but not by the workers' user: the file sits in a directory only root
        // may enter.
        let private = StateDir::new();
        fs::create_dir_all(&private.0).unwrap();
        fs::set_permissions(&private.0, fs::Permissions::from_mode(0o700)).unwrap();
        let program = private.0.join("worker");
        fs::write(&program, "#!/bin/sh\nexec sleep 60\n").unwrap();
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        let path = program.to_str().unwrap();
        let error = refused(&["--user", "nobody", "--", path]);
        assert_says(
            &error,
            &format!("worker command {path} cannot be executed as user nobody: Permission denied"),
        );
    });
}

#[test]
fn workers_as_root_need_a_user_or_explicit_permission() {
    in_netns(|| {
        let mut command = Command::new(sticky_bin());
        command.args(["run", "--listen", "127.0.0.1:3023"]);
        assert_says(
            &refused_command(command),
            "refusing to run workers as root, sticky's own user: give --user an unprivileged user",
        );
        for (user, group, how) in [
            ("root", None, "as user root"),
            ("0", None, "as user root"),
            ("nobody", Some("0"), "with group 0"),
            ("nobody", Some("root"), "with group 0"),
        ] {
            let mut command = Command::new(sticky_bin());
            command.args(["run", "--listen", "127.0.0.1:3023", "--user", user]);
            command.args(group.iter().flat_map(|group| ["--group", group]));
            let error = refused_command(command);
            assert_says(&error, &format!("refusing to run workers {how}: give --user"));
        }
        // A loader that is not root but holds capabilities (CAP_SETUID among them) could start
        // root workers too.
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        let caps = "+bpf,+net_admin,+setuid,+setgid,+kill";
        command.args([format!("--inh-caps={caps}"), format!("--ambient-caps={caps}")]);
        command.arg(sticky_bin()).args(["run", "--listen", "127.0.0.1:3023", "--user", "root"]);
        assert_says(&refused_command(command), "refusing to run workers as user root");
        assert_says(
            &refused(&["--user", "no-such-user-sticky"]),
            "unknown user 'no-such-user-sticky'",
        );
    });
}

#[test]
fn trusted_proxy_options_that_do_not_fit() {
    in_netns(|| {
        fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
            [&["--listen", "127.0.0.1:3025"][..], args].concat()
        }
        assert_says(
            &refused(&with(&["--trusted-proxy", "127.0.0.1"])),
            "--trusted-proxy needs --client-address (proxy-protocol, x-forwarded-for or forwarded)",
        );
        assert_says(
            &refused(&with(&["--client-address", "proxy-protocol"])),
            "--client-address needs at least one --trusted-proxy",
        );
        let both = ["--client-address", "x-forwarded-for", "--trusted-proxy"];
        for cidr in ["10.0.0.0/33", "proxy.example", "10.0.0.300"] {
            assert_says(
                &refused(&with(&[&both[..], &[cidr]].concat())),
                &format!("--trusted-proxy: '{cidr}' is not an address or network"),
            );
        }
        assert_says(
            &refused(&with(&[&both[..], &["127.0.0.1", "--dispatch", "none"]].concat())),
            "--client-address needs sticky dispatch (kernel or userspace), not --dispatch none",
        );
        assert_says(
            &refused(&with(&[&both[..], &["127.0.0.1", "--client-address-timeout", "0"]].concat())),
            "--client-address-timeout must be between 0.1 and 300 seconds, got 0",
        );
        // The same rules for the configuration file's keys.
        let dir = StateDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let config = dir.0.join("sticky.toml");
        fs::write(&config, "listen = [\"127.0.0.1:3025\"]\ntrusted-proxy = [\"127.0.0.1\"]\n")
            .unwrap();
        assert_says(
            &refused(&["--config", config.to_str().unwrap()]),
            "--trusted-proxy needs --client-address",
        );
    });
}

#[test]
fn missing_capabilities_are_named() {
    in_netns(|| {
        // Not root: no capabilities at all.
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(sticky_bin());
        command.args(["run", "--listen", "127.0.0.1:3022"]);
        let error = refused_command(command);
        assert_says(
            &error,
            "missing capability CAP_BPF (to load the dispatch program), CAP_NET_ADMIN",
        );
        // Root without CAP_NET_ADMIN.
        let mut command = Command::new("setpriv");
        command.args(["--bounding-set=-net_admin", "--inh-caps=-net_admin"]).arg(sticky_bin());
        command.args(["run", "--listen", "127.0.0.1:3022", "--allow-root-workers"]);
        let error = refused_command(command);
        assert_says(&error, "missing capability CAP_NET_ADMIN");
        assert!(!error.contains("CAP_BPF"), "{error}");
        // The unit's set without CAP_KILL, workers of another user.
        let mut command = Command::new("setpriv");
        command.arg("--bounding-set=-all,+bpf,+net_admin,+setuid,+setgid").arg(sticky_bin());
        command.args(["run", "--listen", "127.0.0.1:3022", "--user", "nobody"]);
        let error = refused_command(command);
        assert_says(&error, "missing capability CAP_KILL (to stop workers of another user");
        assert!(!error.contains("CAP_SETUID"), "{error}");
    });
}

#[test]
fn control_commands_without_a_loader_say_so_once() {
    let path = "/nonexistent/sticky.sock";
    let expected = format!(
        "sticky: error: no sticky is running with control socket {path} (start one with `sticky \
         run`, or give the running one's --control path): No such file or directory (os error \
         2)\n"
    );
    for args in [&["status"][..], &["reload"], &["scale", "2"], &["stop"], &["upgrade"]] {
        let output = Command::new(sticky_bin())
            .args(args)
            .args(["--control", path])
            .output()
            .expect("run sticky");
        assert!(!output.status.success(), "sticky {args:?} succeeded");
        assert!(output.stdout.is_empty(), "sticky {args:?} printed to stdout");
        assert_eq!(String::from_utf8_lossy(&output.stderr), expected, "sticky {args:?}");
    }
}

#[test]
fn a_control_socket_directory_others_could_write_to_is_refused() {
    in_netns(|| {
        let dir = StateDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o775)).unwrap();
        let control = dir.0.join("control.sock");
        let error =
            refused(&["--listen", "127.0.0.1:3024", "--control", control.to_str().unwrap()]);
        assert_says(
            &error,
            &format!(
                "control socket directory {} is writable by its group or others (mode 775)",
                dir.0.display()
            ),
        );
        assert!(!control.exists(), "the control socket was made");
    });
}
