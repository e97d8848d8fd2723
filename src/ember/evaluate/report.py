"""Side-by-side comparison of two versions, and an HTML + PNG report of a model's metric history.

    ember eval compare smollm2-135m-instruct:1 smollm2-135m-instruct:2 --task builtin:generate
    ember eval report smollm2-135m-instruct --out ./eval-report

Both read stored runs only (store/evals.py). The report plots, for every task and metric, the value of each
version's newest run against the version number (the model's history), and lists every run of the version
asked for. HTML is rendered with an autoescaping Jinja environment: task names and outputs are user data.
"""

from pathlib import Path

from ember.config import Settings

# Metrics where lower is better; every other metric is higher-is-better.
LOWER_IS_BETTER = {"perplexity", "bits_per_byte", "word_perplexity"}
_SKIP = {"tokens"}  # counts, not scores


def compare_rows(a_runs: list[dict], b_runs: list[dict]) -> list[dict]:
    """One row per (task, metric) that either run set has, from each side's newest run on the same task and data.
    `better` says which side wins ("a", "b", "=" or None when a side has no value)."""
    def newest(runs):
        out = {}
        for r in runs:
            out[(r["task"], r["task_digest"], r["data_digest"])] = r
        return out

    na, nb = newest(a_runs), newest(b_runs)
    rows = []
    for key in sorted(set(na) | set(nb), key=lambda k: (k[0], k[1])):
        ma = na[key]["metrics"] if key in na else {}
        mb = nb[key]["metrics"] if key in nb else {}
        for metric in sorted((set(ma) | set(mb)) - _SKIP):
            a, b = ma.get(metric), mb.get(metric)
            diff = rel = better = None
            if a is not None and b is not None:
                diff = b - a
                rel = diff / abs(a) if a else None
                better = "=" if diff == 0 else ("b" if (diff < 0) == (metric in LOWER_IS_BETTER) else "a")
            rows.append({"task": key[0], "data_digest": key[2][:12], "metric": metric, "a": a, "b": b, "diff": diff,
                         "relative": rel, "better": better})
    return rows


def history(name: str, settings: Settings | None = None) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(task, metric): [(version, value of that version's newest run), ...]} over every version of a model."""
    from ember.store import evals

    series: dict[tuple[str, str], dict[int, float]] = {}
    for r in evals.model_runs(name, settings):
        for metric, value in r["metrics"].items():
            if metric in _SKIP or not isinstance(value, (int, float)):
                continue
            series.setdefault((r["task"], metric), {})[r["version"]] = float(value)
    return {k: sorted(v.items()) for k, v in sorted(series.items())}


def _plot(series, highlight: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
    import matplotlib.pyplot as plt

    n = max(len(series), 1)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, ((task, metric), points) in zip(axes.flat, series.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o")
        for x, y in points:
            if x == highlight:
                ax.plot([x], [y], marker="o", markersize=10, color="tab:red")
        ax.set_title(f"{task}: {metric}" + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=9)
        ax.set_xlabel("version")
        ax.set_xticks(list(xs))
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    if not series:
        axes.flat[0].text(0.5, 0.5, "no evaluation runs yet", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Ember evaluation report: {{ ref }}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f4f4f4}.num{text-align:right}</style>
</head><body>
<h1>Evaluation report: {{ ref }}</h1>
<p>Generated {{ generated }}. {{ runs|length }} run(s) of this version; history over {{ versions|length }}
version(s) of {{ name }}.</p>
<h2>Metric history</h2>
<img src="{{ png }}" alt="metric history of {{ name }}">
{% for (task, metric), points in series.items() %}
{% if loop.first %}<table><tr><th>task</th><th>metric</th>{% for v in versions %}<th>v{{ v }}</th>{% endfor %}</tr>{% endif %}
<tr><td>{{ task }}</td><td>{{ metric }}</td>{% for v in versions %}<td class="num">{{ fmt(dict(points).get(v)) }}</td>{% endfor %}</tr>
{% if loop.last %}</table>{% endif %}
{% endfor %}
<h2>Runs of {{ ref }}</h2>
<table><tr><th>id</th><th>when</th><th>task</th><th>examples</th><th>metrics</th><th>task digest</th><th>data digest</th><th>outputs</th></tr>
{% for r in runs %}<tr><td>{{ r.id }}</td><td>{{ r.created_at }}</td><td>{{ r.task }}</td><td>{{ r.settings.get("examples", "") }}</td>
<td>{% for k, v in r.metrics.items() %}{{ k }}={{ fmt(v) }} {% endfor %}</td><td>{{ r.task_digest[:12] }}</td>
<td>{{ r.data_digest[:12] }}</td><td>{{ (r.outputs_digest or "")[:12] }}</td></tr>{% endfor %}
</table>
{% if samples %}<h2>Sample outputs (newest run per task)</h2>
{% for task, rows in samples.items() %}<h3>{{ task }}</h3><table><tr><th>#</th><th>output</th><th>reference</th></tr>
{% for o in rows %}<tr><td>{{ o.index }}</td><td>{{ o.output }}</td><td>{{ o.reference }}</td></tr>{% endfor %}</table>
{% endfor %}{% endif %}
</body></html>
"""


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(ref: str, out_dir: Path, settings: Settings | None = None, samples: int = 5) -> dict:
    """Writes OUT/report.html and OUT/history.png; returns their paths and the data they show."""
    from datetime import datetime, timezone

    from jinja2 import select_autoescape
    from jinja2.sandbox import SandboxedEnvironment

    from ember.store import evals, registry

    info = registry.resolve(ref, settings)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    series = history(info.name, settings)
    versions = sorted({v for pts in series.values() for v, _ in pts})
    runs = evals.runs(info.ref, settings=settings)
    png = out_dir / "history.png"
    _plot(series, info.number, png)
    newest = {}
    for r in runs:
        newest[r["task"]] = r
    sample_rows = {}
    for task, r in newest.items():
        rows = [o for o in evals.outputs(r, settings)[:samples] if "output" in o]
        if rows:
            sample_rows[task] = rows
    env = SandboxedEnvironment(autoescape=select_autoescape(default=True, default_for_string=True))
    page = env.from_string(_TEMPLATE).render(
        ref=info.ref, name=info.name, runs=runs, series=series, versions=versions, png=png.name, fmt=_fmt,
        dict=dict, samples=sample_rows, generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return {"ref": info.ref, "html": str(html_path), "png": str(png), "runs": len(runs),
            "series": {f"{t}.{m}": pts for (t, m), pts in series.items()}}
