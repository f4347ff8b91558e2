//! The harness's layer rule, checked from the source: a module may import
//! (`crate::...` paths, in `use` lines or inline) only modules of lower
//! layers or its own module tree, and no two files import each other in a
//! circle. The layers are written down in `docs/architecture.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module path belongs to the entry with the
/// longest matching prefix (`scenario::exec` is above `model`, the rest of
/// `scenario` below it). Modules in one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["text", "checks", "observe", "side", "size", "proxy"],
    &["qmp_client"],
    &["process"],
    &["backend", "telemetry"],
    &["diagnostics", "report"],
    &["vm"],
    &["pair"],
    &["scenario"],
    &["model"],
    &["scenario::exec", "scenario::file_check"],
    &["catalog"],
    &["bench", "fuzz", "replay", "compare"],
    &["cli_run"],
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `scenario/exec.rs` -> `scenario::exec`; `model/mod.rs` -> `model`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without `//` comments (doc links are not imports).
fn strip_comments(src: &str) -> String {
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

/// Parses the path after `crate::` at `i`, expanding `{a, b::c}` groups,
/// into `out` (module paths, items included).
fn paths_at(s: &[u8], mut i: usize, prefix: &str, out: &mut Vec<String>) -> usize {
    let mut path = prefix.to_string();
    loop {
        if s.get(i) == Some(&b'{') {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                i = paths_at(s, i, &path, out);
                // Skip `as name` and anything up to the next item.
                while i < s.len() && s[i] != b',' && s[i] != b'}' {
                    i += 1;
                }
            }
        }
        let (id, j) = ident(s, i);
        if id.is_empty() {
            break;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(&id);
        i = j;
        if s.get(i..i + 2) == Some(b"::") {
            i += 2;
        } else {
            break;
        }
    }
    if !path.is_empty() && path != "self" {
        out.push(path.trim_end_matches("::self").to_string());
    }
    i
}

fn crate_paths(src: &str) -> Vec<String> {
    let text = strip_comments(src);
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = text[from..].find("crate::") {
        let at = from + k;
        let boundary = at == 0 || !(s[at - 1].is_ascii_alphanumeric() || s[at - 1] == b'_');
        from = at + "crate::".len();
        if boundary {
            paths_at(s, from, "", &mut out);
        }
    }
    out
}

/// The layer index and layer prefix of a module path.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (n, layer) in LAYERS.iter().enumerate() {
        for &p in *layer {
            let matches = module == p || module.starts_with(&format!("{p}::"));
            if matches && best.is_none_or(|(_, b)| p.len() > b.len()) {
                best = Some((n, p));
            }
        }
    }
    best
}

struct Source {
    module: String,
    imports: Vec<String>,
}

fn sources() -> Vec<Source> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_path_buf();
            // The crate roots: lib.rs declares the modules, main.rs is the
            // binary (it imports `migtest::`, not `crate::`).
            if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
                return None;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            Some(Source {
                module: module_of(&rel),
                imports: crate_paths(&text),
            })
        })
        .collect()
}

#[test]
fn parser_reads_groups_and_inline_paths() {
    let src = "use crate::a::{b::{C, d}, e as f};\nlet x = crate::g::h(1); // crate::no\n\
               /// [`crate::doc`]\nuse crate::i::{self, J};";
    assert_eq!(
        crate_paths(src),
        ["a::b::C", "a::b::d", "a::e", "g::h", "i", "i::J"]
    );
}

#[test]
fn every_module_has_a_layer() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|s| layer_of(&s.module).is_none())
        .map(|s| s.module)
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer (add them to LAYERS here and to docs/architecture.md): {missing:?}"
    );
}

#[test]
fn no_module_imports_a_higher_layer_or_a_sibling() {
    let mut bad = Vec::new();
    for s in sources() {
        let Some((from, from_p)) = layer_of(&s.module) else {
            continue;
        };
        for imp in &s.imports {
            let Some((to, to_p)) = layer_of(imp) else {
                // Not a harness module (e.g. a macro or a crate-root item).
                continue;
            };
            if to > from || (to == from && to_p != from_p) {
                bad.push(format!(
                    "{} (layer {from}, {from_p}) imports crate::{imp} (layer {to}, {to_p})",
                    s.module
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "layer rule broken (see docs/architecture.md):\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn no_circle_of_files() {
    let srcs = sources();
    let modules: BTreeSet<&str> = srcs.iter().map(|s| s.module.as_str()).collect();
    // An import names the file of its longest module prefix.
    let file_of = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").collect();
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| modules.contains(m.as_str()))
    };
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for s in &srcs {
        let e = edges.entry(s.module.as_str()).or_default();
        for imp in &s.imports {
            if let Some(f) = file_of(imp) {
                if f != s.module {
                    e.insert(f);
                }
            }
        }
    }
    // Depth-first search with colours; report the first circle found.
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<&'a str, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|x| *x == m).unwrap();
                let mut c: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
                c.push(m.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(m, 1);
        stack.push(m);
        for n in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(n.as_str(), edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(m, &edges, &mut state, &mut stack) {
            panic!("files import each other in a circle: {}", c.join(" -> "));
        }
    }
}
