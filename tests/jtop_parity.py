#!/usr/bin/env python3
"""Runs jetson-stats' own tegrastats parser (jtop.core.tegra_parse) over lines on stdin and
prints, for each line, one JSON object of what jtop extracted, for the Rust parity test
(tests/it/tegrastats.rs). A line that makes jtop raise is reported with its error."""
import json
import sys

from jtop.core import tegra_parse as tp

for raw in sys.stdin:
    # jtop's regular expressions expect the trailing newline that tegrastats prints.
    line = raw.rstrip("\n") + "\n"
    out = {"error": None}
    try:
        text = tp.DATE(line)
        out["ram"] = tp.RAM(text)
        out["swap"] = tp.SWAP(text)
        out["iram"] = tp.IRAM(text)
        out["mts"] = tp.MTS(text)
        out["cpus"] = {str(k): v for k, v in tp.CPUS(text).items()}
        out["engines"] = tp.VALS(text)
        out["temperatures"] = tp.TEMPS(text)
        out["rails"] = tp.WATTS(text)
    except Exception as error:  # jtop raises on some real lines; the test counts them
        out = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(out))
