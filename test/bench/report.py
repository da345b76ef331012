#!/usr/bin/env python3
"""Turns the raw output of test/bench/suite.sh (RAW: runs.csv, runs/*.json, facts.csv, skipped.tsv,
and provenance.csv from scripts/bench) into OUT/report.md, OUT/runs.csv (one parsed line per fio
run), OUT/readme-tables.md (the tables of README.md's "Performance" section, pasted there as they
are) and, with gnuplot, OUT/iops-ratio.png and OUT/p99.png.

usage: report.py RAW OUT
       report.py --splice README TABLES   (what scripts/bench --update-readme runs: replaces the
                                           lines between README's bench-tables markers by TABLES)
"""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys

# Peer of each path: the ratio column divides by this path's median, same backend.
QSD_OF = {"vb-mem": "qsd-null", "vb-nbd": "qsd-nbd", "vb-nbd-poll": "qsd-nbd", "knbd": "qsd-nbd", "fio-libnbd": "qsd-nbd",
          "vb-iscsi": "qsd-iscsi", "kiscsi": "qsd-iscsi", "vb-file": "qsd-file", "loop-file": "qsd-file"}
# The kernel's own path on the same backend, if any: the `vs kernel` column.
KERNEL_OF = {"nbd": "knbd", "iscsi": "kiscsi", "file": "loop-file"}
PATH_ORDER = ["vb-mem", "qsd-null", "vb-nbd", "vb-nbd-poll", "qsd-nbd", "knbd", "fio-libnbd", "vb-iscsi", "qsd-iscsi",
              "kiscsi", "vb-file", "qsd-file", "loop-file", "vb-mem-q1", "vb-mem-q2", "vb-mem-q4"]
