//! The dependency rules of ARCHITECTURE.md, checked against `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: BTreeMap<String, String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
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
    for krate in ["storage", "sync", "web"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(krate)
            .join("src");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains("SystemTime"),
                "{} reads the wall clock",
                path.display()
            );
        }
    }
}
