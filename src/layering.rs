//! The architecture, checked: imports point down the layers and never in a
//! circle. Read from the source's own paths (`crate::…`, `super::…`), so a
//! new upward import fails CI instead of waiting for a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's floor. A module may use its own floor's other
/// modules (the ground floor's among themselves, without a circle) and any
/// lower floor, never a higher one.
const FLOORS: &[(&str, u8)] = &[
    ("types", 0),
    ("proto", 0),
    ("grpc", 0),
    ("error", 0),
    ("validate", 0),
    ("limits", 0),
    ("failpoint", 0),
    ("reload", 0),
    ("stagger", 0),
    ("tls", 0),
    ("auth", 0),
    ("config", 0),
    ("metrics", 0),
    ("store", 1),
    ("raft", 2),
    ("cluster", 3),
    ("api", 4),
    ("http", 4),
    ("client", 4),
    ("node", 5),
    ("cli", 6),
    // The fuzz targets' entry points drive any layer.
    ("fuzzing", 7),
];

/// Faces on one floor that must not know each other.
const FACES: &[&str] = &["api", "http", "client"];

/// Module path (`store::state_machine::apply`) → its source file.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut inner = prefix.to_vec();
                inner.push(name);
                walk(&path, &inner, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut module = prefix.to_vec();
                if name != "mod" && !(prefix.is_empty() && (name == "lib" || name == "main")) {
                    module.push(name);
                }
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The module paths a file refers to: `crate::a::b` and `super::c` made
/// absolute (groups such as `super::{a, b::c}` expanded), cut to the
/// longest prefix that is a module.
fn references(
    module: &[String],
    text: &str,
    known: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    for start in (0..code.len()).filter(|i| code.is_char_boundary(*i)) {
        let rest = &code[start..];
        let at_word = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        if !at_word || !(rest.starts_with("crate::") || rest.starts_with("super::")) {
            continue;
        }
        for relative in expand(rest) {
            let mut segments = relative.into_iter();
            let mut path: Vec<String> = match segments.next().as_deref() {
                Some("crate") => Vec::new(),
                // `super` of module a::b (`a/b.rs`) is a; of module a
                // (`a/mod.rs`) the crate root.
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            for segment in segments {
                if segment == "super" {
                    path.pop();
                } else {
                    path.push(segment);
                }
            }
            while !path.is_empty() && !known.contains(&path) {
                path.pop();
            }
            if !path.is_empty() && !module.starts_with(&path) {
                found.insert(path);
            }
        }
    }
    found
}

/// The paths a `use` tree at the start of `text` names: `a::{b, c::d}` →
/// `a::b`, `a::c::d`.
fn expand(text: &str) -> Vec<Vec<String>> {
    fn tree(text: &str, pos: &mut usize) -> Vec<Vec<String>> {
        let bytes = text.as_bytes();
        let skip_space = |pos: &mut usize| {
            while *pos < bytes.len() && bytes[*pos].is_ascii_whitespace() {
                *pos += 1;
            }
        };
        let mut prefix = Vec::new();
        loop {
            skip_space(pos);
            if *pos < bytes.len() && bytes[*pos] == b'{' {
                *pos += 1;
                let mut paths = Vec::new();
                loop {
                    skip_space(pos);
                    if *pos >= bytes.len() || bytes[*pos] == b'}' {
                        *pos += 1;
                        break;
                    }
                    for inner in tree(text, pos) {
                        paths.push([prefix.clone(), inner].concat());
                    }
                    skip_space(pos);
                    // `x as y`: the alias names nothing new.
                    if text[*pos..].starts_with("as ") {
                        *pos += 3;
                        skip_space(pos);
                        while *pos < bytes.len()
                            && (bytes[*pos].is_ascii_alphanumeric() || bytes[*pos] == b'_')
                        {
                            *pos += 1;
                        }
                        skip_space(pos);
                    }
                    if *pos < bytes.len() && bytes[*pos] == b',' {
                        *pos += 1;
                    }
                }
                return paths;
            }
            let begin = *pos;
            while *pos < bytes.len() && (bytes[*pos].is_ascii_alphanumeric() || bytes[*pos] == b'_')
            {
                *pos += 1;
            }
            if *pos == begin {
                return vec![prefix];
            }
            prefix.push(text[begin..*pos].to_string());
            if text[*pos..].starts_with("::") {
                *pos += 2;
            } else {
                return vec![prefix];
            }
        }
    }
    tree(text, &mut 0)
}

/// Edges between the children of `parent` (imports from one child's
/// subtree into another's); the parent's own file is left out, since a
/// folder's `mod.rs` declares and re-exports its children.
fn sibling_edges(
    parent: &[String],
    graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let child_of = |m: &[String]| -> Option<String> {
        (m.len() > parent.len() && m.starts_with(parent)).then(|| m[parent.len()].clone())
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in graph {
        let Some(a) = child_of(from) else { continue };
        for to in targets {
            if let Some(b) = child_of(to) {
                if a != b {
                    edges.entry(a.clone()).or_default().insert(b);
                }
            }
        }
    }
    edges
}

/// A circle in `edges`, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let known: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    files
        .iter()
        .filter(|(module, _)| !module.is_empty() && module.as_slice() != ["layering"])
        .map(|(module, path)| {
            let text = std::fs::read_to_string(path).expect("read a source file");
            (module.clone(), references(module, &text, &known))
        })
        .collect()
}

#[test]
fn imports_point_down_the_floors_and_faces_do_not_know_each_other() {
    let floor = |m: &str| {
        FLOORS
            .iter()
            .find(|(name, _)| *name == m)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("module {m} has no floor in layering::FLOORS"))
    };
    let mut wrong = Vec::new();
    for (from, targets) in import_graph() {
        for to in targets {
            let (a, b) = (from[0].as_str(), to[0].as_str());
            if a == b {
                continue;
            }
            let sideways = FACES.contains(&a) && FACES.contains(&b);
            if floor(b) > floor(a) || sideways {
                wrong.push(format!("{} imports {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

/// The README's architecture section and ARCHITECTURE.md name every room:
/// a module added without a floor, or left out of the two pages a newcomer
/// reads, fails here.
#[test]
fn every_top_level_module_has_a_floor_and_is_in_both_architecture_pages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |file: &str| std::fs::read_to_string(root.join(file)).expect(file);
    let readme = read("README.md");
    let section = readme
        .split("\n## Architecture\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's architecture section");
    let architecture = read("ARCHITECTURE.md");
    let src = root.join("src");
    let top: BTreeSet<String> = modules(&src)
        .into_keys()
        .filter_map(|module| module.first().cloned())
        .filter(|name| name != "layering")
        .collect();
    let mut missing = Vec::new();
    for name in top {
        let path = if src.join(&name).is_dir() {
            format!("{name}/")
        } else {
            format!("{name}.rs")
        };
        if !FLOORS.iter().any(|(floor, _)| *floor == name) {
            missing.push(format!("{path}: no floor in layering::FLOORS"));
        }
        if !section.contains(&format!("`src/{path}`")) {
            missing.push(format!("{path}: not in the README's architecture table"));
        }
        if !architecture.contains(&path) {
            missing.push(format!("{path}: not in ARCHITECTURE.md"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = import_graph();
    let mut parents: BTreeSet<Vec<String>> = graph
        .keys()
        .flat_map(|m| (0..m.len()).map(|i| m[..i].to_vec()))
        .collect();
    parents.insert(Vec::new());
    for parent in parents {
        if let Some(found) = circle(&sibling_edges(&parent, &graph)) {
            panic!(
                "modules under crate::{} import in a circle: {}",
                parent.join("::"),
                found.join(" → ")
            );
        }
    }
}

#[test]
fn the_checks_see_an_upward_import_and_a_circle() {
    let known: BTreeSet<Vec<String>> = [vec!["store".to_string()], vec!["node".to_string()]]
        .into_iter()
        .collect();
    let store = vec!["store".to_string()];
    let refs = references(&store, "use crate::node::Node;\n// crate::api", &known);
    assert_eq!(refs, BTreeSet::from([vec!["node".to_string()]]));
    let paths = expand("super::{a, b::{c, D}, e as f};");
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        names,
        ["super::a", "super::b::c", "super::b::D", "super::e"]
    );
    let edges = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert!(circle(&edges).is_some());
    let edges = BTreeMap::from([("a".to_string(), BTreeSet::from(["b".to_string()]))]);
    assert!(circle(&edges).is_none());
}
