"""The report directory of ``specprune-eval``: summary.json, PNG plots (matplotlib, Agg) and index.html.

Plots, one line/band per run (the baseline ``off`` and each preset):

* ``latency.png``: total inference latency per query over bag time;
* ``tokens.png``: visual tokens kept per query;
* ``actions_<preset>.png``: the first row of each chunk (the action executed at once), baseline vs preset,
  one panel per action dimension;
* ``modes.png``: coarse/fine/off time-line of the action-aware controller.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

MODE_COLORS = {"coarse": "#4c72b0", "fine": "#dd8452", "off": "#8c8c8c"}


def _runs(summary: dict) -> list[tuple[str, dict]]:
    return [("baseline (off)", summary["baseline"])] + list(summary["presets"].items())


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def write_plots(summary: dict, out: Path) -> dict[str, str]:
    """Write the PNGs; returns {plot key: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    runs = _runs(summary)

    def timeline_plot(key: str, field: str, ylabel: str, title: str, step: bool) -> None:
        """One line per run of ``timeline[*][field]`` over bag time, saved as ``<key>.png``."""
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for name, run in runs:
            tl = run["timeline"]
            t, y = [p["t"] for p in tl], [p[field] for p in tl]
            if step:
                ax.step(t, y, where="post", label=name)
            else:
                ax.plot(t, y, marker=".", label=name)
        ax.set_xlabel("bag time (s)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=90)
        plt.close(fig)
        files[key] = f"{key}.png"

    timeline_plot("latency", "total_ms", "inference latency (ms)", "Latency per query", step=False)
    timeline_plot("tokens", "kept_visual", "visual tokens kept", "Visual tokens kept after static pruning", step=True)

    times = [o["t"] for o in summary["observations"]]
    base_actions = summary["actions"].get("baseline", [])
    for name, _ in runs[1:]:
        actions = summary["actions"].get(name, [])
        if not actions or not base_actions or len(actions) != len(base_actions):
            continue
        dims = len(actions[0][0])
        cols = min(dims, 4)
        rows = math.ceil(dims / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for d in range(rows * cols):
            ax = axes[d // cols][d % cols]
            if d >= dims:
                ax.axis("off")
                continue
            ax.plot(times, [c[0][d] for c in base_actions], label="baseline (off)", color="black", lw=1.2)
            ax.plot(times, [c[0][d] for c in actions], label=name, color="#c44e52", lw=1.0, ls="--")
            ax.set_title(f"action[{d}]", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"First action of each chunk: baseline vs {name}", fontsize=10)
        fig.tight_layout()
        fname = f"actions_{_safe(name)}.png"
        fig.savefig(out / fname, dpi=80)
        plt.close(fig)
        files[f"actions_{name}"] = fname

    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(runs)))
    for row, (name, run) in enumerate(runs):
        tl = run["timeline"]
        for k, p in enumerate(tl):
            end = tl[k + 1]["t"] if k + 1 < len(tl) else p["t"] + (summary["schedule"]["dt"] or 0.05)
            ax.barh(row, end - p["t"], left=p["t"], color=MODE_COLORS.get(p["mode"], "#cccccc"), height=0.7)
    ax.set_yticks(range(len(runs)), [n for n, _ in runs], fontsize=8)
    ax.set_xlabel("bag time (s)")
    ax.set_title("Controller mode per query", fontsize=9)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=m) for m, c in MODE_COLORS.items()], fontsize=7, loc="upper right",
              ncols=len(MODE_COLORS), bbox_to_anchor=(1.0, 1.35 + 0.1 * len(runs) ** -1), frameon=False)  # fmt: skip
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "modes.png", dpi=90)
    plt.close(fig)
    files["modes"] = "modes.png"
    return files


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return html.escape(str(value))


def _premise_html(premise: dict | None) -> str:
    """The premise check's paragraph (``--premise``), or nothing."""
    if not premise:
        return ""
    pct = {k: f"{100 * v:.0f}%" for k, v in premise.items() if isinstance(v, float)}
    return (f"<h2>Premise of the first-layer selection</h2><p>Of the top-{premise['top']} visual tokens by task-word "
            f"attention (unpruned, {premise['frames']} observations, each view), found again in the last layer's top: "
            f"layer 0 {pct['text_l0_in_last']}, layer 1 {pct['text_l1_in_last']}, layers 0+1 {pct['text_l01_in_last']} "
            f"(the paper: 85-95% on OpenVLA-OFT; chance {pct['chance']}); layers 0+1 among the last layer's "
            f"action-query top: {pct['text_l01_in_action_last']}.</p>\n" + _readout_html(premise))


