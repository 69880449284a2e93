"""The tables and picture of `benchmarks/online_prior_serving.py`: accuracy of the served paths
beside the library's on every stream, the cost per request at batch 1, and the fault figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness
import numpy as np

PATHS = ("server stream, REST", "server stream, gRPC", "client tracker, REST")
FIXED = ("fixed p_s", "fixed uniform")


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def stream_table(report: dict[str, Any]) -> list[str]:
    served_row = report["config"]["served_row"]
    tracker_row = served_row.split(" + ")[0]
    headers = [
        "pair / process",
        *FIXED,
        f"{tracker_row} (library)",
        f"{served_row} (library)",
        *PATHS,
        "images differing (REST stream / client)",
        "largest prior difference",
    ]
    rows = []
    for key, entry in report["streams"].items():
        served = [entry.get(path) for path in PATHS]
        differing = [entry[p]["images_differing"] for p in (PATHS[0], PATHS[2])]
        gap = max(entry[p]["max_prior_difference"] for p in PATHS if p in entry)
        rows.append(
            [
                key,
                *(percent(entry["rows"][name]) for name in FIXED),
                percent(entry["rows"][tracker_row]),
                percent(entry["library"]),
                *(percent(s["accuracy"]) if s else "" for s in served),
                " / ".join(f"{n} of {entry[PATHS[0]]['images']}" for n in differing),
                f"{gap:.1e}",
            ]
        )
    return harness.markdown_table(headers, rows, "l" + "r" * (len(headers) - 1))


def cost_table(cost: dict[str, Any], saving: dict[str, Any]) -> list[str]:
    rows = []
    for name, values in cost["latency"].items():
        saved = saving["latency"][name]
        rows.append(
            [
                name,
                *(f"{v['p50_ms']:.2f}" for v in (values, saved)),
                *(_over(v) for v in (values, saved)),
                f"{values['p90_ms']:.2f}",
            ]
        )
    headers = [
        "one-image request",
        "p50 ms",
        "p50 ms, state saved",
        "p50 over the plain predict, ms",
        "the same, state saved",
        "p90 ms",
    ]
    return harness.markdown_table(headers, rows, "lrrrrr")


def _over(values: dict[str, float]) -> str:
    return "" if "over_plain_p50_ms" not in values else f"{values['over_plain_p50_ms']:+.2f}"


def kill_table(kills: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            "before each answer"
            if k["save_interval_ms"] == 0
            else f"every {k['save_interval_ms']} ms",
            k["answered_before_kill"],
            f"{k['requests_per_second']:.0f}",
            k["restored_updates"],
            k["lost_updates"],
            f"{k['restored_prior_gap']:.1e}",
            k["images_differing_after_restart"],
        ]
        for k in kills
    ]
    headers = [
        "state saved",
        "answered before SIGKILL",
        "requests/s",
        "updates restored",
        "answered updates lost",
        "restored prior vs library",
        "next 50 answers differing from the library",
    ]
    return harness.markdown_table(headers, rows, "lrrrrrr")


def _saved(interval_ms: int) -> str:
    return "before each answer" if interval_ms == 0 else f"every {interval_ms} ms"


def keys_table(keys: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            f"{k['keys']:,}",
            f"{k['cap']:,}",
            f"{k['streams_held']:,}",
            f"{k['state_files']:,}",
            f"{k['lru_evictions']:,.0f}",
            f"{k['rss_mib'][0][1]:.0f}",
            f"{max(v for _, v in k['rss_mib']):.0f}",
            f"{k['rss_mib'][-1][1]:.0f}",
        ]
        for k in keys
    ]
    headers = [
        "distinct keys",
        "--prior_stream_max_streams",
        "streams held",
        "state files",
        "LRU evictions",
        "RSS before, MiB",
        "RSS peak, MiB",
        "RSS after, MiB",
    ]
    return harness.markdown_table(headers, rows, "rrrrrrrr")


def markdown(report: dict[str, Any]) -> list[str]:
    config, cost, faults = report["config"], report["cost"], report["faults"]
    saving = report["cost_saving_state"]
    machine = report["machine"]
    lines = [
        "# Online label shift through the server: streams, cost, faults",
        "",
        f"Model: `{config['model']}` ({config['test_images']} test images). "
        f"{len(report['streams'])} streams of {config['steps']} steps x "
        f"{config['images_per_step']} images (benchmarks/online_prior.py's processes and seeds), "
        "each through the server's prior streams over REST (one also over gRPC) and through the "
        "client-side tracker (plain predicts with the tracked prior), against the library path "
        f"on the SavedModel's own raw logits (row '{config['served_row']}'). Accuracy %.",
        "",
        *stream_table(report),
        "",
        f"Cost of one-image requests, {cost['rounds']} rounds, the paths taking turns (REST: a new "
        "connection per request, JSON; gRPC: one channel), on a server without a state "
        "directory, then on one saving every stream before each answer "
        "(--prior_stream_state_dir):",
        "",
        *cost_table(cost, report["cost_saving_state"]),
        "",
        f"The tracking step itself: {_ms(cost['server_tracking_mean_ms'])} per request in the "
        "server (mean of its prior_stream_tracking_seconds histogram: tracker update, batch "
        f"prior, re-expressed answer), {_ms(saving['server_tracking_mean_ms'])} with the state "
        f"file written too; {cost['client_tracking']['p50_ms']:.3f} ms p50 in the client "
        "(track_batch + reprior).",
        "",
        "SIGKILL mid-stream, restart on the same --prior_stream_state_dir:",
        "",
        *kill_table(faults["kill"]),
        "",
    ]
    bad = faults["kill"][0].get("bad_files", {})
    for damage, entry in bad.items():
        lines.append(
            f"- {damage} state file: reported `{entry['log']}`; moved aside "
            f"{entry['moved_aside']}, held after restart {entry['held_after_restart']}, updates "
            f"after one request {entry['updates_after_one_request']}"
        )
    lines += [
        "",
        "Distinct stream keys, one one-image request each (4 client threads):",
        "",
        *keys_table(faults["keys"]),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load average "
        f"{machine['load_average'][0]:.1f} before and {report['load_average_after'][0]:.1f} after "
        f"(other jobs share it: times are noisy; compare the paths, measured in turns). "
        f"{report['seconds'] / 60:.1f} minutes.",
    ]
    return lines


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"


def plot(report: dict[str, Any], path: Path) -> None:
    plt = harness.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    keys = list(report["streams"])
    series = {
        "fixed p_s": [report["streams"][k]["rows"]["fixed p_s"] for k in keys],
        "library": [report["streams"][k]["library"] for k in keys],
        PATHS[0]: [report["streams"][k][PATHS[0]]["accuracy"] for k in keys],
        PATHS[2]: [report["streams"][k][PATHS[2]]["accuracy"] for k in keys],
    }
    width = 0.8 / len(series)
    for offset, (name, values) in enumerate(series.items()):
        axes[0].bar(
            np.arange(len(keys)) + offset * width, 100 * np.array(values), width, label=name
        )
    axes[0].set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    short = {"uniform <-> one class": "U<->1", "F50 <-> B50": "F<->B"}
    labels = [f"{short.get(k.split(' / ')[0], k)}\n{k.split(' / ')[-1]}" for k in keys]
    axes[0].set_xticklabels(labels, fontsize=7)
    low = min(min(v) for v in series.values())
    axes[0].set_ylim(100 * low - 3, None)
    axes[0].set_ylabel("accuracy %")
    axes[0].set_title("streams: library vs served")
    axes[0].legend(fontsize=7)
    names = list(report["cost"]["latency"])
    for offset, (label, cost) in enumerate(
        (("no state directory", report["cost"]), ("state saved", report["cost_saving_state"]))
    ):
        values = [cost["latency"][name]["p50_ms"] for name in names]
        axes[1].barh(np.arange(len(names)) + 0.4 * offset, values, 0.4, label=label)
    axes[1].set_yticks(np.arange(len(names)) + 0.2)
    axes[1].set_yticklabels(names, fontsize=8)
    axes[1].set_xlabel("p50 ms, one-image request")
    axes[1].set_title("cost at batch 1")
    axes[1].legend(fontsize=7)
    for entry in report["faults"]["keys"]:
        keys_sent, rss = zip(*entry["rss_mib"])
        axes[2].plot(keys_sent, rss, marker="o", label=f"cap {entry['cap']:,}")
    axes[2].set_xlabel("distinct stream keys sent")
    axes[2].set_ylabel("server RSS MiB")
    axes[2].set_title("memory under many keys")
    axes[2].legend(fontsize=7)
    harness.save_figure(figure, path)


def write_results(report: dict[str, Any], output: Path, name: str) -> list[str]:
    """JSON, Markdown and PNG; returns the Markdown lines."""
    lines = markdown(report)
    plot(report, output / f"{name}.png")
    harness.write_json(output / f"{name}.json", report)
    (output / f"{name}.md").write_text("\n".join(lines) + "\n")
    return lines
