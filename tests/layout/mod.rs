//! The module graph of one crate, read from its source: which module imports
//! from which. Enough of Rust's path rules to find cycles: `use` trees
//! (braces, `self`, globs), inline `crate::`/`super::`/`self::` paths in
//! code, and re-exports followed to the module that defines the name, so a
//! sibling imported through its parent's `pub use` is an edge to the sibling,
//! not to the parent. Test modules (`#[cfg(test)] mod ...`) are left out:
//! a test may look anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside the crate: `[]` is the crate root, `["hub", "ws"]`
/// is `crate::hub::ws`.
pub type Module = Vec<String>;

pub struct Graph {
    /// Each module's file and the edges out of it.
    pub edges: BTreeMap<Module, BTreeSet<Module>>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src` is.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments, string literals and test modules.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal (not a lifetime): skip it whole.
            let end = text[i + 1..]
                .find('\'')
                .map(|e| i + 2 + e)
                .unwrap_or(b.len());
            i = end;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    strip_test_modules(&out)
}

/// Removes `#[cfg(test)] mod name { ... }` blocks (and `#[cfg(test)] mod name;`).
fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        if !after.starts_with("mod ") {
            out.push_str("#[cfg(test)]");
            rest = &rest[at + "#[cfg(test)]".len()..];
            continue;
        }
        let open = after.find(['{', ';']).unwrap_or(after.len());
        if after[open..].starts_with(';') {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap().trim().to_string()];
    };
    let prefix = tree[..open].trim().trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut out = Vec::new();
    for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        for sub in expand(p) {
            if sub == "self" {
                out.push(prefix.to_string());
            } else if prefix.is_empty() {
                out.push(sub);
            } else {
                out.push(format!("{prefix}::{sub}"));
            }
        }
    }
    out
}

/// The `use` declarations of a module's code: (is it `pub`, the paths).
fn uses(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let before = rest[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let end = rest[at..].find(';').map(|e| at + e).unwrap_or(rest.len());
        out.push((public, expand(&rest[at + 3..end])));
        rest = &rest[end..];
    }
    out
}

/// `word` as a whole word (not part of an identifier or a path).
fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(k) = s[from..].find(word) {
        let at = from + k;
        let before_ok = at == 0
            || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':');
        let after = at + word.len();
        let after_ok = after < b.len() && b[after].is_ascii_whitespace();
        if before_ok && after_ok {
            return Some(at);
        }
        from = after;
    }
    None
}

/// Inline paths in code that start at `crate`, `super` or `self`.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(start) {
            let at = from + k;
            let prev = code[..at].chars().last();
            from = at + start.len();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let len = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - at);
            if code[at + len..].starts_with('{') {
                // `use super::{a, b}`: the use tree, read whole by `uses`.
                continue;
            }
            out.push(code[at..at + len].trim_end_matches(':').to_string());
        }
    }
    out
}

/// `path` (as written in module `here`) made absolute: a module path plus
/// the segments after it.
fn absolute(here: &Module, path: &str) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String>;
    let mut i = 0;
    match *segs.first()? {
        "crate" => {
            base = Vec::new();
            i = 1;
        }
        "self" => {
            base = here.clone();
            i = 1;
        }
        "super" => {
            base = here.clone();
            while segs.get(i) == Some(&"super") {
                base.pop()?;
                i += 1;
            }
        }
        _ => {
            // A path into a child module (`use child::X;` in 2018 paths).
            base = here.clone();
        }
    }
    base.extend(segs[i..].iter().map(|s| s.to_string()));
    Some(base)
}