def _readout_html(premise: dict) -> str:
    """Per layer, the action placeholders' attention on the visual tokens and over how many it spreads."""
    shares, tokens = premise.get("action_visual_share"), premise.get("action_visual_tokens")
    if not shares:
        return ""
    cells = "".join(f"<tr><td>{i}</td><td>{100 * s:.0f}%</td><td>{t:.0f}</td></tr>" for i, (s, t) in enumerate(zip(shares, tokens)))
    return ("<p>Where the action read-out looks, per decoder layer (unpruned): its attention on the visual tokens "
            "and over how many of them it spreads (exp of the entropy; 512 = uniform). Spread over hundreds, the "
            "read-out averages the image, and any pruned set that is not a uniform sample shifts what it "
            "reads.</p>\n<table><tr><th>layer</th><th>on visual tokens</th><th>spread over</th></tr>"
            f"{cells}</table>\n")


def write_index(summary: dict, out: Path, plots: dict[str, str]) -> Path:
    """index.html: the table of runs, counts, and the plots."""
    rows = []
    for name, run in _runs(summary):
        total = run["latency_ms"].get("total", {})
        dev = run.get("action_deviation") or {}
        rows.append(
            "<tr>"
            f"<td>{html.escape(name)}</td><td>{run['steps']}</td>"
            f"<td>{_fmt(total.get('median'))}</td><td>{_fmt(total.get('p90'))}</td>"
            f"<td>{_fmt(run.get('speedup_vs_baseline', 1.0 if name.startswith('baseline') else None))}</td>"
            f"<td>{_fmt(run['tokens']['kept_visual_median'])}</td>"
            f"<td>{_fmt(dev.get('mean_abs'))}</td><td>{_fmt(dev.get('max_abs'))}</td>"
            f"<td>{html.escape(', '.join(f'{m}: {n}' for m, n in sorted(run['modes'].items())))}</td>"
            "</tr>"
        )
    stages = sorted({s for _, r in _runs(summary) for s in r["latency_ms"]})
    stage_rows = []
    for name, run in _runs(summary):
        cells = "".join(
            f"<td>{_fmt(run['latency_ms'].get(s, {}).get('median'))} / {_fmt(run['latency_ms'].get(s, {}).get('p90'))}</td>"
            for s in stages
        )
        stage_rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    counts = summary["counts"]
    images = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(k)}"><figcaption>{html.escape(k)}</figcaption></figure>'
        for k, f in plots.items()
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>specprune-eval: {html.escape(summary['bag']['path'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; border: 1px solid #eee; }} code {{ background: #f4f4f4; }}
</style></head><body>
<h1>Pruning evaluation</h1>
<p>Bag <code>{html.escape(summary['bag']['path'])}</code> ({_fmt(summary['bag']['duration_s'])} s, distro
{html.escape(str(summary['bag']['distro']))}); policy <code>{html.escape(str(summary['policy']))}</code>;
{counts['observations']} observations, every run on the same ones.</p>
<h2>Runs</h2>
<table><tr><th>run</th><th>steps</th><th>median total ms</th><th>p90 total ms</th><th>speed-up vs baseline</th>
<th>visual tokens kept (median)</th><th>mean |a - a_off|</th><th>max |a - a_off|</th><th>modes</th></tr>
{''.join(rows)}</table>
<h2>Latency per stage (median / p90, ms)</h2>
<table><tr><th>run</th>{''.join(f'<th>{html.escape(s)}</th>' for s in stages)}</tr>{''.join(stage_rows)}</table>
{_premise_html(summary.get('premise'))}<h2>Inputs</h2>
<p>Frames per view: {html.escape(json.dumps(counts['frames']))}; refused query ticks by reason:
{html.escape(json.dumps(counts['refusals']))}; reference frames not used: {counts['unused_reference_frames']};
input errors: {html.escape(json.dumps(counts['input_errors']))} (first message per reason:
{html.escape(json.dumps(summary['input_error_examples']))}).</p>
<h2>Plots</h2>
{images or '<p>(plots disabled)</p>'}
<p>All numbers: <a href="summary.json">summary.json</a>.</p>
</body></html>
"""
    path = out / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path


def write_report(summary: dict, out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write summary.json, the plots (unless ``plots`` is False) and index.html into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    plot_files = write_plots(summary, out) if plots else {}
    index = write_index(summary, out, plot_files)
    return {"summary": summary_path, "index": index, **{k: out / f for k, f in plot_files.items()}}
