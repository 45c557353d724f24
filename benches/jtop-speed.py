#!/usr/bin/env python3
"""Lines per second of jetson-stats' tegrastats parser (jtop.core.tegra_parse) on the TX2 log,
parsing every field as jtop does for each line. Needs `pip install jetson-stats`.
Usage: benches/jtop-speed.py [tests/data/tegrastats/tx2-jetpack4-2660s.log.zst]"""
import subprocess
import sys
import time

from jtop.core import tegra_parse as tp

path = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tegrastats/tx2-jetpack4-2660s.log.zst"
text = subprocess.run(["zstd", "-dc", path], check=True, capture_output=True, text=True).stdout
lines = [line + "\n" for line in text.splitlines()]


def parse_all():
    for line in lines:
        text = tp.DATE(line)
        tp.RAM(text), tp.SWAP(text), tp.IRAM(text), tp.MTS(text), tp.CPUS(text)
        tp.VALS(text), tp.TEMPS(text), tp.WATTS(text)


best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    parse_all()
    best = min(best, time.perf_counter() - start)
print(f"jetson-stats: {len(lines) / best:,.0f} lines/s ({len(lines)} lines, best of 5)")
