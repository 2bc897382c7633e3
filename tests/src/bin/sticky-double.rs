//! A stand-in for a new sticky build in the upgrade tests, installed at sticky's path.
//!
//! What it does is written in a file `double` beside it (one word, read at each run):
//! - `other-version`: answers the probe as a sticky that reads only state version 99;
//! - `not-sticky`: prints something that is not an answer;
//! - `exit-3`: exits with status 3.

use std::{env, fs, process::ExitCode};

use sticky_user::upgrade::RESUME;

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
        (behaviour, args) => {
            eprintln!("sticky-double: unexpected {behaviour:?} {args:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
