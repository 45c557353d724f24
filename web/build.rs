//! Bundles the dashboard's front-end (`frontend/`, managed with npm) into `OUT_DIR/dist`, which
//! the crate embeds. `npm ci` runs in a copy of the package files under `OUT_DIR`, so the source
//! tree is left as it is; it runs again only when `package-lock.json` changes.
//! `OUTPOST_WEB_DIST=DIR` takes an already bundled `DIR` (app.js, app.css, index.html) instead,
//! for machines without Node.js.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let frontend = manifest.join("frontend");
    let dist = out.join("dist");
    println!("cargo:rerun-if-env-changed=OUTPOST_WEB_DIST");
    for name in ["package.json", "package-lock.json", "build.mjs", "src"] {
        println!("cargo:rerun-if-changed={}", frontend.join(name).display());
    }
    if let Some(prebuilt) = std::env::var_os("OUTPOST_WEB_DIST") {
        let prebuilt = PathBuf::from(prebuilt);
        std::fs::create_dir_all(&dist).expect("creating OUT_DIR/dist");
        for name in ["app.js", "app.css", "index.html"] {
            std::fs::copy(prebuilt.join(name), dist.join(name)).unwrap_or_else(|e| {
                panic!(
                    "OUTPOST_WEB_DIST: cannot copy {}: {e}",
                    prebuilt.join(name).display()
                )
            });
        }
        return;
    }
    let npm_dir = out.join("npm");
    std::fs::create_dir_all(&npm_dir).expect("creating OUT_DIR/npm");
    let lock_changed = copy_if_changed(&frontend, &npm_dir, "package-lock.json");
    copy_if_changed(&frontend, &npm_dir, "package.json");
    copy_if_changed(&frontend, &npm_dir, "build.mjs");
    if lock_changed || !npm_dir.join("node_modules").join("uplot").exists() {
        run(
            Command::new(npm())
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&npm_dir),
            "npm ci",
        );
    }
    run(
        Command::new("node")
            .arg(npm_dir.join("build.mjs"))
            .arg(&frontend)
            .arg(&dist),
        "node build.mjs",
    );
}

fn npm() -> &'static str {
    if cfg!(windows) {
        "npm.cmd"
    } else {
        "npm"
    }
}

fn copy_if_changed(from: &Path, to: &Path, name: &str) -> bool {
    let source = std::fs::read(from.join(name))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", from.join(name).display()));
    if std::fs::read(to.join(name)).ok().as_deref() == Some(&source[..]) {
        return false;
    }
    std::fs::write(to.join(name), source).expect("writing into OUT_DIR");
    true
}

fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{what} failed ({status}) while bundling the dashboard"),
        Err(error) => panic!(
            "{what} could not start ({error}): the dashboard is bundled with Node.js 18+ and npm; \
             install them (Debian: apt-get install nodejs npm), or set OUTPOST_WEB_DIST to a \
             directory with an already bundled app.js, app.css and index.html"
        ),
    }
}
