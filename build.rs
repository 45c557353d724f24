//! Release builds of the `outpost` binary place the functions a running agent executes before
//! the rest of the code, with the linker script `cross/agent-hot.ld`. The agent's resident memory
//! is mostly the binary's code pages, and the kernel maps them in 64 KiB windows around each page
//! fault: with the agent's code spread over the whole binary, nearly every window was resident.
//! `cross/hot-functions.sh` writes the script from a profile; cross/README.md explains.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=cross/agent-hot.ld");
    println!("cargo:rerun-if-env-changed=OUTPOST_NO_CODE_LAYOUT");
    println!("cargo:rerun-if-env-changed=OUTPOST_LINK_MAP");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let elf = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if !release || !elf || env::var_os("OUTPOST_NO_CODE_LAYOUT").is_some() {
        return;
    }
    let script = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("cross/agent-hot.ld");
    // CARGO_ENCODED_RUSTFLAGS holds the flags of .cargo/config.toml, or a RUSTFLAGS variable's
    // in their place: without v0 names the script's patterns match next to nothing.
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !rustflags.contains("symbol-mangling-version=v0") {
        println!(
            "cargo:warning=RUSTFLAGS lacks `-C symbol-mangling-version=v0`: \
             cross/agent-hot.ld will not lay out the agent's code (see cross/README.md)"
        );
    }
    if script.exists() {
        // The script only adds an output section and INSERTs it before `.text`, so the linker's
        // default layout stays in force for everything else (GNU ld and LLD alike).
        println!(
            "cargo:rustc-link-arg-bin=outpost=-Wl,-T,{}",
            script.display()
        );
    }
    // Where each function went, for checking the layout: `OUTPOST_LINK_MAP=outpost.map`.
    if let Some(map) = env::var_os("OUTPOST_LINK_MAP") {
        println!(
            "cargo:rustc-link-arg-bin=outpost=-Wl,-Map={}",
            map.to_string_lossy()
        );
    }
}
