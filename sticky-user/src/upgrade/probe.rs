//! Before an upgrade: asking the new binary whether it can take the state.
//!
//! The old image runs the binary it opened (by its fd) as `NEW resume --probe`, with a state
//! record written as the one it is about to hand over on stdin. The new binary parses the
//! whole record as `resume` would, and prints one JSON line: its version, build id and the
//! state versions it reads; it fails if it cannot take that record. Anything else (it does not
//! run, is not sticky, reads other versions, cannot parse the record) refuses the upgrade
//! before anything is handed over.

use std::{fs::File, io::Read, process::Stdio, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{process::Command, time::timeout};

use super::{
    RESUME, STATE_VERSION, UpgradeError,
    image::Image,
    record::{READ_VERSIONS, Record, RecordError},
};
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
            state_versions: READ_VERSIONS.to_vec(),
        }
    }
}

/// The new binary's side: reads the record an upgrading loader offers on `input` and parses
/// it whole, as `resume` would. Empty input (a loader that offers none) is accepted.
pub fn check_record(mut input: impl Read) -> Result<(), RecordError> {
    let mut text = String::new();
    input.read_to_string(&mut text).map_err(RecordError::Read)?;
    if text.trim().is_empty() {
        return Ok(());
    }
    Record::parse(&text).map(drop)
}

/// Asks the binary `image` whether it can take `record`, this loader's state.
pub(crate) async fn probe(image: &Image, record: &Record) -> Result<ProbeAnswer, UpgradeError> {
    let path = image.path();
    let not_sticky = |reason: String| UpgradeError::NotSticky { path: path.into(), reason };
    let offered = record.to_memfd().map_err(|err| UpgradeError::Exec {
        path: path.into(),
        reason: format!("cannot write the state record: {err}"),
    })?;
    // The child inherits the image's fd up to its exec, which opens the file through it.
    let mut command = Command::new(image.fd_path());
    command
        .arg0(path)
        .args([RESUME, "--probe"])
        .stdin(File::from(offered))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = timeout(PROBE_TIMEOUT, command.output())
        .await
        .map_err(|_| not_sticky(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))?
        .map_err(|err| not_sticky(err.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = serde_json::from_str::<ProbeAnswer>(stdout.trim());
    if let Ok(answer) = &answer
        && !answer.state_versions.contains(&STATE_VERSION)
    {
        return Err(UpgradeError::Incompatible {
            path: path.into(),
            version: answer.version.clone(),
            reads: answer.state_versions.clone(),
        });
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().map(str::trim).filter(|line| !line.is_empty());
        let said = last.map(|line| format!(": {line}")).unwrap_or_default();
        return Err(not_sticky(format!("`resume --probe` failed ({}){said}", output.status)));
    }
    answer.map_err(|_| not_sticky("it does not answer `resume --probe`".into()))
}

#[cfg(test)]
mod tests {
    use super::{RecordError, check_record};
    use crate::upgrade::STATE_VERSION;

    #[test]
    fn no_record_is_accepted_and_a_partial_or_other_version_is_refused() {
        check_record(&b""[..]).unwrap();
        // The version alone is not a record: every field must parse.
        let version_only = format!("{{\"version\":{STATE_VERSION}}}");
        let partial = check_record(version_only.as_bytes()).unwrap_err();
        assert!(matches!(partial, RecordError::Parse(_)), "{partial:?}");
        let other = check_record(&b"{\"version\":99}"[..]).unwrap_err();
        assert!(matches!(other, RecordError::Version(99)), "{other:?}");
        // Version 3, an image's from before socket generations, is read (its fields parsed).
        let three = check_record(&b"{\"version\":3}"[..]).unwrap_err();
        assert!(matches!(three, RecordError::Parse(_)), "{three:?}");
        let two = check_record(&b"{\"version\":2}"[..]).unwrap_err();
        assert!(matches!(two, RecordError::Version(2)), "{two:?}");
    }
}
