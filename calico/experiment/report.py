"""The results of an experiment folder, rebuilt from the run folders alone (``calico experiment report DIR``).

Read: ``DIR/store.json``, ``DIR/experiment.json`` (the grid's unit ids), and every unit folder's ``cell.json`` and
``done.json`` (:mod:`calico.experiment.run`). Written into ``DIR/report/`` (or ``out``):

* ``table.md``, ``table.csv``, ``table.json``: one row per (task, modality, init, alpha, fraction) with the number of
  seeds and, for every score of the selected evaluation (``select``: ``last``, the default, the final
  checkpoint's; ``best``: the best one of the run by NDS / mIoU, which selects on the validation split the
  scores are reported on), the mean and the sample standard deviation (ddof 1; empty with one seed) over the
  seeds; for NDS, mAP (det) and mIoU (seg) the improvement over ``scratch`` of the same task, modality and
  fraction: the mean and standard deviation of the per-seed differences over the seeds both have (paired by
  seed); and the pre-training cost of the init: steps and wall seconds of its PRC and RAD stages (mean over the
  seeds). The Markdown holds the headline columns and one per-class table per task; the CSV and JSON hold every
  column;
* ``plot-det.png`` / ``plot-seg.png``: each headline metric against the label fraction (log axis), one line per
  (modality, init[, alpha]), error bars of one standard deviation over the seeds;
* ``listing.md``, ``listing.json``: the store version, and for every unit its config SHA-256, ``cell.json`` (the
  resolved configuration), the checkpoints it started from and ended with (path relative to ``DIR``, SHA-256).

Units of the grid that have not finished are listed as missing (the table says how many).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from calico.experiment.plan import INITS, read_json
from shared.errors import InputError

#: The headline metrics of each task (the improvement over scratch is computed for these).
HEADLINE = {"det": ("NDS", "mAP"), "seg": ("mIoU",)}
#: Selections of a run's evaluation.
SELECT = ("last", "best")


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof 1) of ``values``; std NaN for fewer than two, both NaN for none."""
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> tuple[float, float, int]:
    """Mean and standard deviation (ddof 1) of ``values[s] - baseline[s]`` over the seeds ``s`` both hold, and
    their number."""
    seeds = sorted(set(values) & set(baseline))
    m, s = mean_std([values[k] - baseline[k] for k in seeds])
    return m, s, len(seeds)


def _units(root: Path, kind: str) -> list[dict]:
    out = []
    base = root / kind
    if not base.is_dir():
        return out
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        doc = read_json(d / "cell.json")
        if doc is None:
            continue
        out.append({"folder": d, "cell": doc, "done": read_json(d / "done.json")})
    return out


def collect(root: str | Path) -> dict:
    """Everything the report needs from the experiment folder: {"root", "store", "experiment", "stages": [...],
    "cells": [...]}, each unit {"folder", "cell" (cell.json), "done" (done.json or None)}."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("experiment folder not found", root)
    stages, cells = _units(root, "pretrain"), _units(root, "cells")
    if not stages and not cells:
        raise InputError("no experiment here (expected cells/*/cell.json or pretrain/*/cell.json)", root)
    return {"root": root, "store": read_json(root / "store.json"), "experiment": read_json(root / "experiment.json"),
            "stages": stages, "cells": cells}


def _scores(done: dict, select: str) -> dict[str, float]:
    row = done.get("scores_last" if select == "last" else "scores_best") or {}
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def _stage_cost(stages: dict[str, dict], uid: str) -> dict[str, tuple[int, float]]:
    """{stage kind: (steps, wall s)} over ``uid`` and the stages it starts from."""
    out: dict[str, tuple[int, float]] = {}
    todo = [uid]
    while todo:
        s = stages.get(todo.pop())
        if s is None or s["done"] is None:
            continue
        kind = s["cell"]["unit"]["kind"]
        out[kind] = (int(s["done"]["steps"]), float(s["done"].get("wall_s") or 0.0))
        todo.extend(s["cell"]["unit"]["deps"])
    return out


def _key(u: dict) -> tuple:
    return (u["kind"], u["modality"], u["init"], u["alpha"], u["fraction"])


def _order(key: tuple) -> tuple:
    task, modality, init, alpha, fraction = key
    return (task, modality, INITS.index(init) if init in INITS else 99, alpha if alpha is not None else -1.0,
            fraction)


def aggregate(data: dict, select: str = "last") -> list[dict]:
    """The table's rows (module docstring), in (task, modality, init, alpha, fraction) order."""
    if select not in SELECT:
        raise InputError(f"--select must be one of {', '.join(SELECT)}, not {select!r}")
    stages = {s["cell"]["unit"]["id"]: s for s in data["stages"]}
    groups: dict[tuple, dict[int, dict]] = {}
    costs: dict[tuple, list[dict]] = {}
    for c in data["cells"]:
        if c["done"] is None:
            continue
        u = c["cell"]["unit"]
        groups.setdefault(_key(u), {})[int(u["seed"])] = _scores(c["done"], select)
        cost = {}
        for dep in u["deps"]:
            cost |= _stage_cost(stages, dep)
        costs.setdefault(_key(u), []).append(cost)
    rows = []
    for key in sorted(groups, key=_order):
        task, modality, init, alpha, fraction = key
        by_seed = groups[key]
        row = {"task": task, "modality": modality, "init": init, "alpha": alpha, "fraction": fraction,
               "seeds": len(by_seed), "seed_list": " ".join(str(s) for s in sorted(by_seed))}
        names = sorted({k for s in by_seed.values() for k in s})
        for name in names:
            m, s = mean_std([v[name] for v in by_seed.values() if name in v])
            row[f"{name}_mean"], row[f"{name}_std"] = m, s
        base = groups.get((task, modality, "scratch", None, fraction))
        for name in HEADLINE.get(task, ()):
            if init == "scratch" or base is None:
                continue
            m, s, n = paired_difference({k: v[name] for k, v in by_seed.items() if name in v},
                                        {k: v[name] for k, v in base.items() if name in v})
            row[f"d_{name}_mean"], row[f"d_{name}_std"], row[f"d_{name}_n"] = m, s, n
        for kind in ("prc", "rad"):
            got = [c[kind] for c in costs[key] if kind in c]
            if got:
                row[f"{kind}_steps"] = float(np.mean([g[0] for g in got]))
                row[f"{kind}_wall_s"] = float(np.mean([g[1] for g in got]))
        rows.append(row)
    return rows


