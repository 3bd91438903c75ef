//! The house rule of `src/`: imports run down the layers only, and no modules import each other
//! in a cycle. Read from the source's `crate::` paths (and `self::`/`super::` and child paths),
//! so it needs no build of its own and names the two modules of any arrow that breaks the rule.
//!
//! `RTCGATE_LAYERS_SRC=/path/to/src cargo test layers` checks another tree (an older commit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first, and the modules in each (a module's children are in its layer).
/// README, "The house", says what each owns.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundations", &["config", "metrics", "settings", "sticky"]),
    ("state", &["state"]),
    ("placement", &["balance"]),
    ("data path", &["proxy", "server"]),
    ("control plane", &["control"]),
    ("edges", &["", "demo"]),
];

/// A module path (`state::backend`; "" for the crate root) and its source.
type Tree = BTreeMap<String, String>;

/// The library's modules under `src`: `lib.rs` and what it reaches by file, not `main.rs`
/// (the binary, a crate of its own) nor the binary's modules.
fn read_tree(src: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).expect("under src");
                if let Some(module) = module_of(rel) {
                    let text = std::fs::read_to_string(&path).expect("read source");
                    tree.insert(module, text);
                }
            }
        }
    }
    tree
}

/// `state/backend.rs` → `state::backend`, `state/mod.rs` → `state`, `lib.rs` → "".
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts == ["main"] || parts == ["alloc"] || parts == ["cli"] {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The source without comments and string literals, which may mention paths that are not
/// imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('"', '\'') would open a string above; lifetimes ('a) are left.
            b'\'' if b.get(i + 2) == Some(&b'\'') => {
                i += 3;
                out.push_str("' '");
            }
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts with `prefix` (`crate::`, `super::`, …) in `code`, as the segments
/// after it, `{a::b, c}` groups expanded to their first segments.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        // `crate::` inside a longer name (`mycrate::`) is not the crate.
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let segs = segments(item.trim());
                if !segs.is_empty() {
                    found.push(segs);
                }
            }
        } else {
            found.push(segments(rest));
        }
    }
    found
}

/// `a::b::C` → ["a", "b", "C"], up to the first character that is neither.
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    out
}

/// The longest module of `tree` that `path` (absolute segments) names.
fn target(tree: &Tree, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| tree.contains_key(m))
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map_or("", |(p, _)| p).to_string()
}

/// Module → the modules it imports (itself left out).
fn imports(tree: &Tree) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, text) in tree {
        let code = code_only(text);
        let mut absolute: Vec<Vec<String>> = paths_after(&code, "crate::");
        let join = |base: &str, rel: Vec<String>| -> Vec<String> {
            base.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .chain(rel)
                .collect()
        };
        for rel in paths_after(&code, "self::") {
            absolute.push(join(module, rel));
        }
        // `use super::*` in a `mod tests` means this module itself; any other `super::` is
        // the parent's.
        for rel in paths_after(&code, "super::") {
            if !rel.is_empty() {
                absolute.push(join(&parent(module), rel));
            }
        }
        // `use child::X` in a module with children.
        for line in code.lines() {
            let line = line.trim_start();
            let Some(rest) = line
                .strip_prefix("pub use ")
                .or_else(|| line.strip_prefix("use "))
            else {
                continue;
            };
            let segs = segments(rest);
            let child = join(module, segs.clone());
            if segs
                .first()
                .is_some_and(|s| s != "crate" && s != "self" && s != "super")
                && target(tree, &child).is_some_and(|t| t != *module)
            {
                absolute.push(child);
            }
        }
        let mut to = BTreeSet::new();
        for path in absolute {
            if let Some(t) = target(tree, &path) {
                if t != *module {
                    to.insert(t);
                }
            }
        }
        graph.insert(module.clone(), to);
    }
    graph
}

/// The layer of `module`: (index, name), by its top-level module.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let top = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, mods))| mods.contains(&top))
        .map(|(i, (name, _))| (i, *name))
}

/// Every breach of the rule, one line each; empty when the tree keeps it.
fn breaches(tree: &Tree) -> Vec<String> {
    let graph = imports(tree);
    let show = |m: &str| {
        if m.is_empty() {
            "lib".to_string()
        } else {
            m.to_string()
        }
    };
    let mut out = Vec::new();
    for module in graph.keys() {
        if layer_of(module).is_none() {
            out.push(format!(
                "{} is in no layer: add it to LAYERS in tests/it/layers.rs",
                show(module)
            ));
        }
    }
    for (from, tos) in &graph {
        let Some((fl, fname)) = layer_of(from) else {
            continue;
        };
        for to in tos {
            if let Some((tl, tname)) = layer_of(to) {
                if tl > fl {
                    out.push(format!(
                        "upward import: {} ({fname}) imports {} ({tname})",
                        show(from),
                        show(to)
                    ));
                }
            }
        }
    }
    for (set, cycle) in cycles(&graph) {
        let names: Vec<String> = cycle.iter().map(|m| show(m)).collect();
        let mut line = format!("import cycle: {} -> {}", names.join(" -> "), names[0]);
        if set.len() > cycle.len() {
            let all: Vec<String> = set.iter().map(|m| show(m)).collect();
            line.push_str(&format!(
                " (one of the cycles among {} modules that import each other: {})",
                all.len(),
                all.join(", ")
            ));
        }
        out.push(line);
    }
    out
}

