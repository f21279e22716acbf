"""Plots what raftset-bench wrote: bench/plot.py RESULTS.json OUT.png.

Headline and quick runs: per workload, throughput, p99 latency and the
servers' CPU per operation, etcd beside raftset; bars are the medians over
the repetitions, dots the single runs. Scale runs: the time to write the
keys, disk and memory after them, and the puts made afterwards.
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
    fig = scale_figure(report) if report["scale"] else workloads_figure(report)
    fig.savefig(target, dpi=110)


def heading(report):
    plan = report["plan"]
    return (
        f"raftset beside etcd ({plan['mode']}): 3 members each, {report['machine']}\n"
        f"{plan['repetitions']} repetition(s) × {plan['seconds']:g} s per workload, "
        f"{plan['keyspace']:,} keys of 16 B, {plan['value_size']} B values; {report['started']}"
    )


def scale_figure(report):
    """One panel per measure, each side's bar from zero, single runs as dots."""
    def mean_disk(s):
        return sum(s["disk_after_load_per_member"]) / len(s["disk_after_load_per_member"])

    panels = [
        ("seconds to write the keys", lambda s: s["preload_secs"]),
        ("disk per member, GB", lambda s: mean_disk(s) / 1e9),
        ("RSS of the 3 members, GB", lambda s: s["rss_after_load_bytes"] / 1e9),
        ("puts/s at 64 in flight, fresh cluster", lambda s: s["fresh_put"]["ops_per_sec"]),
        ("puts/s at 64 in flight afterwards", lambda s: s["put"]["ops_per_sec"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (name, value) in zip(axes, panels):
        for x, (side, colour) in enumerate(SIDES):
            values = [value(s) for s in report["scale"] if s["side"] == side]
            ax.bar([x], [statistics.median(values)], 0.6, color=colour, label=side)
            ax.scatter([x] * len(values), values, color="black", s=8, zorder=3)
        ax.set_xticks(range(len(SIDES)))
        ax.set_xticklabels([side for side, _ in SIDES])
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(heading(report), fontsize=10)
    fig.tight_layout()
    return fig


def workloads_figure(report):
    runs = report["runs"]
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
    fig.suptitle(heading(report), fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(*sys.argv[1:])
