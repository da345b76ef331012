#!/usr/bin/env python3
"""Turns RAW/breakdown.csv (test/bench/breakdown.sh, run by scripts/bench --breakdown) into
OUT/breakdown.md: per workload, one table with a column per path and a row per measure, each
per completed I/O (IOPS aside).

usage: breakdown_report.py RAW OUT
"""
import csv
import os
import sys

ORDER = ["vb-mem", "qsd-null", "vb-nbd", "vb-nbd-poll", "qsd-nbd", "knbd", "fio-libnbd", "vb-iscsi",
         "qsd-iscsi", "kiscsi", "vb-file", "qsd-file", "loop-file"]
# Rows first in this order, then the system calls by name, then the context switches by task.
FIRST = [("iops", "IOPS"), ("busy_cpu_us", "busy CPU µs (both vCPUs)"),
         ("daemon_cpu_us", "daemon CPU µs"), ("server_cpu_us", "server CPU µs"),
         ("fio_cpu_us", "fio CPU µs"), ("ctx_switches", "context switches (system)"),
         ("interrupts", "interrupts (system)"), ("daemon_ctx_switches", "daemon context switches"),
         ("server_ctx_switches", "server context switches")]


def path_key(p):
    base = p.split("@")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), p)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    raw, out = sys.argv[1], sys.argv[2]
    src = os.path.join(raw, "breakdown.csv")
    if not os.path.exists(src):
        sys.exit("breakdown_report: no %s" % src)
    data = {}  # workload -> path -> metric -> value
    with open(src) as f:
        for row in csv.DictReader(f):
            if row["metric"] == "note":
                continue
            data.setdefault(row["workload"], {}).setdefault(row["path"], {})[row["metric"]] = row["value"]
    lines = ["# Where the time of one I/O goes", "",
             "Per completed I/O (IOPS aside), from one run per path and measure; under `--icount` guest "
             "time counts instructions. System calls from `strace -c -f` on the daemon and the server "
             "(another run: it slows them, the counts per I/O are what is kept); sleeps_X: voluntary "
             "context switches of the threads of X (each one is a later wake-up), preempted_X: "
             "involuntary ones.", ""]
    for wl in sorted(data):
        paths = sorted(data[wl], key=path_key)
        metrics = []
        seen = set()
        for m, _ in FIRST:
            if any(m in data[wl][p] for p in paths):
                metrics.append(m)
                seen.add(m)
        rest = sorted({m for p in paths for m in data[wl][p]} - seen - {"traced_ios"})
        syscalls = [m for m in rest if "_syscall_" in m]
        others = [m for m in rest if m not in syscalls]
        label = dict(FIRST)
        lines += ["## %s" % wl, "", "| per I/O | " + " | ".join(paths) + " |",
                  "| --- |" + " ---: |" * len(paths)]
        for m in metrics + syscalls + others:
            cells = [data[wl][p].get(m, "") for p in paths]
            # Rare calls (set-up, timers) are noise: a row shows when some path makes 0.05 per I/O.
            if m in syscalls and max(float(c) if c not in ("", "nan") else 0.0 for c in cells) < 0.05:
                continue
            lines.append("| %s | %s |" % (label.get(m, m.replace("_syscall_", " syscall ")), " | ".join(cells)))
        lines.append("")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "breakdown.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
