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
    /// The running loader's control socket (its `sticky run --control`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
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
    let loader = &status.loader;
    println!(
        "sticky {} · build {} · this image started {} · upgraded in place {} times",
        loader.version,
        loader.build_id,
        ago(loader.started_at_unix_secs),
        loader.upgrades,
    );
    println!(
        "{:>4}  {:>8}  {:>10}  {:>5}  {:>8}  {:>5}  {:>8}  {:>12}  status",
        "slot", "pid", "uptime", "ready", "restarts", "hangs", "in table", "connections"
    );
    let yes = |flag: bool| if flag { "yes" } else { "no" };
    for slot in &status.slots {
        let pid = slot.pid.map_or("-".into(), |pid| pid.to_string());
        let uptime = slot.uptime_secs.map_or("-".into(), |secs| format!("{secs:.0}s"));
        println!(
            "{:>4}  {pid:>8}  {uptime:>10}  {:>5}  {:>8}  {:>5}  {:>8}  {:>12}  {}",
            slot.slot,
            yes(slot.ready),
            slot.restarts,
            slot.hangs,
            yes(slot.in_table),
            slot.connections,
            slot.status.as_deref().unwrap_or("")
        );
    }
    println!(
        "fallback {} · passed {} · unreadable {}",
        status.fallback, status.passed, status.unreadable
    );
    if let Some(quic) = &status.quic {
        println!(
            "quic: {} datagrams routed by connection ID ({} octets), {} unroutable",
            quic.routed, quic.cid_len, quic.unroutable
        );
        for generation in &quic.generations {
            let pid = generation.pid.map_or("none".into(), |pid| pid.to_string());
            match generation.draining_secs {
                None => println!(
                    "  slot {} generation {}: pid {pid}",
                    generation.slot, generation.generation
                ),
                Some(secs) => println!(
                    "  slot {} generation {}: pid {pid}, draining for {secs:.0} s, {} datagrams",
                    generation.slot,
                    generation.generation,
                    generation.draining_datagrams.unwrap_or(0)
                ),
            }
        }
    }
    if let Some(proxies) = &status.client_address {
        let errors: Vec<String> = proxies
            .errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let errors = if errors.is_empty() { "none".into() } else { errors.join(", ") };
        println!(
            "trusted proxies: {} routed by their header's client, {} by the proxy's own address; \
             closed: {errors}",
            proxies.by_header, proxies.by_proxy
        );
    }
    for (what, outcome) in [("reload", &status.last_reload), ("upgrade", &status.last_upgrade)] {
        if let Some(outcome) = outcome {
            let result = if outcome.ok { "ok" } else { "failed" };
            println!("last {what} {}, {result}: {}", ago(outcome.at_unix_secs), outcome.message);
        }
    }
}

/// "N s ago" for a time in seconds since the Unix epoch.
fn ago(at_unix_secs: u64) -> String {
    format!("{}s ago", sticky_user::sync::unix_now().saturating_sub(at_unix_secs))
}
