//! The tegrastats parser against the real lines in `tests/data/tegrastats/` (every Jetson
//! generation from TX1 to Thor) and against jetson-stats' own parser on the same lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use outpost::tegrastats::{self, Engine};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tegrastats")
        .join(name)
}

/// Every real line: the samples' `line` column and both recorded logs.
fn real_lines() -> Vec<String> {
    let samples = std::fs::read_to_string(data("samples.tsv")).unwrap();
    let mut lines: Vec<String> = samples
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(3).expect("line column").to_string())
        .collect();
    for log in [
        "tx2-jetpack4-2660s.log.zst",
        "xavier-nx-jp5-nonroot-103s.log.zst",
    ] {
        let bytes = zstd::decode_all(std::fs::File::open(data(log)).unwrap()).unwrap();
        lines.extend(
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    lines
}

#[test]
fn every_real_line_parses_without_unknown_tokens() {
    let lines = real_lines();
    assert_eq!(lines.len(), 48 + 2660 + 103);
    for line in &lines {
        let parsed = tegrastats::parse(line);
        assert!(parsed.unknown.is_empty(), "{:?} in {line}", parsed.unknown);
        assert!(parsed.ram.is_some(), "no RAM in {line}");
        assert!(parsed.cpus.is_some(), "no CPUs in {line}");
        assert!(
            !parsed.temperatures.is_empty() || line.contains("cpu ["),
            "no temperatures in {line}"
        );
        // With or without the trailing newline, the same result.
        assert_eq!(tegrastats::parse(&format!("{line}\n")), parsed);
    }
}

#[test]
fn the_command_prints_one_object_per_line_with_exactly_the_schema_keys() {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["tegrastats", "parse", data("samples.tsv").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let keys = [
        "timestamp",
        "ram",
        "swap",
        "iram",
        "cpus",
        "mts",
        "engines",
        "temperatures_c",
        "rails_mw",
        "unknown",
    ];
    // The header line of the TSV is a line too: it parses to nothing but unknown tokens.
    assert_eq!(text.lines().count(), 49);
    for line in text.lines() {
        let object: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let got: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(got, keys);
    }
}

fn python_with_jtop() -> PathBuf {
    if let Some(python) = std::env::var_os("OUTPOST_JTOP_PYTHON") {
        return PathBuf::from(python);
    }
    // A private virtual environment with jetson-stats from PyPI, made once per target dir.
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("jtop-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import jtop.core.tegra_parse"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "the jetson-stats parity test needs python3 with venv (Debian: python3-venv), \
             or OUTPOST_JTOP_PYTHON pointing at a python that imports jtop"
        );
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "jetson-stats==7.2.2"])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install jetson-stats failed"
        );
    }
    python
}

fn unit_bytes(unit: &Value) -> u64 {
    match unit.as_str() {
        Some("k") => 1 << 10,
        Some("M") => 1 << 20,
        Some("G") => 1 << 30,
        other => panic!("unit {other:?}"),
    }
}

