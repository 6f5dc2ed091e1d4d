//! The import rules of the workspace, checked on the sources: no module of any crate imports
//! one that imports it back (directly or around a circle), and the controller's layers import
//! only downwards: `state` nothing of `decide` or `run`, `decide` nothing of `run`. Test code
//! (`#[cfg(test)]` modules and what follows `mod tests`) may reach anywhere and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const CRATES: [&str; 6] = ["model", "controller", "lb-pod", "agent", "contract", "kubectl-hostlb"];

/// A crate's modules, by path (`decide::placement`; the crate root is ``), each with the
/// modules it refers to.
fn module_graph(source_root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    collect(source_root, source_root, &mut files);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &files {
        let code = without_tests(text);
        let mut uses = BTreeSet::new();
        for (index, _) in code.match_indices("crate::") {
            let path = path_at(&code[index + "crate::".len()..]);
            uses.extend(longest_module(&modules, &path));
        }
        // Paths into its own children, as `use child::item;` in a `mod.rs`.
        for line in code.lines().map(str::trim).filter(|l| l.starts_with("use ") || l.starts_with("pub use ")) {
            let path = path_at(line.trim_start_matches("pub ").trim_start_matches("use "));
            let child = if module.is_empty() { path.clone() } else { format!("{module}::{path}") };
            if !path.starts_with("crate::") {
                uses.extend(longest_module(&modules, &child).filter(|found| found != module));
            }
        }
        uses.remove(module);
        uses.remove("");
        graph.insert(module.clone(), uses);
    }
    graph.remove("");
    graph
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            let text = fs::read_to_string(&path).expect("source file");
            if !is_test_only(root, &path) && !parts.iter().any(|p| p == "bin") {
                files.insert(parts.join("::"), text);
            }
        }
    }
}

/// Whether the parent declares the file's module under `#[cfg(test)]` (by name, or by
/// `#[path]` from a file beside it).
fn is_test_only(root: &Path, file: &Path) -> bool {
    let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = file.parent().unwrap();
    let parents: Vec<PathBuf> = if stem == "mod" {
        let up = dir.parent().unwrap();
        vec![up.join(format!("{}.rs", dir.file_name().unwrap().to_string_lossy())), up.join("mod.rs")]
    } else {
        // A `#[path]` declaration may stand in any file of the folder: `x.rs` declares its
        // tests in `x_tests.rs` beside it.
        let siblings = fs::read_dir(dir).expect("source folder").filter_map(|entry| Some(entry.ok()?.path()));
        siblings.chain([dir.with_extension("rs")]).collect()
    };
    let name = if stem == "mod" { dir.file_name().unwrap().to_string_lossy().into_owned() } else { stem };
    parents.iter().filter(|p| p.starts_with(root)).filter_map(|p| fs::read_to_string(p).ok()).any(|parent| {
        let lines: Vec<&str> = parent.lines().map(str::trim).collect();
        lines.windows(2).any(|pair| {
            let declares = pair[1].ends_with(&format!("mod {name};")) || pair[0].contains(&format!("\"{name}.rs\""));
            declares && pair[0].contains("cfg(test)")
                || pair[0].contains("cfg(test)") && pair[1].contains(&format!("\"{name}.rs\""))
        })
    })
}

fn without_tests(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut].lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// `a::b::c` from the start of `text`, up to the first character that is not part of a path.
fn path_at(text: &str) -> String {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
    text[..end].trim_end_matches(':').to_string()
}

fn longest_module(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|candidate| modules.contains(candidate))
}

/// A circle of modules, if the graph has one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            return Some(path[start..].iter().cloned().chain([node.to_string()]).collect());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn no_module_of_any_crate_imports_one_that_imports_it_back() {
    for krate in CRATES {
        let graph = module_graph(&workspace().join(krate).join("src"));
        assert!(graph.len() > 1 || krate == "contract", "{krate}: found only {:?}", graph.keys());
        assert_eq!(circle(&graph), None, "an import circle in {krate}");
    }
}

#[test]
fn the_controllers_layers_import_only_downwards() {
    let graph = module_graph(&workspace().join("controller/src"));
    let layer = |module: &str| module.split("::").next().unwrap_or_default().to_string();
    let below: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("state", &[][..]),
        ("decide", &["state"][..]),
        ("run", &["state", "decide", "error"][..]),
        ("error", &[][..]),
    ]);
    for (module, uses) in &graph {
        let own = layer(module);
        let allowed = below.get(own.as_str()).unwrap_or_else(|| panic!("{module} is in no layer"));
        for used in uses.iter().filter(|used| layer(used) != own) {
            assert!(allowed.contains(&layer(used).as_str()), "{module} imports {used}, a layer above or beside it");
        }
    }
    for layer in ["state", "decide", "run"] {
        assert!(graph.keys().any(|module| module.starts_with(&format!("{layer}::"))), "no module in {layer}");
    }
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(circle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let line =
        BTreeMap::from([("a".to_string(), BTreeSet::from(["b".to_string()])), ("b".to_string(), BTreeSet::new())]);
    assert_eq!(circle(&line), None);
}
