//! The TOML configuration file: the same options as `sticky run`'s flags, with their names.

use std::{fs, path::Path};

use serde::{
    Deserialize as _,
    de::{self, Deserializer, Visitor},
};

use super::{ConfigError, RunOptions};

/// Reads `path` into a [`RunOptions`]. Syntax errors, unknown keys and values of the wrong type
/// are reported with their line and column; an unknown key near a valid one names that one.
pub fn load_file(path: &Path) -> Result<RunOptions, ConfigError> {
    let text = fs::read_to_string(path)
        .map_err(|err| ConfigError::ReadFile { path: path.into(), reason: err.to_string() })?;
    toml::from_str(&text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
        let key = text.get(span).unwrap_or_default().trim_matches(['"', '\'']);
        let message = match nearest_key(key) {
            _ if !err.message().starts_with("unknown field") => {
                err.message().trim().replace('\n', " ")
            }
            Some(near) => format!("unknown key `{key}`: did you mean `{near}`?"),
            None => format!("unknown key `{key}`: the keys are `{}`", keys().join("`, `")),
        };
        ConfigError::File { path: path.into(), line, column, message }
    })
}

/// The valid key nearest to `key`, if one is near: a typo or two away (`lisen`, `prefix_v4`),
/// or the start of one (`env`).
fn nearest_key(key: &str) -> Option<&'static str> {
    let typos = 1.max(key.chars().count() / 3);
    let distance = |valid: &str| match strsim::damerau_levenshtein(key, valid) {
        typos_away if typos_away <= typos => Some(typos_away),
        _ if key.len() >= 3 && valid.starts_with(key) => Some(typos + 1),
        _ => None,
    };
    let near = keys().iter().filter_map(|&valid| Some((distance(valid)?, valid)));
    near.min().map(|(_, valid)| valid)
}

/// The keys the file may hold: the field names serde's derive gives [`RunOptions`], which it
/// passes to the deserializer (here one that only keeps them).
fn keys() -> &'static [&'static str] {
    struct Keys(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Keys {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            self.deserialize_any(visitor)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut keys = Keys(&[]);
    let _ = RunOptions::deserialize(&mut keys);
    keys.0
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
        assert_eq!(message, "unknown key `lisen`: did you mean `listen`?");
        let (line, _, _) = position(load("workers = 4\nlisten = [\n").unwrap_err());
        assert_eq!(line, 2, "the unclosed array");
    }

    #[test]
    fn unknown_keys_name_the_nearest_valid_one_or_all() {
        assert_eq!(keys().len(), 31, "{:?}", keys());
        for (typo, meant) in [
            ("workrs", "workers"),
            ("prefix_v4", "prefix-v4"),
            ("\"grace_period\"", "grace-period"),
            ("env", "environment"),
            ("wroking-directory", "working-directory"),
        ] {
            let (_, _, message) = position(load(&format!("{typo} = 1\n")).unwrap_err());
            let typo = typo.trim_matches('"');
            assert_eq!(message, format!("unknown key `{typo}`: did you mean `{meant}`?"));
        }
        // Nothing near: every valid key.
        let (_, _, message) = position(load("colour = 1\n").unwrap_err());
        assert!(message.starts_with("unknown key `colour`: the keys are `listen`, `workers`,"));
        assert!(message.ends_with(", `metrics`, `log-level`, `command`"), "{message}");
    }
}