def stage_rows(data: dict) -> list[dict]:
    """One row per pre-training stage: id, kind, seed, alpha, weighting, steps, wall and training seconds, the
    mean loss of its last logged fifth (from metrics.jsonl), or ``done: False``."""
    out = []
    for s in data["stages"]:
        u, done = s["cell"]["unit"], s["done"]
        row = {"id": u["id"], "kind": u["kind"], "seed": u["seed"], "alpha": u["alpha"], "weighting": u["weighting"],
               "done": done is not None}
        if done is not None:
            row |= {"steps": done["steps"], "wall_s": done.get("wall_s"), "train_s": done.get("train_s")}
            metrics = s["folder"] / "run" / "metrics.jsonl"
            if metrics.is_file():
                losses = [json.loads(ln)["loss"] for ln in metrics.read_text().splitlines() if ln.strip()]
                if losses:
                    row["last_loss"] = float(np.mean(losses[-max(1, len(losses) // 5):]))
        out.append(row)
    return out


def missing(data: dict) -> list[str]:
    """Units of the grid (``experiment.json``, else every unit folder) without a ``done.json``."""
    have = {u["cell"]["unit"]["id"]: u for u in data["stages"] + data["cells"]}
    planned = (data["experiment"] or {}).get("units") or sorted(have)
    return [uid for uid in planned if uid not in have or have[uid]["done"] is None]


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _pm(row: dict, name: str, prefix: str = "") -> str:
    m, s = row.get(f"{prefix}{name}_mean"), row.get(f"{prefix}{name}_std")
    if m is None:
        return "-"
    text = _num(m) if s is None or math.isnan(s) else f"{_num(m)} ± {_num(s)}"
    if prefix and row.get(f"{prefix}{name}_n") is not None:
        text += f" (n={row[f'{prefix}{name}_n']})"
    return text


def init_label(row: dict) -> str:
    return row["init"] + (f" (a={row['alpha']:g})" if row.get("alpha") is not None else "")


def _cost(row: dict) -> str:
    parts = [f"{k.upper()} {row[f'{k}_steps']:.0f} steps / {row[f'{k}_wall_s']:.0f} s" for k in ("prc", "rad")
             if f"{k}_steps" in row]
    return ", ".join(parts) or "-"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(data: dict, rows: list[dict], stages: list[dict], select: str, gone: list[str]) -> str:
    """``table.md``: the headline table per task, its per-class table, the pre-training stages, what is missing."""
    store = data["store"] or {}
    out = [f"# Label efficiency: {data['root']}", "",
           f"Store version `{store.get('version', '?')}` ({store.get('store', '?')}). Scores: the "
           + ("last evaluation of each run (its final checkpoint)" if select == "last" else
              "best evaluation of each run (selected on the validation split it is reported on)")
           + "; mean ± standard deviation over the seeds; the improvement over scratch is the mean ± standard "
             "deviation of the per-seed differences (n paired seeds).", ""]
    if gone:
        out += [f"**Incomplete**: {len(gone)} unit(s) of the grid have not finished: {', '.join(gone[:10])}"
                + (" ..." if len(gone) > 10 else ""), ""]
    for task in ("det", "seg"):
        trows = [r for r in rows if r["task"] == task]
        if not trows:
            continue
        metrics = HEADLINE[task]
        out += [f"## {'3-D detection' if task == 'det' else 'BEV map segmentation'} ({task})", ""]
        head = ["modality", "init", "fraction", "seeds"] + list(metrics) + [f"Δ{m} vs scratch" for m in metrics] \
            + ["pre-training"]
        out.append(md_table(head, [[r["modality"], init_label(r), f"{r['fraction']:g}", str(r["seeds"])]
                                    + [_pm(r, m) for m in metrics] + [_pm(r, m, "d_") for m in metrics]
                                    + [_cost(r)] for r in trows]))
        per_class = sorted({k[:-5] for r in trows for k in r if k.endswith("_mean") and not k.startswith("d_")
                            and k[:-5] not in metrics})
        if per_class:
            out += ["", f"Per class and the other scores ({task}), mean ± std over the seeds:", ""]
            out.append(md_table(["modality", "init", "fraction"] + per_class,
                                 [[r["modality"], init_label(r), f"{r['fraction']:g}"] + [_pm(r, c) for c in per_class]
                                  for r in trows]))
        out.append("")
    if stages:
        out += ["## Pre-training stages", ""]
        out.append(md_table(["stage", "steps", "wall s", "train s (metrics)", "last loss"],
                             [[s["id"], str(s.get("steps", "-")), _num(s.get("wall_s"), 1), _num(s.get("train_s"), 1),
                               _num(s.get("last_loss"), 4)] if s["done"] else [s["id"], "not finished", "-", "-", "-"]
                              for s in stages]))
        out.append("")
    return "\n".join(out)


def to_csv(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    return buf.getvalue()


def json_safe(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def listing(data: dict) -> list[dict]:
    """Per unit: id, folder, config SHA-256, the store version, inputs (checkpoints it started from), last and best
    checkpoints, and the resolved configuration."""
    out = []
    for u in data["stages"] + data["cells"]:
        c, d = u["cell"], u["done"] or {}
        out.append({"id": c["unit"]["id"], "folder": str(u["folder"].relative_to(data["root"])),
                    "config_sha256": c.get("config_sha256"), "store_version": c.get("store_version"),
                    "inputs": d.get("inputs") or c.get("inputs"), "last_checkpoint": d.get("last_checkpoint"),
                    "best_checkpoint": d.get("best_checkpoint"), "done": bool(d), "config": c.get("config")})
    return out


def listing_markdown(data: dict, items: list[dict]) -> str:
    store = data["store"] or {}
    lines = [f"# Listing: {data['root']}", "",
             f"Store: `{store.get('store', '?')}`, version `{store.get('version', '?')}`"
             + (" (preprocessed by the experiment)" if store.get("built") else ""), ""]

    def ck(c):
        return f"`{c['path']}` sha256 `{c['sha256']}`" if c else "-"

    rows = []
    for it in items:
        inputs = "; ".join(f"{k}: `{v['checkpoint']}` sha256 `{v['sha256']}`" for k, v in (it["inputs"] or {}).items())
        rows.append([it["id"], f"`{it['folder']}/cell.json`", f"`{(it['config_sha256'] or '')[:16]}`", inputs or "-",
                     ck(it["last_checkpoint"]), ck(it["best_checkpoint"])])
    lines.append(md_table(["unit", "config", "config sha256", "started from", "last checkpoint", "best checkpoint"],
                           rows))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], task: str, path: Path) -> Path | None:
    """``plot-<task>.png``: each headline metric against the label fraction, one line per (modality, init[,
    alpha]), error bars of one standard deviation; None when there are no rows for ``task``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trows = [r for r in rows if r["task"] == task]
    if not trows:
        return None
    metrics = HEADLINE[task]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), dpi=100, squeeze=False)
    lines: dict[str, list[dict]] = {}
    for r in trows:
        lines.setdefault(f"{r['modality']} / {init_label(r)}", []).append(r)
    for ax, m in zip(axes[0], metrics):
        for label, rs in lines.items():
            rs = sorted(rs, key=lambda r: r["fraction"])
            x = [r["fraction"] for r in rs]
            y = [r.get(f"{m}_mean", math.nan) for r in rs]
            e = [0.0 if math.isnan(r.get(f"{m}_std", math.nan)) else r[f"{m}_std"] for r in rs]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label, lw=1.2)
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["fraction"] for r in trows}))
        ax.set_xticklabels([f"{f:g}" for f in sorted({r["fraction"] for r in trows})])
        ax.set_xlabel("label fraction")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{task}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(root: str | Path, out: str | Path | None = None, select: str = "last") -> dict:
    """Write every file of the module docstring into ``out`` (default ``DIR/report``); returns {"out", "files",
    "rows", "missing"}."""
    from train.checkpoint import atomic_write_text

    data = collect(root)
    out = Path(out) if out is not None else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows, stages, gone = aggregate(data, select), stage_rows(data), missing(data)
    items = listing(data)
    files = []
    for name, text in (("table.md", markdown(data, rows, stages, select, gone)), ("table.csv", to_csv(rows)),
                       ("table.json", json.dumps(json_safe({"root": str(data["root"]), "select": select,
                                                             "store": data["store"], "rows": rows,
                                                             "stages": stages, "missing": gone}), indent=1)),
                       ("listing.md", listing_markdown(data, items)),
                       ("listing.json", json.dumps(json_safe(items), indent=1))):
        atomic_write_text(out / name, text)
        files.append(out / name)
    for task in ("det", "seg"):
        p = plot(rows, task, out / f"plot-{task}.png")
        if p is not None:
            files.append(p)
    return {"out": out, "files": files, "rows": rows, "missing": gone}
