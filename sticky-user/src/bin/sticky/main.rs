//! `sticky`: sticky sessions for multi-process servers, dispatched in the kernel.

mod demo;
mod run;

use std::{ffi::OsString, io::IsTerminal as _, process::ExitCode};

use clap::{Parser, Subcommand};
use sticky_user::supervisor;
use tracing_subscriber::EnvFilter;

/// Sticky sessions for multi-process servers: the kernel sends every connection from one client
/// address to the same worker process.
#[derive(Debug, Parser)]
#[command(name = "sticky", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the listeners, attach the dispatch program and run the workers.
    Run(run::RunArgs),
    /// Serve the built-in demo worker (what `run` starts when no CMD is given).
    Demo,
    /// Set LISTEN_PID to this process and exec CMD (used by `run` to start workers).
    #[command(name = supervisor::EXEC_WORKER, hide = true)]
    ExecWorker {
        /// The worker command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_env("STICKY_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Demo => demo::run(),
        Command::ExecWorker { command } => Err(supervisor::exec_worker(&command).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sticky: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
