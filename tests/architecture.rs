//! The house rules of `src/`, checked on the source: a change that puts SQL
//! outside a store, lets a rules file name a transport type, makes the
//! kernel or a concern reach up into the transports or the wiring, or closes
//! an import circle between top-level modules, fails here with the file and
//! line.

use std::path::{Path, PathBuf};

/// The top-level modules the layering names.
const TRANSPORTS: &str = "api";
const WIRING: &str = "ops";
const KERNEL: &str = "kernel";

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

/// A source file: its path under `src/`, its top-level module, and its code
/// lines with their numbers (comment lines left out).
struct Source {
    file: String,
    top: String,
    lines: Vec<(usize, String)>,
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let top = relative
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let lines = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .map(|(i, line)| (i + 1, line.to_string()))
                .collect();
            Source {
                file: relative,
                top,
                lines,
            }
        })
        .collect()
}

/// The top-level modules a line names as `crate::<module>`.
fn named_modules(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .map(|(at, _)| {
            line[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn sql_lives_only_in_stores() {
    let mut strays = Vec::new();
    for Source { file, lines, .. } in sources() {
        let allowed = file.ends_with("/store.rs") || file == "kernel/db.rs";
        for (number, line) in lines {
            // `query`, `query_as`, `query_scalar`, with or without turbofish.
            if line.contains("sqlx::query") && !allowed {
                strays.push(format!("src/{file}:{number}: {}", line.trim()));
            }
        }
    }
    assert!(
        strays.is_empty(),
        "SQL belongs in the concern's store.rs:\n{}",
        strays.join("\n")
    );
}

#[test]
fn rules_are_free_of_transports() {
    // A concern's rules take plain inputs; converting from the generated
    // protobuf types (or HTTP) happens in its service or the transports.
    let mut wrong = Vec::new();
    for Source { file, lines, .. } in sources() {
        if !file.ends_with("/rules.rs") {
            continue;
        }
        for (number, line) in lines {
            let names_transport = ["pb::", "crate::pb", "tonic::", "axum::", "http::"]
                .iter()
                .any(|t| line.contains(t));
            if names_transport {
                wrong.push(format!("src/{file}:{number}: {}", line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "rules.rs must not name the transports' types:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_kernel_and_the_concerns_never_reach_up() {
    let mut wrong = Vec::new();
    for Source { file, top, lines } in sources() {
        // What this module may not name: the kernel names no other module;
        // a concern names neither the transports nor the wiring; the
        // transports do not name the wiring.
        let forbidden = |named: &str| match top.as_str() {
            WIRING | "lib" | "main" => false,
            TRANSPORTS => named == WIRING,
            KERNEL => named != KERNEL && named != "pb",
            _ => named == TRANSPORTS || named == WIRING,
        };
        for (number, line) in lines {
            for named in named_modules(&line) {
                if forbidden(&named) {
                    wrong.push(format!("src/{file}:{number}: {top} names {named}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering (kernel < concerns < api < ops):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_top_level_modules_import_no_circles() {
    use std::collections::BTreeMap;
    // module -> module it names -> where it first does.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for Source { file, top, lines } in sources() {
        if top == "lib" || top == "main" {
            continue;
        }
        for (number, line) in lines {
            for named in named_modules(&line) {
                if named != top && named != "pb" {
                    edges
                        .entry(top.clone())
                        .or_default()
                        .entry(named)
                        .or_insert_with(|| format!("src/{file}:{number}"));
                }
            }
        }
    }
    // Depth-first search; a module met again on the current path closes a
    // circle, reported with the line behind each step.
    fn visit(
        module: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut circle = path[start..].to_vec();
            circle.push(module.to_string());
            return Some(circle);
        }
        if done.iter().any(|m| m == module) {
            return None;
        }
        path.push(module.to_string());
        for next in edges.get(module).into_iter().flat_map(|e| e.keys()) {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.push(module.to_string());
        None
    }
    let mut done = Vec::new();
    for module in edges.keys() {
        if let Some(circle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = circle
                .windows(2)
                .map(|pair| format!("{} -> {} ({})", pair[0], pair[1], edges[&pair[0]][&pair[1]]))
                .collect();
            panic!(
                "top-level modules import in a circle:\n{}",
                steps.join("\n")
            );
        }
    }
}
