//! Before an upgrade: asking the binary at sticky's path whether it can take the state.
//!
//! The old image runs `NEW resume --probe`, which prints one JSON line: its version, build id
//! and the state versions it reads. Anything else (it does not run, is not sticky, reads other
//! versions) refuses the upgrade before anything is handed over.

use std::{path::Path, process::Stdio, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{process::Command, time::timeout};

use super::{RESUME, STATE_VERSION, UpgradeError};
use crate::identity;

/// How long the new binary may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `sticky resume --probe` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    /// The package version.
    pub version: String,
    /// The build id.
    pub build_id: String,
    /// The state record versions it can read.
    pub state_versions: Vec<u32>,
}

impl ProbeAnswer {
    /// This binary's answer.
    pub fn of_this_binary() -> Self {
        Self {
            version: identity::VERSION.into(),
            build_id: identity::build_id().into(),
            state_versions: vec![STATE_VERSION],
        }
    }
}

/// Asks the binary at `executable` whether it can read this binary's state record.
pub(crate) async fn probe(executable: &Path) -> Result<ProbeAnswer, UpgradeError> {
    let not_sticky = |reason: String| UpgradeError::NotSticky { path: executable.into(), reason };
    let mut command = Command::new(executable);
    command.args([RESUME, "--probe"]).stdin(Stdio::null()).kill_on_drop(true);
    let output = timeout(PROBE_TIMEOUT, command.output())
        .await
        .map_err(|_| not_sticky(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))?
        .map_err(|err| not_sticky(err.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().map(str::trim).filter(|line| !line.is_empty());
        let said = last.map(|line| format!(": {line}")).unwrap_or_default();
        return Err(not_sticky(format!("`resume --probe` failed ({}){said}", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer: ProbeAnswer = serde_json::from_str(stdout.trim())
        .map_err(|_| not_sticky("it does not answer `resume --probe`".into()))?;
    if !answer.state_versions.contains(&STATE_VERSION) {
        return Err(UpgradeError::Incompatible {
            path: executable.into(),
            version: answer.version,
            reads: answer.state_versions,
        });
    }
    Ok(answer)
}