DESCR = {
    "vb-mem": "vduse-bridge, memory backend",
    "qsd-null": "qemu-storage-daemon vduse-blk, null-co (read-zeroes; writes are dropped, no copy: "
                "vb-mem copies every byte, which shows at 128k)",
    "vb-nbd": "vduse-bridge, nbd backend (nbdkit memory, unix socket)",
    "vb-nbd-poll": "vduse-bridge, the same nbd device with busy polling (busy-poll-us: VDUSE_BRIDGE_BENCH_POLL_US)",
    "qsd-nbd": "qemu-storage-daemon vduse-blk, driver=nbd (same socket)",
    "knbd": "kernel NBD client (nbd-client, same socket)",
    "fio-libnbd": "fio's libnbd engine (no block device: the userspace ceiling)",
    "vb-iscsi": "vduse-bridge, iscsi backend (tgtd LUN on tmpfs)",
    "qsd-iscsi": "qemu-storage-daemon vduse-blk, driver=iscsi (same LUN)",
    "kiscsi": "kernel iSCSI initiator (open-iscsi's iscsid and iscsiadm, iscsi_tcp; same LUN; no daemon "
              "in the data path: its CPU is the kernel's)",
    "vb-file": "vduse-bridge, file backend (io_uring, `direct: on`; a 256 MiB file on {store})",
    "qsd-file": "qemu-storage-daemon vduse-blk, driver=file, aio=io_uring, cache.direct=on (same file)",
    "loop-file": "loop device, losetup --direct-io=on (same file; no daemon: its CPU is the kernel's)",
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


CPU_PATHS = {"vb-mem", "qsd-null", "vb-nbd", "vb-nbd-poll", "qsd-nbd", "vb-iscsi", "qsd-iscsi", "vb-file", "qsd-file",
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


WL_LABEL = {
    "randread-4k-qd1": "4k randread qd1", "randread-4k-qd32": "4k randread qd32",
    "randread-4k-qd128": "4k randread qd128", "randwrite-4k-qd1": "4k randwrite qd1",
    "randwrite-4k-qd32": "4k randwrite qd32", "randwrite-4k-qd128": "4k randwrite qd128",
    "read-128k-qd8": "128k read qd8", "write-128k-qd8": "128k write qd8",
    "randrw70-4k-qd32-2jobs": "4k 70/30 randrw qd32, 2 jobs",
}
# README tables: per backend, the vduse-bridge path and its peers (column title, path).
README_BACKENDS = [
    ("memory", "vb-mem", "memory backend; peer: qemu-storage-daemon's vduse-blk export over null-co "
     "(read-zeroes, writes dropped: no copy at all)", [("vs qsd", "qsd-null")]),
    ("nbd", "vb-nbd", "nbdkit memory on a unix socket; peers: qemu-storage-daemon vduse-blk with "
     "driver=nbd, the kernel NBD client, fio's libnbd engine (no block device: the ceiling)",
     [("vs qsd", "qsd-nbd"), ("vs kernel NBD client", "knbd"), ("of fio's libnbd ceiling", "fio-libnbd")]),
    ("iscsi", "vb-iscsi", "tgtd in the guest on 127.0.0.1, LUN on tmpfs; peers: qemu-storage-daemon "
     "vduse-blk with driver=iscsi (tgtd's CPU time is part of both), the kernel iSCSI initiator "
     "(open-iscsi, iscsi_tcp)", [("vs qsd", "qsd-iscsi"), ("vs open-iscsi", "kiscsi")]),
    ("file", "vb-file", "a 256 MiB file on {store}, O_DIRECT; peers: qemu-storage-daemon vduse-blk with "
     "driver=file, aio=io_uring, cache.direct=on, and a loop device with --direct-io=on",
     [("vs qsd", "qsd-file"), ("vs loop device", "loop-file")]),
]


def readme_tables(agg, facts, prov, workloads):
    """The markdown fragment README.md's Performance section holds, regenerated from this run."""
    L = []
    when = prov.get("date", "?")
    commit = prov.get("commit", "?")
    icount = "QEMU TCG with `--icount`" if prov.get("icount", "1") == "1" else "QEMU TCG (real time)"
    L.append(f"<!-- generated by test/bench/report.py (DIR/readme-tables.md of a scripts/bench run); "
             f"regenerate, do not edit -->")
    machine = f" on {prov['machine']}" if prov.get("machine") else ""
    L.append(f"Run {when}, commit {commit}{machine}, {facts.get('rounds', '?')} round(s) of "
             f"{facts.get('runtime_s', '?')} s per run after {facts.get('ramp', '?')} ramp, {icount}, "
             f"kernel {facts.get('kernel', '?')}; medians over the rounds, ratios against the peers "
             f"measured in the same run (IOPS, MiB/s at 128k; above 1.00x vduse-bridge is faster). "
             f"CPU µs/IO: the serving daemon's CPU time per completed I/O (vduse-bridge / qemu-storage-daemon).")
    if prov.get("note"):
        L.append("")
        L.append(prov["note"])
    L.append("")
    store = facts.get("file_store", "?")
    main_wls = [w for w in workloads if not w.startswith("scaling")]
    for be, vb, what, peers in README_BACKENDS:
        if not any((wl, vb) in agg for wl in main_wls):
            continue
        have = [(t, p) for t, p in peers if any((wl, p) in agg for wl in main_wls)]
        qsd = QSD_OF.get(vb)
        L.append(f"**{be}**: {what.format(store=store)}.")
        L.append("")
        L.append("| fio workload | vduse-bridge | " + " | ".join(t for t, _ in have) + " | CPU µs/IO |")
        L.append("| --- | ---: | " + " | ".join("---:" for _ in have) + " | ---: |")
        for wl in main_wls:
            a = agg.get((wl, vb))
            if not a:
                continue
            seq = "128k" in wl
            val = f"{a['mib_s']:,.1f} MiB/s" if seq else f"{a['iops']:,.0f} IOPS"
            cols = [ratio(a["iops"], agg.get((wl, p), {}).get("iops")) for _, p in have]
            c_vb = a.get("cpu_us_per_io")
            c_q = agg.get((wl, qsd), {}).get("cpu_us_per_io") if qsd else None
            cpu = f"{fmt(c_vb)} / {fmt(c_q)}"
            L.append(f"| {WL_LABEL.get(wl, wl)} | {val} | " + " | ".join(cols) + f" | {cpu} |")
        L.append("")
    return "\n".join(L)


BEGIN_MARK = "<!-- bench-tables:begin"
END_MARK = "<!-- bench-tables:end -->"


def splice(readme, tables):
    with open(readme) as f:
        lines = f.read().split("\n")
    b = next((i for i, x in enumerate(lines) if x.startswith(BEGIN_MARK)), None)
    e = next((i for i, x in enumerate(lines) if x.startswith(END_MARK)), None)
    if b is None or e is None or e < b:
        sys.exit(f"report.py: {readme} has no {BEGIN_MARK} ... {END_MARK} block")
    with open(tables) as f:
        new = f.read().rstrip("\n").split("\n")
    lines[b + 1:e] = new + [""]  # a blank line ends the last table before the marker
    with open(readme, "w") as f:
        f.write("\n".join(lines))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--splice":
        splice(sys.argv[2], sys.argv[3])
        return
    raw, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(raw, "runs.csv")) as f:
        rows = list(csv.DictReader(f))
    runs = [parse_run(raw, r) for r in rows]
    facts = {}
    if os.path.exists(os.path.join(raw, "facts.csv")):
        with open(os.path.join(raw, "facts.csv")) as f:
            facts = {r["key"]: r["value"] for r in csv.DictReader(f)}
    prov = {}
    if os.path.exists(os.path.join(raw, "provenance.csv")):
        with open(os.path.join(raw, "provenance.csv")) as f:
            prov = {r["key"]: r["value"] for r in csv.DictReader(f)}
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
            agg[wl, p]["iops_min"] = min(r["iops"] for r in rs)
            agg[wl, p]["iops_max"] = max(r["iops"] for r in rs)
            agg[wl, p]["errors"] = sum(1 for r in rs if r["error"])

    L = []
    L.append("# vduse-bridge benchmark report\n")
    realtime = prov.get("icount", "1") != "1"
    mode = ("real time: guest time is the host's, so the machine's own swings are in the figures; the "
            "spread column shows them" if realtime else "`--icount`: guest time counts instructions")
    L.append(f"Kernel {facts.get('kernel', '?')} in the test VM (QEMU TCG, {mode}), "
             f"{facts.get('fio', 'fio')}; {facts.get('rounds', '?')} round(s) of "
             f"{facts.get('runtime_s', '?')} s per run after {facts.get('ramp', '?')} ramp, paths and "
             f"workloads interleaved (order rotated each round); figures are medians over the rounds. "
             f"Absolute numbers are guest time under emulation, not hardware speed: compare the ratios "
             f"(noise floor about 10% in icount mode; fewer rounds or shorter runs are noisier).\n")
    if facts.get("runs_wall_s"):
        L.append(f"{len(runs)} fio runs took {facts['runs_wall_s']} s of guest time.\n")
    L.append("Paths:\n")
    store = facts.get("file_store", "?")
    for p in paths:
        if p in DESCR:
            L.append(f"- `{p}`: {DESCR[p].format(store=store)}")
    L.append("")
    L.append("Columns: IOPS and MiB/s (read + write), completion latency p50/p99/p99.9 in µs (of the "
             "writes for write workloads, of the reads otherwise, including randrw), `vs qsd`: IOPS "
             "ratio to qemu-storage-daemon on the same backend; `vs kernel`: to the kernel's own "
             "path on the same backend (nbd: the kernel NBD client; iscsi: open-iscsi; file: the "
             "loop device); for nbd also `vs ceiling` (fio's libnbd engine); `CPU µs/IO`: the "
             "serving daemon's utime+stime over the run divided by the I/Os completed by the disk "
             "(ramp included on both sides).\n")

    for wl in workloads:
        if wl.startswith("scaling"):
            continue
        L.append(f"## {wl}\n")
        L.append("| path | backend | IOPS | spread | MiB/s | p50 µs | p99 µs | p99.9 µs | vs qsd | vs kernel | vs ceiling | CPU µs/IO |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for p in paths:
            a = agg.get((wl, p))
            if not a:
                continue
            be = next(r["backend"] for r in runs if r["path"] == p)
            q = agg.get((wl, QSD_OF.get(p, "")), {}).get("iops")
            kp = KERNEL_OF.get(be)
            kn = agg.get((wl, kp), {}).get("iops") if kp and p != kp else None
            ce = agg.get((wl, "fio-libnbd"), {}).get("iops") if be == "nbd" and p != "fio-libnbd" else None
            err = f" ({a['errors']} failed)" if a["errors"] else ""
            spread = f"{fmt(a['iops_min'])}-{fmt(a['iops_max'])}" if a["n"] > 1 else ""
            L.append(f"| {p}{err} | {be} | {fmt(a['iops'])} | {spread} | {fmt(a['mib_s'], 1)} | {fmt(a['p50_us'])} | "
                     f"{fmt(a['p99_us'])} | {fmt(a['p999_us'])} | {ratio(a['iops'], q)} | "
                     f"{ratio(a['iops'], kn)} | {ratio(a['iops'], ce)} | {fmt(a['cpu_us_per_io'], 1)} |")
        L.append("")

    sc = [w for w in workloads if w.startswith("scaling")]
    if sc:
        wl = sc[0]
        L.append("## Queue scaling: vduse-bridge memory, 4k randread qd32, numjobs = queues\n")
        if realtime:
            L.append("In real time both vCPUs run on their own host threads, but the machine has 2 "
                     "cores for the guest's 2 vCPUs, QEMU's own threads and everything else: more than "
                     "2 queues cannot run in parallel, and the spread (min-max over the rounds) is the "
                     "machine's noise as much as the daemon's.\n")
        else:
            L.append("Under `--icount` both vCPUs take turns on one host thread, so this shows the cost of "
                     "more queues, not parallel speed-up (`scripts/bench --realtime` measures that).\n")
        L.append("| queues | IOPS | spread | vs 1 queue | p50 µs | p99 µs | CPU µs/IO |")
        L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = agg.get((wl, "vb-mem-q1"), {}).get("iops")
        for q in (1, 2, 4):
            a = agg.get((wl, f"vb-mem-q{q}"))
            if a:
                spread = f"{fmt(a['iops_min'])}-{fmt(a['iops_max'])}" if a["n"] > 1 else ""
                L.append(f"| {q} | {fmt(a['iops'])} | {spread} | {ratio(a['iops'], base)} | {fmt(a['p50_us'])} | "
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
    ndev = {"vb-mem": 3, "vb-nbd": 1, "vb-iscsi": 1, "vb-file": 1, "qsd-null": 1, "qsd-nbd": 1, "qsd-iscsi": 1,
            "qsd-file": 1}
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

    with open(os.path.join(out, "readme-tables.md"), "w") as f:
        f.write(readme_tables(agg, facts, prov, workloads))
    L.append("Raw data: `runs.csv` (one line per fio run), `raw/` (fio JSON per run, facts.csv, "
             "skipped.tsv, provenance.csv, the VM console log). `readme-tables.md`: the tables of "
             "README.md's Performance section from this run.\n")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
