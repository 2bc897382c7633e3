//! `sticky`: sticky sessions for multi-process servers, dispatched in the kernel.

mod ctl;
mod demo;
mod inspect;
mod install;
mod log_filter;
mod man;
mod run;
mod top;

use std::{ffi::OsString, path::Path, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};
use sticky_user::{config::RunOptions, control::Request, identity, service, spawn, upgrade};

/// Sticky sessions for multi-process servers: the kernel sends every connection from one client
/// address to the same worker process.
#[derive(Debug, Parser)]
#[command(name = "sticky", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the listeners, attach the dispatch program and run the workers.
    Run(RunOptions),
    /// Validate the options (and --config file) of `run` without starting anything.
    Check(RunOptions),
    /// Show the running loader's workers and counters.
    Status {
        #[command(flatten)]
        control: ctl::ControlArgs,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Watch the running loader live: per slot its worker, state, connections per second,
    /// accept queue, table share, restarts, uptime, CPU, memory and STATUS= text; restart or
    /// kill a slot's worker. With stdout not a terminal, print one snapshot as a table.
    ///
    /// Keys: Up/Down select a slot; s sorts by the next column, S reverses the order, 1-9 sort
    /// by that column; r restarts the selected slot (its new worker first, as a reload does),
    /// k sends its worker SIGKILL, each after y; q or Ctrl-C quits. Refreshed every second.
    Top(ctl::ControlArgs),
    /// Replace every worker, one slot at a time, without dropping connections (also SIGHUP).
    Reload(ctl::ControlArgs),
    /// Change the number of workers of the running loader.
    Scale {
        /// The new number of workers (1 to 128).
        workers: u32,
        #[command(flatten)]
        control: ctl::ControlArgs,
    },
    /// Stop the running loader and its workers.
    Stop(ctl::ControlArgs),
    /// Replace the running loader by the sticky binary now at its path, in place (same pid),
    /// keeping every worker, socket and the attached program (also SIGUSR2).
    Upgrade(ctl::ControlArgs),
    /// Write /etc/sticky/NAME.toml and enable sticky@NAME (the packaged template), or without
    /// the package write and enable sticky-NAME.service.
    Install(install::InstallArgs),
    /// Disable and remove a service written by `sticky install`.
    Uninstall(install::UninstallArgs),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Print the template unit sticky@.service the Debian package installs.
    #[command(name = "template-unit", hide = true)]
    TemplateUnit,
    /// Serve the built-in demo worker (what `run` starts when no CMD is given).
    Demo,
    /// Print each slot's entries in the lookup table for N slots, its build time and, with
    /// --entries, its first entries (JSON).
    #[command(name = "inspect-table", hide = true)]
    InspectTable {
        /// The number of slots.
        #[arg(long)]
        slots: u32,
        /// The hash seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A slot taken out of the table (as an ejected one); repeat for several.
        #[arg(long)]
        without: Vec<u32>,
        /// Also print the first N entries, e.g. to fill a balancer's bucket map like the table.
        #[arg(long, default_value_t = 0)]
        entries: usize,
    },
    /// Take over from a loader that is upgrading (what `sticky upgrade` executes).
    #[command(name = upgrade::RESUME, hide = true)]
    Resume {
        /// Read the state record offered on stdin (if any) as a takeover would, print the
        /// state versions this binary reads (JSON), and exit.
        #[arg(long, conflicts_with = "state_fd")]
        probe: bool,
        /// The fd of the state record.
        #[arg(long, value_name = "FD", required_unless_present = "probe")]
        state_fd: Option<i32>,
        /// Take over again after a newer image could not, for this reason.
        #[arg(long, value_name = "REASON", requires = "state_fd")]
        rollback: Option<String>,
    },
    /// Set LISTEN_PID to this process and exec CMD (used by `run` to start workers).
    #[command(name = spawn::EXEC_WORKER, hide = true)]
    ExecWorker {
        /// Only check that CMD's program may be executed here, as `run` does at startup.
        #[arg(long)]
        check: bool,
        /// The worker command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    identity::name_after_argv0();
    let cli = Cli::parse();
    let log_filter = log_filter::LogFilter::init();
    let result = match cli.command {
        Command::Run(args) => run::run(args, &log_filter),
        Command::Check(args) => run::check(args),
        Command::Install(args) => install::install(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sticky", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => man::render(Cli::command(), &mut std::io::stdout()).map_err(Into::into),
        Command::TemplateUnit => {
            print!("{}", service::template_unit(Path::new(service::PACKAGED_BIN)));
            Ok(())
        }
        Command::Status { control, json } => ctl::run(&control, Request::Status, json),
        Command::Top(control) => top::run(&control),
        Command::Reload(control) => ctl::run(&control, Request::Reload, false),
        Command::Scale { workers, control } => {
            ctl::run(&control, Request::Scale { workers }, false)
        }
        Command::Stop(control) => ctl::run(&control, Request::Stop, false),
        Command::Upgrade(control) => ctl::run(&control, Request::Upgrade, false),
        Command::Resume { probe: true, .. } => run::probe(),
        Command::Resume { state_fd, rollback, .. } => {
            run::resume(state_fd.expect("required by clap"), rollback, &log_filter)
        }
        Command::Demo => demo::run(),
        Command::InspectTable { slots, seed, without, entries } => {
            inspect::run(slots, seed, &without, entries)
        }
        Command::ExecWorker { check: true, command } => {
            spawn::check_worker(&command).map_err(Into::into)
        }
        Command::ExecWorker { check: false, command } => Err(spawn::exec_worker(&command).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sticky: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