#[test]
fn values_agree_with_jetson_stats_wherever_jtop_is_right() {
    let lines = real_lines();
    let mut child = Command::new(python_with_jtop())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jtop_parity.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = lines.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success());
    let jtop: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jtop.len(), lines.len());

    let mut compared = 0usize;
    let mut temperatures = 0usize;
    for (line, theirs) in lines.iter().zip(&jtop) {
        assert!(
            theirs["error"].is_null(),
            "jtop failed on {line}: {}",
            theirs["error"]
        );
        let ours = tegrastats::parse(line);
        let mut same = |what: &str, a: u64, b: u64| {
            assert_eq!(a, b, "{what} differs from jtop in {line}");
            compared += 1;
        };
        let same_f64 = |what: &str, a: f64, b: f64| {
            assert_eq!(a, b, "{what} differs from jtop in {line}");
            1
        };
        // jtop's sizes: a number and the unit beside it.
        let size = |object: &Value, field: &str| {
            object[field].as_u64().unwrap() * unit_bytes(&object["unit"])
        };
        let present = |name: &str| theirs[name].as_object().is_some_and(|o| !o.is_empty());
        if present("ram") {
            let (ram, ours) = (&theirs["ram"], ours.ram.expect("RAM"));
            let (lfb, blocks) = (&ram["lfb"], ram["lfb"]["nblock"].as_u64().unwrap());
            same("RAM used", ours.used_bytes, size(ram, "use"));
            same("RAM total", ours.total_bytes, size(ram, "tot"));
            same("RAM lfb blocks", ours.lfb_blocks, blocks);
            same("RAM lfb size", ours.lfb_block_bytes, size(lfb, "size"));
        }
        if present("swap") {
            let (swap, ours) = (&theirs["swap"], ours.swap.expect("SWAP"));
            let cached = &swap["cached"];
            same("SWAP used", ours.used_bytes, size(swap, "use"));
            same("SWAP total", ours.total_bytes, size(swap, "tot"));
            same("SWAP cached", ours.cached_bytes, size(cached, "size"));
        }
        if present("iram") {
            let (iram, ours) = (&theirs["iram"], ours.iram.expect("IRAM"));
            same("IRAM used", ours.used_bytes, size(iram, "use"));
            same("IRAM total", ours.total_bytes, size(iram, "tot"));
            same("IRAM lfb", ours.lfb_bytes, size(&iram["lfb"], "size"));
        }
        if let Some(mts) = theirs["mts"].as_object().filter(|o| !o.is_empty()) {
            // jtop copies fg into bg; only fg is comparable.
            same(
                "MTS fg",
                ours.mts.expect("MTS").fg_percent,
                mts["fg"].as_u64().unwrap(),
            );
        }
        let their_cpus = theirs["cpus"].as_object().unwrap();
        if !their_cpus.is_empty() {
            let cpus = ours.cpus.as_ref().expect("CPUs");
            assert_eq!(cpus.len(), their_cpus.len(), "core count in {line}");
            for (index, core) in cpus.iter().enumerate() {
                let theirs = &their_cpus[&(index + 1).to_string()];
                match core {
                    None => {
                        assert_eq!(theirs, &serde_json::json!({}), "core {index} off in {line}")
                    }
                    Some(core) => {
                        same(
                            "CPU load",
                            core.load_percent,
                            theirs["val"].as_u64().unwrap(),
                        );
                        if let Some(frq) = theirs["frq"].as_u64() {
                            same("CPU MHz", core.freq_mhz.expect("CPU MHz"), frq / 1000);
                        }
                    }
                }
            }
        }
        for (name, theirs) in theirs["engines"].as_object().unwrap() {
            let (_, engine) = ours
                .engines
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("engine {name} missing in {line}"));
            let Engine::On {
                load_percent,
                freq_mhz,
                ..
            } = engine
            else {
                panic!("engine {name} off here but not for jtop in {line}")
            };
            if let Some(frq) = theirs["frq"].as_u64() {
                same("engine MHz", freq_mhz.expect("engine MHz"), frq / 1000);
            }
            if let Some(val) = theirs["val"].as_u64() {
                match load_percent {
                    Some(load) => same("engine load", *load, val),
                    // A bare number: jtop calls it a load, it is the frequency.
                    None => same("engine bare MHz", freq_mhz.expect("engine MHz"), val),
                }
            }
        }
        for (sensor, celsius) in theirs["temperatures"].as_object().unwrap() {
            let ours = ours.temperatures.iter().find(|t| t.sensor == sensor);
            let ours = ours.unwrap_or_else(|| panic!("sensor {sensor} missing in {line}"));
            temperatures += same_f64(sensor, ours.celsius, celsius.as_f64().unwrap());
        }
        for (name, rail) in theirs["rails"].as_object().unwrap() {
            let ours = ours.rails.iter().find(|r| r.name == name);
            let ours = ours.unwrap_or_else(|| panic!("rail {name} missing in {line}"));
            same(
                "rail current",
                ours.current_mw,
                rail["cur"].as_u64().unwrap(),
            );
            same(
                "rail average",
                ours.average_mw,
                rail["avg"].as_u64().unwrap(),
            );
        }
    }
    let compared = compared + temperatures;
    assert!(compared > 50_000, "only {compared} values compared");
    eprintln!("{compared} values agree with jetson-stats");
}

#[test]
fn the_fuzzers_inputs_parse_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    for kind in ["seeds", "corpus"] {
        let dir = root.join(kind).join("tegrastats");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let line = String::from_utf8_lossy(&bytes);
            let parsed = tegrastats::parse(&line);
            let _ = parsed.to_json();
            if kind == "seeds" {
                // The seeds are real lines.
                assert!(parsed.unknown.is_empty(), "{line}");
                seeds += 1;
            }
        }
    }
    assert_eq!(seeds, 48);
}
