//! The dependency rules of ARCHITECTURE.md, checked against `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = crate::agent::succeed(
        std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1"])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: BTreeMap<String, String> =
        crate::agent::named_fields(&metadata["packages"], "id", "name")
            .into_iter()
            .map(|(id, name)| (id, name.as_str().unwrap().to_string()))
            .collect();
    // Everything each workspace crate pulls in, transitively, for normal (non-dev) builds.
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let direct: BTreeMap<String, Vec<String>> = nodes
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            (n["id"].as_str().unwrap().to_string(), deps)
        })
        .collect();
    let mut out = BTreeMap::new();
    for member in metadata["workspace_members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        let mut seen = BTreeSet::new();
        let mut stack = vec![member.to_string()];
        while let Some(id) = stack.pop() {
            for dep in direct.get(&id).into_iter().flatten() {
                if seen.insert(names[dep].clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        out.insert(names[member].clone(), seen);
    }
    out
}

#[test]
fn storage_has_no_async_runtime_and_no_network() {
    let deps = dependencies();
    let storage = &deps["outpost-storage"];
    for forbidden in [
        "tokio",
        "async-std",
        "rumqttc",
        "axum",
        "hyper",
        "reqwest",
        "outpost-sync",
        "outpost-web",
    ] {
        assert!(
            !storage.contains(forbidden),
            "outpost-storage depends on {forbidden}"
        );
    }
}

#[test]
fn web_and_sync_never_depend_on_each_other() {
    let deps = dependencies();
    assert!(!deps["outpost-web"].contains("outpost-sync"));
    assert!(!deps["outpost-sync"].contains("outpost-web"));
}

#[test]
fn library_crates_never_read_the_wall_clock() {
    // A `SystemTime` may be converted (PromQL's `@` gives one); it may not be read.
    const READS: [&str; 4] = [
        "SystemTime::now",
        "Timestamp::now",
        "Zoned::now",
        "UNIX_EPOCH.elapsed",
    ];
    for krate in ["storage", "sync", "web"] {
        let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(krate)
            .join("src")];
        let mut checked = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for read in READS {
                    assert!(
                        !text.contains(read),
                        "{} reads the wall clock ({read})",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 3, "{krate}: only {checked} files");
    }
}

/// `unsafe` is denied in the workspace and allowed in one place: the read-only `adjtimex(2)`
/// call that no maintained crate wraps. Any other is a new decision, to be argued in
/// ARCHITECTURE.md and here.
#[test]
fn unsafe_code_lives_in_the_clock_discipline_reader_only() {
    const ALLOWED: &str = "src/collect/timex.rs";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let keyword = ["un", "safe"].concat();
    let mut found = Vec::new();
    let mut dirs: Vec<_> = [
        "src", "storage", "sync", "web/src", "benches", "tests", "fuzz",
    ]
    .iter()
    .map(|d| root.join(d))
    .filter(|d| d.exists())
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let uses = text.lines().filter(|line| {
                let code = line.split("//").next().unwrap_or("");
                code.contains(&format!("{keyword} "))
                    || code.contains(&format!("{keyword}{{"))
                    || code.contains(&format!("({keyword}_code"))
            });
            if uses.count() > 0 {
                found.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    assert_eq!(found, vec![ALLOWED.to_string()]);
}

/// The two roles, and the modules that only parse a command line and wire parts together: no
/// other module may name them.
const ROLES: [&str; 2] = ["agent", "hub"];
const COMMANDS: [&str; 5] = ["main", "db", "rules_cmd", "tegrastats_cmd", "demo"];

/// Which of the binary's top-level modules each one names (`crate::x`, or a `super::` path that
/// climbs to the crate root), comments and test modules left out. The library's modules
/// (`src/lib.rs`) cannot name the binary's at all, so they are not in it.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let library: BTreeSet<String> = std::fs::read_to_string(src.join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect();
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap().with_extension("");
        let mut path: Vec<String> = relative
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|last| last == "mod") {
            path.pop();
        }
        let top = path[0].clone();
        if top == "lib" || library.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let named = graph.entry(top.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            named.insert(identifier(&code[at + "crate::".len()..]));
        }
        // `super::` as many times as the file is deep climbs to the crate root.
        let climb = "super::".repeat(path.len());
        for (at, _) in code.match_indices(&climb) {
            let rest = &code[at + climb.len()..];
            if !rest.starts_with("super::") {
                named.insert(identifier(rest));
            }
        }
        named.remove(&top);
        named.remove("");
    }
    graph
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            return Some(path[start..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_agent_and_the_hub_never_import_each_other() {
    let graph = module_graph();
    assert!(graph.contains_key("agent") && graph.contains_key("hub"));
    assert!(!graph["agent"].contains("hub"), "{:?}", graph["agent"]);
    assert!(!graph["hub"].contains("agent"), "{:?}", graph["hub"]);
}

#[test]
fn shared_modules_name_neither_a_role_nor_a_command() {
    for (module, named) in module_graph() {
        if ROLES.contains(&module.as_str()) || COMMANDS.contains(&module.as_str()) {
            continue;
        }
        for above in ROLES.iter().chain(&COMMANDS) {
            assert!(
                !named.contains(*above),
                "src/{module} names {above}: move what both need below both"
            );
        }
    }
}

#[test]
fn the_binarys_modules_have_no_cycles() {
    let mut made_up = BTreeMap::new();
    made_up.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    made_up.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&made_up).is_some(), "the check finds a cycle");
    let graph = module_graph();
    assert!(graph["agent"].contains("alerting"), "the graph is read");
    assert_eq!(find_cycle(&graph), None);
}
