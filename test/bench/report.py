#!/usr/bin/env python3
"""Turns the raw output of test/bench/suite.sh (RAW: runs.csv, runs/*.json, facts.csv, skipped.tsv)
into OUT/report.md, OUT/runs.csv (one parsed line per fio run) and, with gnuplot,
OUT/iops-ratio.png and OUT/p99.png.

usage: report.py RAW OUT
"""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys

# Peer of each path: the ratio column divides by this path's median, same backend.
QSD_OF = {"vb-mem": "qsd-null", "vb-nbd": "qsd-nbd", "knbd": "qsd-nbd", "fio-libnbd": "qsd-nbd",
          "vb-iscsi": "qsd-iscsi"}
PATH_ORDER = ["vb-mem", "qsd-null", "vb-nbd", "qsd-nbd", "knbd", "fio-libnbd", "vb-iscsi", "qsd-iscsi",
              "vb-mem-q1", "vb-mem-q2", "vb-mem-q4"]
DESCR = {
    "vb-mem": "vduse-bridge, memory backend",
    "qsd-null": "qemu-storage-daemon vduse-blk, null-co (read-zeroes; writes are dropped, no copy: "
                "vb-mem copies every byte, which shows at 128k)",
    "vb-nbd": "vduse-bridge, nbd backend (nbdkit memory, unix socket)",
    "qsd-nbd": "qemu-storage-daemon vduse-blk, driver=nbd (same socket)",
    "knbd": "kernel NBD client (nbd-client, same socket)",
    "fio-libnbd": "fio's libnbd engine (no block device: the userspace ceiling)",
    "vb-iscsi": "vduse-bridge, iscsi backend (tgtd LUN on tmpfs)",
    "qsd-iscsi": "qemu-storage-daemon vduse-blk, driver=iscsi (same LUN)",
}


def pct(side, p):
    v = side.get("clat_ns", {}).get("percentile", {}).get(p)
    return v / 1000.0 if v is not None else None


def parse_run(raw, row):
    with open(os.path.join(raw, row["json"])) as f:
        text = f.read()
    # fio may print notes before the JSON object.
    data = json.loads(text[text.index("{"):])
    job = data["jobs"][0]
    rd, wr = job["read"], job["write"]
    side = wr if row["rw"] in ("write", "randwrite") else rd
    ticks, ios, clk = int(row["cpu_ticks"]), int(row["ios"]), int(row["clk_tck"])
    cpu_us = ticks * 1e6 / clk / ios if ios > 0 and row["path"] in CPU_PATHS else None
    return {
        "round": int(row["round"]), "workload": row["workload"], "path": row["path"],
        "backend": row["backend"], "iops": rd["iops"] + wr["iops"],
        "mib_s": (rd["bw"] + wr["bw"]) / 1024.0,
        "p50_us": pct(side, "50.000000"), "p99_us": pct(side, "99.000000"),
        "p999_us": pct(side, "99.900000"), "cpu_ticks": ticks, "ios": ios, "cpu_us_per_io": cpu_us,
        "error": job.get("error", 0),
    }


