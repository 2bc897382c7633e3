//! `sticky status|reload|scale|stop`: requests to a running `sticky run` over its control
//! socket.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use sticky_user::{
    config::defaults::DEFAULT_CONTROL,
    control::{self, Request, Response, Status},
};

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The running loader's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    control: PathBuf,
}

/// Sends `request` and prints the answer; `json` prints a status as JSON.
pub fn run(args: &ControlArgs, request: Request, json: bool) -> anyhow::Result<()> {
    match control::request(&args.control, &request)? {
        Response::Status(status) if json => println!("{}", serde_json::to_string_pretty(&status)?),
        Response::Status(status) => print_status(&status),
        Response::Done { message } => println!("{message}"),
        Response::Error { message } => bail!("{message}"),
    }
    Ok(())
}

fn print_status(status: &Status) {
    println!(
        "sticky pid {} · {} · dispatch {} · programs {:?}{}",
        status.pid,
        status.listen.join(", "),
        status.dispatch,
        status.program_ids,
        if status.migrates { " · migrates queues" } else { "" },
    );
    println!(
        "{:>4}  {:>8}  {:>10}  {:>8}  {:>8}  {:>12}",
        "slot", "pid", "uptime", "restarts", "in table", "connections"
    );
    for slot in &status.slots {
        let pid = slot.pid.map_or("-".into(), |pid| pid.to_string());
        let uptime = slot.uptime_secs.map_or("-".into(), |secs| format!("{secs:.0}s"));
        let in_table = if slot.in_table { "yes" } else { "no" };
        println!(
            "{:>4}  {pid:>8}  {uptime:>10}  {:>8}  {in_table:>8}  {:>12}",
            slot.slot, slot.restarts, slot.connections
        );
    }
    println!(
        "fallback {} · passed {} · unreadable {}",
        status.fallback, status.passed, status.unreadable
    );
}
