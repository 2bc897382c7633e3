//! The import graph of sticky-user's top-level modules, and the check that it has no cycle.
//!
//! A module imports another when any of its files names it through `crate::…` (in a `use` or in
//! a path in code, braces included) or through enough `super::` to reach the crate root.
//! Comments are skipped. It is a text scan, not a compiler: good enough for one crate whose
//! modules are files and directories, and dependable because it has no dependency.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Which top-level module imports which, by name.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph of the library crate whose `src` is `src` (the binary under `bin/` is
/// left out: nothing imports it).
pub fn graph(src: &Path) -> std::io::Result<Graph> {
    let mut modules = Vec::new();
    for entry in fs::read_dir(src)? {
        let path = entry?.path();
        let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let is_module =
            if path.is_dir() { name != "bin" } else { path.extension().is_some_and(|e| e == "rs") };
        if is_module && name != "lib" && name != "main" {
            modules.push((name, path));
        }
    }
    let names: BTreeSet<String> = modules.iter().map(|(name, _)| name.clone()).collect();
    let mut graph = Graph::new();
    for (name, path) in &modules {
        let mut imports = BTreeSet::new();
        for (file, depth) in files(path, 1)? {
            let text = fs::read_to_string(&file)?;
            imports.extend(imported(&without_comments(&text), depth));
        }
        imports.retain(|import| names.contains(import) && import != name);
        graph.insert(name.clone(), imports);
    }
    Ok(graph)
}

/// The `.rs` files of a module (a file, or a directory), each with its depth below the crate
/// root: `a.rs` and `a/mod.rs` are 1, `a/b.rs` is 2.
fn files(path: &Path, depth: usize) -> std::io::Result<Vec<(PathBuf, usize)>> {
    if !path.is_dir() {
        return Ok(vec![(path.to_owned(), depth)]);
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(path)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files(&path, depth + 1)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let own = path.file_stem().is_some_and(|stem| stem == "mod");
            found.push((path, if own { depth } else { depth + 1 }));
        }
    }
    Ok(found)
}

/// `text` without `//` comments (doc comments included; a `//` inside a string literal is rare
/// enough here to ignore).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level names a file at `depth` reaches from the crate root: after `crate::`, or after
/// `depth` times `super::`; braces are followed (`crate::{a::x, b}` names `a` and `b`).
fn imported(text: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &text[at..];
        let root = if rest.starts_with("crate::") && !preceded_by_ident(bytes, at) {
            Some("crate::".len())
        } else if rest.starts_with("super::") && !preceded_by_ident(bytes, at) {
            let mut length = 0;
            let mut count = 0;
            while text[at + length..].starts_with("super::") {
                length += "super::".len();
                count += 1;
            }
            (count == depth).then_some(length)
        } else {
            None
        };
        match root {
            Some(length) => {
                names_at(&text[at + length..], &mut found);
                at += length;
            }
            None => at += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    found
}

fn preceded_by_ident(bytes: &[u8], at: usize) -> bool {
    at > 0
        && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':')
}

/// The first segment of the path at the start of `text`, or of each path in the braces there.
fn names_at(text: &str, found: &mut BTreeSet<String>) {
    let text = text.trim_start();
    if let Some(inner) = text.strip_prefix('{') {
        // Each item at depth 1 of the braces: the identifier after `{` or a `,`.
        let mut depth = 1;
        let mut start = true;
        for (index, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => start = true,
                c if c.is_whitespace() => {}
                _ if start && depth == 1 => {
                    found.insert(identifier(&inner[index..]));
                    start = false;
                }
                _ => {}
            }
        }
    } else {
        found.insert(identifier(text));
    }
}

fn identifier(text: &str) -> String {
    text.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// A cycle in `graph`, as the modules along it (the first repeated at the end), if there is one.
pub fn cycle(graph: &Graph) -> Option<Vec<String>> {
    // Depth-first search; a module on the current path that is reached again closes a cycle.
    fn visit<'a>(
        graph: &'a Graph,
        module: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(position) = path.iter().position(|&m| m == module) {
            let mut cycle: Vec<String> = path[position..].iter().map(|m| m.to_string()).collect();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|module| visit(graph, module, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky_user_src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sticky-user/src")
    }

    #[test]
    fn sticky_user_has_no_import_cycle() {
        let graph = graph(&sticky_user_src()).expect("read sticky-user/src");
        assert!(graph.contains_key("supervisor") && graph.contains_key("config"), "{graph:?}");
        if let Some(cycle) = cycle(&graph) {
            panic!("import cycle in sticky-user: {}", cycle.join(" -> "));
        }
    }

    #[test]
    fn imports_are_read_through_braces_and_super() {
        let text = "use crate::{a::{x, y}, b, c::z};\nuse super::super::d::Thing;\n\
                    // crate::e in a comment\nlet _ = crate::f::g(super::h::i);";
        let found: Vec<String> = imported(&without_comments(text), 2).into_iter().collect();
        assert_eq!(found, ["a", "b", "c", "d", "f"]);
    }

    #[test]
    fn a_cycle_is_found() {
        let graph: Graph = [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]
            .into_iter()
            .map(|(m, to)| (m.to_owned(), to.iter().map(|t| t.to_string()).collect()))
            .collect();
        assert_eq!(cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
        let acyclic: Graph = graph.into_iter().filter(|(m, _)| m != "c").collect();
        assert_eq!(cycle(&acyclic), None);
    }
}
