//! How the loader passes the connections it accepts to the workers (`--handoff`): sticky's
//! own handoff socket, or Node's IPC channel for node workers, which cannot read the socket.

use std::path::Path;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::WorkerCommand;

/// The transport of handed-over connections to the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandoffTransport {
    /// The `sticky-handoff` SOCK_SEQPACKET socket (SCM_RIGHTS and the listener's index).
    #[default]
    Socket,
    /// Node's IPC channel (`NODE_CHANNEL_FD`): each connection a `net.Socket` handle.
    Node,
}

/// The transport given, or by default `node` when the worker program's file name is `node` or
/// `nodejs`, else `socket`.
pub(super) fn resolve(
    given: Option<HandoffTransport>,
    command: Option<&WorkerCommand>,
) -> HandoffTransport {
    given.unwrap_or_else(|| match command.map(|c| c.program.as_path()) {
        Some(program) if is_node(program) => HandoffTransport::Node,
        _ => HandoffTransport::Socket,
    })
}

/// Whether `program` is node, by its file name.
fn is_node(program: &Path) -> bool {
    program.file_name().is_some_and(|name| name == "node" || name == "nodejs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(program: &str) -> WorkerCommand {
        WorkerCommand { program: program.into(), args: vec!["app.js".into()] }
    }

    #[test]
    fn node_workers_get_node_ipc_by_default() {
        let node = command("/usr/bin/node");
        assert_eq!(resolve(None, Some(&node)), HandoffTransport::Node);
        assert_eq!(resolve(None, Some(&command("/opt/bin/nodejs"))), HandoffTransport::Node);
        assert_eq!(resolve(None, Some(&command("/usr/bin/python3"))), HandoffTransport::Socket);
        assert_eq!(resolve(None, Some(&command("/srv/node-app"))), HandoffTransport::Socket);
        assert_eq!(resolve(None, None), HandoffTransport::Socket, "the demo");
        let given = Some(HandoffTransport::Socket);
        assert_eq!(resolve(given, Some(&node)), HandoffTransport::Socket);
    }

    #[test]
    fn the_file_names_it_like_the_flag() {
        let options: crate::config::RunOptions = toml::from_str("handoff = \"node\"\n").unwrap();
        assert_eq!(options.handoff, Some(HandoffTransport::Node));
    }
}