CPU_PATHS = {"vb-mem", "qsd-null", "vb-nbd", "qsd-nbd", "vb-iscsi", "qsd-iscsi",
             "vb-mem-q1", "vb-mem-q2", "vb-mem-q4"}


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}" if nd else f"{v:,.0f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def main():
    raw, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(raw, "runs.csv")) as f:
        rows = list(csv.DictReader(f))
    runs = [parse_run(raw, r) for r in rows]
    facts = {}
    if os.path.exists(os.path.join(raw, "facts.csv")):
        with open(os.path.join(raw, "facts.csv")) as f:
            facts = {r["key"]: r["value"] for r in csv.DictReader(f)}
    skipped = []
    if os.path.exists(os.path.join(raw, "skipped.tsv")):
        with open(os.path.join(raw, "skipped.tsv")) as f:
            skipped = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]

    keys = ["round", "workload", "path", "backend", "iops", "mib_s", "p50_us", "p99_us", "p999_us",
            "cpu_ticks", "ios", "cpu_us_per_io", "error"]
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in runs:
            w.writerow({k: (f"{r[k]:.3f}" if isinstance(r[k], float) else r[k]) for k in keys})

    workloads = []
    for r in runs:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    paths = sorted({r["path"] for r in runs}, key=lambda p: PATH_ORDER.index(p) if p in PATH_ORDER else 99)
    agg = {}
    for wl in workloads:
        for p in paths:
            rs = [r for r in runs if r["workload"] == wl and r["path"] == p]
            if not rs:
                continue
            agg[wl, p] = {k: med([r[k] for r in rs]) for k in
                          ("iops", "mib_s", "p50_us", "p99_us", "p999_us", "cpu_us_per_io")}
            agg[wl, p]["n"] = len(rs)
            agg[wl, p]["errors"] = sum(1 for r in rs if r["error"])

    L = []
    L.append("# vduse-bridge benchmark report\n")
    L.append(f"Kernel {facts.get('kernel', '?')} in the test VM (QEMU TCG, `--icount`: guest time counts "
             f"instructions), {facts.get('fio', 'fio')}; {facts.get('rounds', '?')} round(s) of "
             f"{facts.get('runtime_s', '?')} s per run after {facts.get('ramp', '?')} ramp, paths and "
             f"workloads interleaved (order rotated each round); figures are medians over the rounds. "
             f"Absolute numbers are guest time under emulation, not hardware speed: compare the ratios "
             f"(noise floor about 10% in icount mode; fewer rounds or shorter runs are noisier).\n")
    if facts.get("runs_wall_s"):
        L.append(f"{len(runs)} fio runs took {facts['runs_wall_s']} s of guest time.\n")
    L.append("Paths:\n")
    for p in paths:
        if p in DESCR:
            L.append(f"- `{p}`: {DESCR[p]}")
    L.append("")
    L.append("Columns: IOPS and MiB/s (read + write), completion latency p50/p99/p99.9 in µs (of the "
             "writes for write workloads, of the reads otherwise, including randrw), `vs qsd`: IOPS "
             "ratio to qemu-storage-daemon on the same backend; for nbd also `vs knbd` (kernel NBD "
             "client) and `vs ceiling` (fio's libnbd engine); `CPU µs/IO`: the serving daemon's "
             "utime+stime over the run divided by the I/Os completed by the disk (ramp included on "
             "both sides).\n")

    for wl in workloads:
        if wl.startswith("scaling"):
            continue
        L.append(f"## {wl}\n")
        L.append("| path | backend | IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | vs qsd | vs knbd | vs ceiling | CPU µs/IO |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for p in paths:
            a = agg.get((wl, p))
            if not a:
                continue
            be = next(r["backend"] for r in runs if r["path"] == p)
            q = agg.get((wl, QSD_OF.get(p, "")), {}).get("iops")
            kn = agg.get((wl, "knbd"), {}).get("iops") if be == "nbd" and p != "knbd" else None
            ce = agg.get((wl, "fio-libnbd"), {}).get("iops") if be == "nbd" and p != "fio-libnbd" else None
            err = f" ({a['errors']} failed)" if a["errors"] else ""
            L.append(f"| {p}{err} | {be} | {fmt(a['iops'])} | {fmt(a['mib_s'], 1)} | {fmt(a['p50_us'])} | "
                     f"{fmt(a['p99_us'])} | {fmt(a['p999_us'])} | {ratio(a['iops'], q)} | "
                     f"{ratio(a['iops'], kn)} | {ratio(a['iops'], ce)} | {fmt(a['cpu_us_per_io'], 1)} |")
        L.append("")

    sc = [w for w in workloads if w.startswith("scaling")]
    if sc:
        wl = sc[0]
        L.append("## Queue scaling: vduse-bridge memory, 4k randread qd32, numjobs = queues\n")
        L.append("Under `--icount` both vCPUs take turns on one host thread, so this shows the cost of "
                 "more queues, not parallel speed-up (measure that in real-time mode).\n")
        L.append("| queues | IOPS | vs 1 queue | p50 µs | p99 µs | CPU µs/IO |")
        L.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
        base = agg.get((wl, "vb-mem-q1"), {}).get("iops")
        for q in (1, 2, 4):
            a = agg.get((wl, f"vb-mem-q{q}"))
            if a:
                L.append(f"| {q} | {fmt(a['iops'])} | {ratio(a['iops'], base)} | {fmt(a['p50_us'])} | "
                         f"{fmt(a['p99_us'])} | {fmt(a['cpu_us_per_io'], 1)} |")
        L.append("")

    L.append("## Daemon CPU per I/O (median over all workloads' runs)\n")
    L.append("| path | CPU µs/IO (median of workload medians) |")
    L.append("| --- | ---: |")
    for p in paths:
        v = med([agg[wl, p]["cpu_us_per_io"] for wl in workloads if (wl, p) in agg])
        if v is not None:
            L.append(f"| {p} | {fmt(v, 1)} |")
    L.append("")

    L.append("## Memory and attach time\n")
    L.append("| what | value |")
    L.append("| --- | ---: |")
    if "attach32_ms" in facts:
        L.append(f"| 32 memory devices of 64M: daemon start to \"serving\" (created + attached) | {facts['attach32_ms']} ms |")
        L.append(f"| VmRSS with 32 devices (anon) | {facts.get('rss32_kb')} kB ({facts.get('rssanon32_kb')} kB) |")
        try:
            L.append(f"| VmRSS per device with 32 devices | {int(facts['rss32_kb']) / 32:.0f} kB |")
        except (KeyError, ValueError):
            pass
    if "attach_mem3_ms" in facts:
        L.append(f"| 3 memory devices (1+2+4 queues): start to \"serving\" | {facts['attach_mem3_ms']} ms |")
    ndev = {"vb-mem": 3, "vb-nbd": 1, "vb-iscsi": 1, "qsd-null": 1, "qsd-nbd": 1, "qsd-iscsi": 1}
    for when, words in (("idle", "attached, before the runs"), ("after", "after the runs")):
        for who in sorted(ndev, key=lambda p: PATH_ORDER.index(p)):
            key = f"rss_{when}_{who}"
            if key not in facts:
                continue
            anon = facts.get(f"rssanon_{when}_{who}", "?")
            n = ndev[who]
            L.append(f"| VmRSS {who} ({n} device{'s' if n > 1 else ''}), {words} (anon) | "
                     f"{facts[key]} kB ({anon} kB) |")
    L.append("")
    L.append("The memory backend's disk contents live in /dev/shm and count in VmRSS once touched "
             "(RssShmem); `anon` is the daemon's own memory.\n")

    L.append("## Skipped paths\n")
    if skipped:
        for s in skipped:
            L.append(f"- `{s[0]}`: {s[1] if len(s) > 1 else '?'}")
    else:
        L.append("None: every path was measured.")
    L.append("")

    # --- plots -------------------------------------------------------------------------------
    gp = shutil.which("gnuplot")
    for stale in ("iops-ratio.png", "p99.png", "iops-ratio.dat", "p99.dat"):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    main_wls = [w for w in workloads if not w.startswith("scaling")]
    ratio_paths = [p for p in paths if p in QSD_OF]
    lat_paths = [p for p in paths if p in DESCR]
    if not gp:
        L.append("## Plots\n\ngnuplot is not installed (Debian: gnuplot-nox): no PNG was made.\n")
    else:
        dat1 = os.path.join(out, "iops-ratio.dat")
        with open(dat1, "w") as f:
            f.write("workload " + " ".join(ratio_paths) + "\n")
            for wl in main_wls:
                vals = []
                for p in ratio_paths:
                    a = agg.get((wl, p), {}).get("iops")
                    q = agg.get((wl, QSD_OF[p]), {}).get("iops")
                    vals.append(f"{a / q:.3f}" if a is not None and q else "NaN")
                f.write(wl + " " + " ".join(vals) + "\n")
        dat2 = os.path.join(out, "p99.dat")
        with open(dat2, "w") as f:
            f.write("workload " + " ".join(lat_paths) + "\n")
            for wl in main_wls:
                vals = [f"{agg[wl, p]['p99_us']:.1f}" if (wl, p) in agg and agg[wl, p]["p99_us"] else "NaN"
                        for p in lat_paths]
                f.write(wl + " " + " ".join(vals) + "\n")
        common = ("set terminal pngcairo size 1400,700 noenhanced font 'sans,10'\n"
                  "set style data histograms\nset style histogram clustered gap 1\n"
                  "set style fill solid 0.85 border -1\nset boxwidth 0.9\nset key outside right top\n"
                  "set xtics rotate by -30\nset grid ytics\nset datafile missing 'NaN'\n")
        s1 = common + (f"set output '{os.path.join(out, 'iops-ratio.png')}'\n"
                       "set title 'IOPS ratio to qemu-storage-daemon on the same backend (1.0 = qsd)'\n"
                       "set ylabel 'IOPS / qsd IOPS'\nset yrange [0:*]\n"
                       "set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 front\n"
                       f"plot for [i=2:{len(ratio_paths) + 1}] '{dat1}' using i:xtic(1) title columnheader(i)\n")
        s2 = common + (f"set output '{os.path.join(out, 'p99.png')}'\n"
                       "set title 'p99 completion latency (µs, guest time, log scale)'\n"
                       "set ylabel 'p99 µs'\nset logscale y\n"
                       f"plot for [i=2:{len(lat_paths) + 1}] '{dat2}' using i:xtic(1) title columnheader(i)\n")
        made = []
        for name, script in (("iops-ratio.png", s1), ("p99.png", s2)):
            r = subprocess.run([gp], input=script, text=True, capture_output=True)
            if r.returncode == 0 and os.path.exists(os.path.join(out, name)):
                made.append(name)
            else:
                L.append(f"gnuplot failed for {name}: {r.stderr.strip()[:300]}\n")
        if made:
            L.append("## Plots\n")
            for m in made:
                L.append(f"![{m}]({m})\n")

    L.append("Raw data: `runs.csv` (one line per fio run), `raw/` (fio JSON per run, facts.csv, "
             "skipped.tsv, the VM console log).\n")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
