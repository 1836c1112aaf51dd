//! The layers of `crates/tidings/src` point one way (see `docs/architecture.md`): a top-level
//! module names, by its `crate::` paths, only modules of its own layer or below, no two
//! modules name each other through any chain, and the core imports no web, command-line or
//! broker library. Read from the source text (as the crate map is), outside test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: [&[&str]; 7] = [
    &[
        "locks",
        "throttle",
        "metrics",
        "telemetry",
        "update",
        "selector",
        "sse",
        "envelope",
        "subscriber",
        "admission",
        "hub",
    ],
    &["auth", "bus", "cluster", "consume", "outbound", "webhook"],
    &["config"],
    &["state"],
    &["http"],
    &["server"],
    &["cli"],
];

/// Libraries the core may not name.
const NOT_IN_THE_CORE: [&str; 7] = [
    "axum",
    "hyper",
    "clap",
    "redis",
    "async_nats",
    "lapin",
    "rskafka",
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module {module:?} is in no layer: add it to LAYERS"))
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

/// The names `text` reaches as `crate::<name>`, also inside `use crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or("");
                names.insert(name.to_owned());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_owned());
        }
    }
    names.retain(|n| !n.is_empty() && n != "self" && n != "super");
    names
}

/// The modules each top-level module names.
type Edges = BTreeMap<String, BTreeSet<String>>;

/// Each top-level module's edges, and each file's path and text (test modules cut off).
fn modules() -> (Edges, Vec<(String, String)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut texts = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap().to_owned();
        let targets = edges.entry(module.clone()).or_default();
        targets.extend(crate_paths(&text).into_iter().filter(|t| *t != module));
        texts.push((relative.display().to_string(), text));
    }
    (edges, texts)
}

#[test]
fn every_module_names_only_its_own_layer_or_below() {
    let (edges, _) = modules();
    let mut upward = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            if layer_of(to) > layer_of(from) {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(upward.is_empty(), "modules reaching up: {upward:?}");
}

#[test]
fn no_modules_name_each_other_through_any_chain() {
    let (edges, _) = modules();
    // Depth-first search; a module met again while on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        edges: &'a Edges,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("module cycle: {} -> {module}", path[at..].join(" -> "));
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for next in edges.get(module).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        visit(module, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_core_names_no_web_command_line_or_broker_library() {
    let (_, texts) = modules();
    let core = LAYERS[0];
    let mut leaks = Vec::new();
    for (file, text) in &texts {
        let module = file.split(['/', '.']).next().unwrap();
        if !core.contains(&module) {
            continue;
        }
        for library in NOT_IN_THE_CORE {
            if text.contains(&format!("{library}::")) {
                leaks.push(format!("{file} uses {library}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[test]
fn the_reader_finds_paths_in_uses_and_groups() {
    let paths =
        crate_paths("use crate::{hub::Hub, update};\n let x = crate::bus::X; // crate::self");
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        ["bus", "hub", "update"]
    );
}
