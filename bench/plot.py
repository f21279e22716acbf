"""Plots what raftset-bench wrote: bench/plot.py RESULTS.json OUT.png.

Headline and quick runs: per workload, throughput, p99 latency and the
servers' CPU per operation, etcd beside raftset; bars are the medians over
the repetitions, dots the single runs. Scale runs: the put run made after
the keys were written.
"""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIDES = [("etcd", "#4c72b0"), ("raftset", "#dd8452")]


def main(source, target):
    with open(source) as f:
        report = json.load(f)
    runs = report["runs"] + [s["put"] for s in report["scale"]]
    workloads = [w["name"] for w in report["workloads"] if any(r["workload"] == w["name"] for r in runs)]
    # Throughput on a linear scale with the ratio above each pair; the
    # rest on log scales, since etcd's compare-and-swap loop and a put at 1
    # in flight cost orders of magnitude more per operation than the others.
    panels = [
        ("operations per second (raftset / etcd above)", lambda r: r["ops_per_sec"], False),
        ("p99 latency, ms", lambda r: r["p99_ms"], True),
        ("servers' CPU per operation, µs", lambda r: r["server_cpu_us_per_op"], True),
        ("disk bytes written per operation", lambda r: r["disk_bytes_per_op"], True),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), sharex=True)
    width = 0.38
    for ax, (title, value, log) in zip(axes, panels):
        medians = {}
        for s, (side, colour) in enumerate(SIDES):
            xs = []
            for i, w in enumerate(workloads):
                values = [value(r) for r in runs if r["side"] == side and r["workload"] == w]
                if not values:
                    continue
                x = i + (s - 0.5) * width
                xs.append(x)
                medians[side, w] = statistics.median(values)
                ax.scatter([x] * len(values), values, color="black", s=8, zorder=3)
            ax.bar(xs, [medians[side, w] for w in workloads if (side, w) in medians], width,
                   label=side, color=colour)
        if log:
            ax.set_yscale("log")
        else:
            for i, w in enumerate(workloads):
                if medians.get(("etcd", w)) and ("raftset", w) in medians:
                    top = max(medians["etcd", w], medians["raftset", w])
                    ratio = medians["raftset", w] / medians["etcd", w]
                    ax.annotate(f"{ratio:.2f}×", (i, top), ha="center", va="bottom", fontsize=9)
            ax.margins(y=0.15)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    axes[-1].set_xticks(range(len(workloads)))
    axes[-1].set_xticklabels(workloads, rotation=20, ha="right", fontsize=9)
    plan = report["plan"]
    fig.suptitle(
        f"raftset beside etcd ({plan['mode']}): 3 members each, {report['machine']}\n"
        f"{plan['repetitions']} repetition(s) × {plan['seconds']:g} s per workload, "
        f"{plan['keyspace']:,} keys of 16 B, {plan['value_size']} B values; {report['started']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
