//! The TOML configuration file: the same options as `sticky run`'s flags, with their names.

use std::{fs, path::Path};

use super::{ConfigError, RunOptions};

/// Reads `path` into a [`RunOptions`]. Syntax errors, unknown keys and values of the wrong type
/// are reported with their line and column.
pub fn load_file(path: &Path) -> Result<RunOptions, ConfigError> {
    let text = fs::read_to_string(path)
        .map_err(|err| ConfigError::ReadFile { path: path.into(), reason: err.to_string() })?;
    toml::from_str(&text).map_err(|err| {
        let offset = err.span().map_or(0, |span| span.start);
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
        let message = err.message().trim().replace('\n', " ");
        ConfigError::File { path: path.into(), line, column, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RunOptions, ConfigError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sticky-config-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::write(&path, text).unwrap();
        let result = load_file(&path);
        fs::remove_file(&path).unwrap();
        result
    }

    fn position(err: ConfigError) -> (usize, usize, String) {
        match err {
            ConfigError::File { line, column, message, .. } => (line, column, message),
            other => panic!("not a file error: {other}"),
        }
    }

    #[test]
    fn a_valid_file_fills_the_input() {
        let input = load("listen = [\"[::]:8080\"]\nworkers = 4\nprefix-v4 = 24\ncommand = [\"node\", \"app.js\"]\n[environment]\nNODE_ENV = \"production\"\n").unwrap();
        assert_eq!(input.workers, Some(4));
        assert_eq!(input.prefix_v4, Some(24));
        assert_eq!(input.command, ["node", "app.js"]);
        assert_eq!(input.environment, [("NODE_ENV".to_owned(), "production".to_owned())]);
    }

    #[test]
    fn errors_name_line_column_and_expectation() {
        let (line, column, message) =
            position(load("workers = 4\nprefix-v4 = \"wide\"\n").unwrap_err());
        assert_eq!((line, column), (2, 13), "{message}");
        assert!(message.contains("u8") || message.contains("integer"), "{message}");
        let (line, column, message) = position(load("workers = 4\n\nlisen = []\n").unwrap_err());
        assert_eq!((line, column), (3, 1));
        assert!(message.contains("unknown field `lisen`"), "{message}");
        let (line, _, _) = position(load("workers = 4\nlisten = [\n").unwrap_err());
        assert_eq!(line, 2, "the unclosed array");
    }
}