/// Each set of two or more modules that reach each other (Tarjan's algorithm), sorted, with one
/// cycle through it as the modules in import order.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(Vec<String>, Vec<String>)> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        sets: Vec<Vec<&'g str>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(lw));
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    set.push(w);
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    self.sets.push(set);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        sets: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    // Within each set, a path back to its smallest module by breadth-first search.
    walk.sets
        .into_iter()
        .map(|set| {
            let members: BTreeSet<&str> = set.iter().copied().collect();
            let start = *members.iter().next().expect("non-empty");
            let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut end = start;
            'search: while let Some(v) = queue.pop_front() {
                for w in graph.get(v).into_iter().flatten() {
                    let w = w.as_str();
                    if !members.contains(w) {
                        continue;
                    }
                    if w == start {
                        end = v;
                        break 'search;
                    }
                    if !prev.contains_key(w) {
                        prev.insert(w, v);
                        queue.push_back(w);
                    }
                }
            }
            let mut path = vec![end.to_string()];
            let mut at = end;
            while at != start {
                at = prev[at];
                path.push(at.to_string());
            }
            path.reverse();
            let set = members.iter().map(|m| m.to_string()).collect();
            (set, path)
        })
        .collect()
}

#[test]
fn imports_run_down_the_layers_without_cycles() {
    let src = std::env::var_os("RTCGATE_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let tree = read_tree(&src);
    assert!(
        tree.len() > 5,
        "read only {} modules from {}",
        tree.len(),
        src.display()
    );
    let found = breaches(&tree);
    assert!(
        found.is_empty(),
        "{}: the import rule is broken:\n  {}",
        src.display(),
        found.join("\n  ")
    );
}

fn tree_of(files: &[(&str, &str)]) -> Tree {
    files
        .iter()
        .map(|(m, t)| (m.to_string(), t.to_string()))
        .collect()
}

#[test]
fn an_upward_import_is_named_with_both_modules() {
    let tree = tree_of(&[
        ("", "pub mod config; pub mod state; pub mod server;"),
        ("config", "use std::path::Path;"),
        ("state", "pub mod snapshot;"),
        (
            "state::snapshot",
            "use crate::config::Config;\nuse crate::server::HttpBuilders;",
        ),
        ("server", "use crate::state::snapshot::Snapshot;"),
    ]);
    let found = breaches(&tree);
    assert!(
        found.contains(
            &"upward import: state::snapshot (state) imports server (data path)".to_string()
        ),
        "{found:?}"
    );
}

#[test]
fn a_cycle_is_named_module_by_module() {
    let tree = tree_of(&[
        ("", "pub mod proxy; pub mod server;"),
        // The same layer, so only the cycle is wrong; a group import and an inline path.
        ("proxy", "use crate::{server::Ctx, config::X};"),
        ("server", "fn f() { crate::proxy::handle(); }"),
        ("config", ""),
    ]);
    assert_eq!(
        breaches(&tree),
        ["import cycle: proxy -> server -> proxy"],
        "the cycle and nothing else"
    );
}

#[test]
fn comments_strings_and_own_children_are_not_imports() {
    let tree = tree_of(&[
        ("", "pub mod state; pub mod proxy;"),
        (
            "state",
            "//! Unlike [`crate::proxy::Handler`], ...\npub mod rooms;\nuse rooms::LiveRooms;\nconst S: &str = \"crate::proxy::x\";",
        ),
        ("state::rooms", "#[cfg(test)] mod tests { use super::*; }"),
        ("proxy", "use crate::state::rooms::LiveRooms;"),
    ]);
    assert_eq!(breaches(&tree), Vec::<String>::new());
    let graph = imports(&tree);
    assert_eq!(graph["proxy"], BTreeSet::from(["state::rooms".to_string()]));
    assert_eq!(graph["state"], BTreeSet::from(["state::rooms".to_string()]));
    assert!(
        graph["state::rooms"].is_empty(),
        "{:?}",
        graph["state::rooms"]
    );
}

#[test]
fn a_module_in_no_layer_is_reported() {
    let tree = tree_of(&[("", "pub mod pool;"), ("pool", "")]);
    assert_eq!(
        breaches(&tree),
        ["pool is in no layer: add it to LAYERS in tests/it/layers.rs"]
    );
}