impl Graph {
    /// The graph of the crate whose sources are under `src`.
    pub fn of_crate(src: &Path) -> Graph {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        let mut code = BTreeMap::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            code.insert(module_of(src, f), code_of(&text));
        }
        let modules: BTreeSet<Module> = code.keys().cloned().collect();
        // Re-exports: (module, name) -> the absolute path it stands for.
        let mut reexports: BTreeMap<(Module, String), Vec<String>> = BTreeMap::new();
        for (m, c) in &code {
            let declared = child_modules(c);
            for (public, paths) in uses(c) {
                if !public {
                    continue;
                }
                for p in paths {
                    if is_external(&p, &declared) {
                        // Re-exported from another crate: no edge in this one.
                        if let Some(name) = p.rsplit("::").next() {
                            reexports.insert((m.clone(), name.to_string()), Vec::new());
                        }
                        continue;
                    }
                    if let Some(abs) = absolute(m, &p) {
                        if let Some(name) = abs.last() {
                            if name != "*" {
                                reexports.insert((m.clone(), name.clone()), abs.clone());
                            }
                        }
                    }
                }
            }
        }
        let resolve = |abs: &[String]| -> Option<Module> {
            let mut abs = abs.to_vec();
            for _ in 0..8 {
                // The longest prefix that is a module of this crate.
                let k = (0..=abs.len())
                    .rev()
                    .find(|&k| modules.contains(&abs[..k]))?;
                let module = abs[..k].to_vec();
                match abs
                    .get(k)
                    .and_then(|name| reexports.get(&(module.clone(), name.clone())))
                {
                    Some(target) if target.is_empty() => return None,
                    Some(target) if target.as_slice() != abs.as_slice() => {
                        let mut next = target.clone();
                        next.extend(abs[k + 1..].iter().cloned());
                        abs = next;
                    }
                    _ => return Some(module),
                }
            }
            None
        };
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (m, c) in &code {
            let declared: BTreeSet<String> = child_modules(c);
            let mut paths: Vec<String> = uses(c).into_iter().flat_map(|(_, p)| p).collect();
            paths.extend(inline_paths(c));
            let out = edges.entry(m.clone()).or_default();
            for p in paths {
                if is_external(&p, &declared) {
                    continue;
                }
                let Some(abs) = absolute(m, &p) else { continue };
                if let Some(target) = resolve(&abs) {
                    out.insert(target);
                }
            }
            out.remove(m);
        }
        Graph { edges }
    }

    /// The cycles: strongly connected components of more than one module.
    pub fn cycles(&self) -> Vec<Vec<Module>> {
        // Tarjan's algorithm.
        struct T<'a> {
            g: &'a BTreeMap<Module, BTreeSet<Module>>,
            index: BTreeMap<&'a Module, usize>,
            low: BTreeMap<&'a Module, usize>,
            stack: Vec<&'a Module>,
            on: BTreeSet<&'a Module>,
            next: usize,
            out: Vec<Vec<Module>>,
        }
        fn visit<'a>(t: &mut T<'a>, v: &'a Module) {
            t.index.insert(v, t.next);
            t.low.insert(v, t.next);
            t.next += 1;
            t.stack.push(v);
            t.on.insert(v);
            if let Some(ws) = t.g.get(v) {
                for w in ws {
                    let Some((w, _)) = t.g.get_key_value(w) else {
                        continue;
                    };
                    if !t.index.contains_key(w) {
                        visit(t, w);
                        let l = t.low[w].min(t.low[v]);
                        t.low.insert(v, l);
                    } else if t.on.contains(w) {
                        let l = t.index[w].min(t.low[v]);
                        t.low.insert(v, l);
                    }
                }
            }
            if t.low[v] == t.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on.remove(w);
                    scc.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    t.out.push(scc);
                }
            }
        }
        let mut t = T {
            g: &self.edges,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v) {
                visit(&mut t, v);
            }
        }
        t.out
    }
}

/// A path into another crate (or std): not `crate`, `super`, `self` or a
/// child module the file declares.
fn is_external(path: &str, declared: &BTreeSet<String>) -> bool {
    let first = path.split("::").next().unwrap_or("").trim();
    !matches!(first, "crate" | "super" | "self") && !declared.contains(first)
}

/// The names of the modules `code` declares (`mod x;`, `pub mod x;`).
fn child_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "mod") {
        let after = rest[at + 4..].trim_start();
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        rest = &rest[at + 4..];
    }
    out
}

/// A module path as Rust writes it.
pub fn show(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", m.join("::"))
    }
}

#[test]
fn the_reader_sees_uses_reexports_and_cycles() {
    assert_eq!(expand("a::{b, c::{d, self}}"), ["a::b", "a::c::d", "a::c"]);
    assert_eq!(
        uses("pub use x::Y;\nuse crate::{a, b::C as D};"),
        [
            (true, vec!["x::Y".to_string()]),
            (
                false,
                vec!["crate::a".to_string(), "crate::b::C".to_string()]
            )
        ]
    );
    let code = code_of("use a::b; // use c::d;\nlet s = \"crate::x\";\n#[cfg(test)]\nmod tests { use super::*; }\n");
    assert!(!code.contains("crate::x") && !code.contains("use c") && !code.contains("super"));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("hub")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod hub;\n").unwrap();
    std::fs::write(
        src.join("hub/mod.rs"),
        "mod a;\nmod b;\npub use a::A;\npub use b::B;\n",
    )
    .unwrap();
    std::fs::write(src.join("hub/a.rs"), "use crate::hub::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("hub/b.rs"), "pub struct B;\n").unwrap();
    // a reaches b through the parent's re-export: an edge to b, no cycle.
    let g = Graph::of_crate(src);
    assert!(g.edges[&vec!["hub".to_string(), "a".to_string()]]
        .contains(&vec!["hub".to_string(), "b".to_string()]));
    assert!(g.cycles().is_empty());
    // A braced import from the parent names the items, not the parent.
    std::fs::write(src.join("hub/a.rs"), "use super::{B};\npub struct A;\n").unwrap();
    assert!(Graph::of_crate(src).cycles().is_empty());
    // b importing what its parent defines while the parent imports b: a cycle.
    std::fs::write(
        src.join("hub/mod.rs"),
        "mod a;\nmod b;\npub use a::A;\npub use b::B;\npub struct Shared;\n",
    )
    .unwrap();
    std::fs::write(src.join("hub/b.rs"), "use super::Shared;\npub struct B;\n").unwrap();
    let cycles = Graph::of_crate(src).cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
}
