//! `cargo xtask`: sticky's orchestration. It bootstraps what the build needs, then hands over
//! to cargo and the `sticky` binary; it never duplicates the build itself.

mod bench;
mod bootstrap;
mod cycles;
mod dist;
mod shell;
mod test;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test sticky")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what is missing to build the eBPF program (nightly's rust-src, LLVM, bpf-linker).
    Bootstrap,
    /// Bootstrap, build in release and start `sticky run ARGS` (the demo when no CMD is given).
    Run {
        /// Arguments for `sticky run`, e.g. `--workers 4 -- node app.js`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build in release, install the binary to /usr/local/bin/sticky (as root) and, given
    /// arguments, run `sticky install ARGS` (e.g. `web --user nobody -- node app.js`).
    Install {
        /// Arguments for `sticky install`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the Debian package and the static binary's tarball under target/dist/.
    Dist,
    /// Measure every dispatch mode side by side and print a table (as root).
    Bench {
        /// Shorter runs and one repeat (under two minutes).
        #[arg(long)]
        quick: bool,
        /// Only the balance figures: table shares, clients per worker, clients moved by scaling.
        #[arg(long)]
        balance: bool,
        /// Only these modes (comma-separated names, e.g. kernel,proxied), without the scaling,
        /// memory and balance runs; the results are printed, not written. `scrape` times a
        /// `GET /metrics` of 128 slots.
        #[arg(long, value_delimiter = ',', conflicts_with = "balance")]
        only: Vec<String>,
        /// Measure nothing: draw bench/results/latest.svg again from latest.json.
        #[arg(long, conflicts_with_all = ["quick", "balance"])]
        render: bool,
    },
    /// Bootstrap, then run the unit tests and the privileged integration tests (as root).
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Print which of sticky-user's top-level modules imports which; fail on a cycle.
    Modules,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Bootstrap => bootstrap::build_tools(),
        Command::Run { args } => run(args),
        Command::Install { args } => install(args),
        Command::Dist => dist::build(),
        Command::Bench { render: true, .. } => bench::render(),
        Command::Bench { quick, balance, only, .. } => bench(quick, balance, only),
        Command::Test { filter } => test::run_all(filter.as_deref()),
        Command::Modules => modules(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the import graph of sticky-user's top-level modules; fails if it has a cycle (the
/// unit test `cycles::tests::sticky_user_has_no_import_cycle` checks the same in CI).
fn modules() -> anyhow::Result<()> {
    let graph = cycles::graph(&shell::workspace_root().join("sticky-user/src"))?;
    for (module, imports) in &graph {
        let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
        println!("{module} -> {}", imports.join(", "));
    }
    match cycles::cycle(&graph) {
        Some(cycle) => anyhow::bail!("import cycle: {}", cycle.join(" -> ")),
        None => Ok(()),
    }
}

/// The benchmark starts sticky and proxies and reads kernel statistics: as root, re-running
/// this xtask through sudo when needed.
fn bench(quick: bool, balance: bool, only: Vec<String>) -> anyhow::Result<()> {
    if shell::is_root() {
        return bench::run(quick, balance, &only);
    }
    let mut command = shell::as_root(std::env::current_exe()?);
    command.arg("bench").args(quick.then_some("--quick")).args(balance.then_some("--balance"));
    if !only.is_empty() {
        command.arg("--only").arg(only.join(","));
    }
    shell::run(&mut command)
}

/// Where `cargo xtask install` puts the binary (the unit's default ExecStart).
const INSTALLED_BIN: &str = "/usr/local/bin/sticky";

fn install(args: Vec<OsString>) -> anyhow::Result<()> {
    bootstrap::build_tools()?;
    shell::run(shell::cargo().args(["build", "--release", "--package", "sticky-user"]))?;
    let built = shell::workspace_root().join("target/release/sticky");
    shell::run(
        shell::as_root("install").args(["-D", "-m", "0755"]).arg(&built).arg(INSTALLED_BIN),
    )?;
    shell::say(&format!("installed {INSTALLED_BIN}"));
    if !args.is_empty() {
        shell::run(shell::as_root(INSTALLED_BIN).arg("install").args(&args))?;
    }
    Ok(())
}

fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    bootstrap::build_tools()?;
    shell::run(shell::cargo().args(["build", "--release", "--package", "sticky-user"]))?;
    let sticky = shell::workspace_root().join("target/release/sticky");
    let mut command = shell::as_root(&sticky);
    command.arg("run").args(run_arguments(&args));
    if args.is_empty() {
        shell::say("starting the demo: try `curl http://127.0.0.1:3000/` (Ctrl-C stops it)");
    }
    shell::run_in_foreground(&mut command)
}

/// `sticky run`'s arguments for `cargo xtask run ARGS`: ARGS, after `--user nobody` unless they
/// choose the workers' identity themselves (sticky runs as root; its workers need not).
fn run_arguments(args: &[OsString]) -> Vec<OsString> {
    let options = args.iter().take_while(|arg| *arg != "--");
    let identity = ["--user", "--allow-root-workers", "--config"];
    let chosen = options
        .into_iter()
        .any(|arg| identity.iter().any(|flag| arg.to_string_lossy().starts_with(flag)));
    let default = if chosen { &[][..] } else { &["--user", "nobody"][..] };
    default.iter().map(OsString::from).chain(args.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Vec<String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        run_arguments(&args).into_iter().map(|arg| arg.into_string().unwrap()).collect()
    }

    #[test]
    fn the_demo_runs_its_workers_as_nobody_unless_told_otherwise() {
        assert_eq!(run_args(&[]), ["--user", "nobody"]);
        assert_eq!(run_args(&["--workers", "4"]), ["--user", "nobody", "--workers", "4"]);
        assert_eq!(run_args(&["--user=www-data"]), ["--user=www-data"]);
        assert_eq!(run_args(&["--allow-root-workers"]), ["--allow-root-workers"]);
        assert_eq!(run_args(&["--config", "a.toml"]), ["--config", "a.toml"]);
        // After `--`, the worker's own arguments choose nothing.
        assert_eq!(
            run_args(&["--", "node", "--user", "x"]),
            ["--user", "nobody", "--", "node", "--user", "x"]
        );
    }
}
