//! A stand-in for a new sticky build in the upgrade tests, installed at sticky's path.
//!
//! What it does is written in a file `double` beside it (one word, read at each run):
//! - `no-fds`: a sticky whose takeover fails. It answers `resume --probe` with sticky's own
//!   code (the offered record parsed whole), and executed as `resume --state-fd N` it runs
//!   sticky's own [`resume`] with every free fd taken first (close-on-exec), so the takeover
//!   cannot copy what it inherits, and sticky hands the loader back to the old image;
//! - `other-version`: answers the probe as a sticky that reads only state version 99;
//! - `not-sticky`: prints something that is not an answer;
//! - `exit-3`: exits with status 3.

use std::{env, fs, process::ExitCode};

use sticky_user::upgrade::{ProbeAnswer, RESUME, check_record, resume};

fn main() -> ExitCode {
    let exe = env::current_exe().expect("current_exe");
    let behaviour = fs::read_to_string(exe.with_file_name("double")).unwrap_or_default();
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match (behaviour.trim(), args.as_slice()) {
        ("other-version", [RESUME, "--probe"]) => {
            println!(r#"{{"version":"9.0.0","build_id":"x","state_versions":[99]}}"#);
        }
        ("not-sticky", _) => println!("not sticky"),
        ("exit-3", _) => return ExitCode::from(3),
        ("no-fds", [RESUME, "--probe"]) => {
            let answer = serde_json::to_string(&ProbeAnswer::of_this_binary()).expect("JSON");
            println!("{answer}");
            if let Err(err) = check_record(std::io::stdin().lock()) {
                eprintln!("sticky-double: {err}");
                return ExitCode::FAILURE;
            }
        }
        ("no-fds", [RESUME, "--state-fd", fd]) => {
            let fd = fd.parse().expect("an fd number");
            // Read before the fds are gone, as sticky's resume reads it first.
            let _ = sticky_user::identity::build_id();
            // SAFETY: copies of stderr, close-on-exec, left open until the exec.
            while unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 0) } >= 0 {}
            // SAFETY: executed by an upgrade with the record at `fd` and the fds it names.
            match unsafe { resume(fd, None) } {
                Ok(_) => eprintln!("sticky-double: took over, which it should not have"),
                Err(err) => eprintln!("sticky-double: {err}"),
            }
            return ExitCode::FAILURE;
        }
        (behaviour, args) => {
            eprintln!("sticky-double: unexpected {behaviour:?} {args:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
