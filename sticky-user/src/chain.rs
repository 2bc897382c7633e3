//! An error and its causes on one line, for the logs and the control socket's answers, which
//! would otherwise show an error's own message without its causes.

use std::{error::Error, fmt};

/// Displays an error and each of its sources once: `outer: inner: innermost`.
pub(crate) struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path_error::PathError;

    #[test]
    fn every_cause_once() {
        let err = PathError::at("read", "/x".as_ref())(std::io::Error::other("gone"));
        assert_eq!(Chain(&err).to_string(), "cannot read /x: gone");
    }
}
