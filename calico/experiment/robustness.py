"""Robustness of an experiment's fine-tuned cells (``calico experiment robustness DIR``): every finished cell of the
chosen inits, tasks, fraction and seeds is scored clean, under every (corruption, severity) and under the LiDAR
spoofing attack at every range (:func:`train.eval.finetune.evaluate_checkpoint` with a
:class:`train.eval.robustness.apply.EvalCorruption`), then tabulated: scratch vs CALICO side by side.

Files, under ``DIR/robustness/``:

* ``<cell-id>/<tag>.json``: one evaluation's record, written atomically once it finished: the cell's identity,
  the setting (``tag``: ``clean``, ``fog-s3``, ``spoof-10m``, with ``-seedK`` for ``--corrupt-seed K``; the
  :class:`EvalCorruption` fields), the checkpoint it scored (path relative to ``DIR``, SHA-256, step, which
  selection), the split, the scores and the wall seconds;
* ``<cell-id>/<tag>/``: what the evaluation wrote (the devkit's ``metrics_summary.json`` / ``seg_metrics.json``,
  ``scores.json``, ``table.md``); ``<cell-id>/log.txt``: what it printed;
* ``table.md``, ``table.csv``, ``table.json``: the table (:func:`aggregate`).

A rerun skips an evaluation whose record holds the same setting and checkpoint SHA-256 as now; one whose cell was
trained further or retrained since (``done.json`` names another checkpoint) is recomputed. Every run hashes each
selected checkpoint file once: one whose SHA-256 is not the one its cell's ``done.json`` recorded (changed behind
the experiment's back) is refused: that cell's evaluations fail, naming it, and it is left out of the table.

Which pairs are evaluated: a camera corruption changes nothing for a LiDAR-only cell (``lidar`` modality), a LiDAR
corruption or the spoofing attack nothing for a camera-only one, and the spoofing attack is scored on detections
(its false-positive rate) so only for ``det`` cells; such pairs are not run, and the table says ``n/a`` with the
reason (:func:`not_applicable`).

The table (:func:`aggregate`): one row per (task, modality, init, alpha, fraction, setting) with the seeds that
have a record, and for every score the mean and the sample standard deviation (ddof 1; NaN with one seed) over
them; for NDS, mAP (det) and mIoU (seg), against the same cell's clean evaluation, paired by seed: ``drop_<m>`` =
clean - corrupted (positive: the corruption hurts) and ``rdrop_<m>`` = (clean - corrupted) / clean over the seeds
whose clean score is not 0: mean, standard deviation and number of seeds. Spoofing rows also carry
``spoof_fp_rate`` (the share of keyframes, without a real object at the fake car, with a detection there); its
``drop_NDS`` is the NDS change with the sign flipped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calico.experiment.plan import FINETUNE_TASKS, INITS, fmt, read_json
from calico.experiment.report import HEADLINE, SELECT, collect, init_label, json_safe, md_table, mean_std, to_csv
from shared.errors import ConfigError, InputError

#: The defaults of ``calico experiment robustness``: three LiDAR and two camera corruptions, three severities, two
#: spoofing ranges (issue 14's robustness table).
DEFAULT_CORRUPTIONS: tuple[str, ...] = ("beam_missing", "point_dropping", "fog", "brightness", "low_light")
DEFAULT_SEVERITIES: tuple[int, ...] = (1, 3, 5)
DEFAULT_SPOOF_RANGES: tuple[float, ...] = (10.0, 20.0)
#: The tag of the clean evaluation.
CLEAN = "clean"
#: The metric shown in the progress lines per task.
_NOTE = {"det": ("NDS", "mAP"), "seg": ("mIoU",)}


def _tuple(name: str, values, check, allowed: str) -> tuple:
    vals = tuple(values)
    for v in vals:
        if not check(v):
            raise ConfigError(name, v, f"each value must be {allowed}")
    if len(set(vals)) != len(vals):
        raise ConfigError(name, ",".join(str(v) for v in vals), "repeats a value")
    return vals


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class RobustnessSpec:
    """The options of ``calico experiment robustness`` (validated; ConfigError naming the option).

    Fields: ``inits``, ``tasks``: which cells; ``fraction``: their label fraction (None: the largest of the
    experiment); ``seeds``: None for every seed in the folder; ``corruptions`` x ``severities``: the corrupted
    settings (names of :data:`train.eval.robustness.apply.CORRUPTIONS`); ``spoof_ranges``: metres ahead of the
    spoofed car (det only); ``select``: the checkpoint scored, ``last`` (the final one) or ``best`` (the cell's
    best by NDS / mIoU on the validation split); ``corrupt_seed``: the corruption draws' seed."""

    inits: tuple[str, ...] = ("scratch", "calico")
    tasks: tuple[str, ...] = FINETUNE_TASKS
    fraction: float | None = None
    corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS
    severities: tuple[int, ...] = DEFAULT_SEVERITIES
    spoof_ranges: tuple[float, ...] = DEFAULT_SPOOF_RANGES
    seeds: tuple[int, ...] | None = None
    select: str = "last"
    corrupt_seed: int = 0

    def __post_init__(self):
        from train.eval.robustness.apply import CORRUPTIONS, EvalCorruption
        from train.eval.robustness.common import SEVERITIES

        if not self.inits:
            raise ConfigError("--inits", "", "must name at least one init")
        _tuple("--inits", self.inits, lambda v: v in INITS, f"one of {', '.join(INITS)}")
        if not self.tasks:
            raise ConfigError("--task", "", "must name det, seg or both")
        _tuple("--task", self.tasks, lambda v: v in FINETUNE_TASKS, "det or seg")
        if self.fraction is not None and (isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float))
                                          or not math.isfinite(self.fraction) or not 0 < self.fraction <= 1):
            raise ConfigError("--fraction", self.fraction, "must be a fraction in (0, 1]")
        _tuple("--corruptions", self.corruptions, lambda v: v in CORRUPTIONS, f"one of {', '.join(CORRUPTIONS)}")
        if self.corruptions and not self.severities:
            raise ConfigError("--severities", "", "must name at least one severity when corruptions are given")
        _tuple("--severities", self.severities, lambda v: _is_int(v) and int(v) in SEVERITIES,
               f"one of {', '.join(map(str, SEVERITIES))}")
        _tuple("--spoof-ranges", self.spoof_ranges, lambda v: not isinstance(v, bool) and isinstance(v, (int, float)),
               "a number of metres")
        for r in self.spoof_ranges:  # the evaluation's own check: 3..100 m
            try:
                EvalCorruption(spoof_range=float(r))
            except ConfigError as exc:
                raise ConfigError("--spoof-ranges", r, str(exc).split(": ", 1)[-1]) from None
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("--seeds", "", "must name at least one seed (or leave it out: every seed)")
            _tuple("--seeds", self.seeds, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        if self.select not in SELECT:
            raise ConfigError("--select", self.select, f"must be one of {', '.join(SELECT)}")
        if not _is_int(self.corrupt_seed) or self.corrupt_seed < 0:
            raise ConfigError("--corrupt-seed", self.corrupt_seed, "must be an integer >= 0")

    def settings(self) -> list:
        """The evaluations of one cell: None (clean), every (corruption, severity) in the given order, then every
        spoofing range (:class:`EvalCorruption` each)."""
        from train.eval.robustness.apply import EvalCorruption

        out: list = [None]
        out += [EvalCorruption(name=c, severity=int(s), seed=int(self.corrupt_seed)) for c in self.corruptions
                for s in self.severities]
        out += [EvalCorruption(spoof_range=float(r), seed=int(self.corrupt_seed)) for r in self.spoof_ranges]
        return out


def tag(corruption) -> str:
    """The file name (without ``.json``) of an evaluation: ``clean`` or :attr:`EvalCorruption.tag`."""
    return CLEAN if corruption is None else corruption.tag


def kind(corruption) -> str:
    """``clean``, ``corruption`` or ``spoof``."""
    if corruption is None:
        return "clean"
    return "spoof" if corruption.spoof_range is not None and corruption.name is None else "corruption"


def not_applicable(task: str, modality: str, corruption) -> str | None:
    """Why ``corruption`` is not evaluated on a ``task`` cell of ``modality`` (None: it is)."""
    if corruption is None:
        return None
    if corruption.spoof_range is not None and task != "det":
        return "spoofing is scored on detections (det only)"
    if corruption.camera and modality == "lidar":
        return "a LiDAR-only model does not see the cameras"
    if corruption.lidar and modality == "camera":
        return "a camera-only model does not see the LiDAR"
    return None


# ------------------------------------------------------------------------------------------------------------
# Which cells
# ------------------------------------------------------------------------------------------------------------


def default_fraction(data: dict) -> float:
    """The largest label fraction of the experiment (``experiment.json``'s ``--fractions``, else of its cells)."""
    spec = (data.get("experiment") or {}).get("spec") or {}
    fractions = [float(f) for f in spec.get("fractions") or []]
    if not fractions:
        fractions = [float(c["cell"]["unit"]["fraction"]) for c in data["cells"]
                     if c["cell"]["unit"].get("fraction") is not None]
    if not fractions:
        raise InputError("no fine-tuning cells here (cells/*/cell.json)", data["root"])
    return max(fractions)


def select_cells(data: dict, spec: RobustnessSpec) -> tuple[list[dict], float, list[str]]:
    """The finished cells matching ``spec`` (init, task, fraction, seeds), in table order, the fraction used, and
    notes (unfinished matches, inits without a cell). InputError naming the folder when none matches."""
    fraction = float(spec.fraction) if spec.fraction is not None else default_fraction(data)
    match, unfinished = [], []
    for c in data["cells"]:
        u = c["cell"]["unit"]
        if (u.get("kind") not in spec.tasks or u.get("init") not in spec.inits or u.get("fraction") is None
                or fmt(u["fraction"]) != fmt(fraction) or (spec.seeds is not None and u["seed"] not in spec.seeds)):
            continue
        (match if c["done"] is not None else unfinished).append(c)
    notes = []
    if unfinished:
        notes.append(f"{len(unfinished)} matching cell(s) have not finished and are left out: "
                     + ", ".join(c["cell"]["unit"]["id"] for c in unfinished[:5]) + (" ..." if len(unfinished) > 5
                                                                                      else ""))
    if not match:
        done = sorted(c["cell"]["unit"]["id"] for c in data["cells"] if c["done"] is not None)
        shown = ", ".join(done[:8]) + (" ..." if len(done) > 8 else "")
        raise InputError(f"no finished cell matches --inits {','.join(spec.inits)} --task {','.join(spec.tasks)} "
                         f"--fraction {fmt(fraction)}"
                         + (f" --seeds {','.join(map(str, spec.seeds))}" if spec.seeds is not None else "")
                         + f"; finished cells here: {shown or 'none'}", data["root"])
    for init in spec.inits:
        for task in spec.tasks:
            if not any(c["cell"]["unit"]["init"] == init and c["cell"]["unit"]["kind"] == task for c in match):
                notes.append(f"no finished {task} cell of the {init} init at fraction {fmt(fraction)}")
    match.sort(key=lambda c: _row_order(_cell_key(c["cell"]["unit"])) + (c["cell"]["unit"]["seed"],))
    return match, fraction, notes


def _cell_key(u: dict) -> tuple:
    return (u["kind"], u["modality"], u["init"], u["alpha"], float(u["fraction"]))


def _row_order(key: tuple) -> tuple:
    task, modality, init, alpha, fraction = key
    return (task, modality, fraction, INITS.index(init) if init in INITS else 99, -1.0 if alpha is None else alpha)


def selected_checkpoint(cell: dict, select: str) -> dict:
    """The ``done.json`` record {"path" (relative to DIR), "sha256", "step"} of the checkpoint ``select`` scores."""
    done = cell["done"]
    rec = done.get("last_checkpoint" if select == "last" else "best_checkpoint")
    if not rec:
        raise InputError(f"done.json names no {select} checkpoint", cell["folder"] / "done.json")
    return rec


# ------------------------------------------------------------------------------------------------------------
# Running the evaluations
# ------------------------------------------------------------------------------------------------------------


def record_path(root: Path, cell_id: str, corruption) -> Path:
    return Path(root) / "robustness" / cell_id / f"{tag(corruption)}.json"


def _setting(corruption) -> dict | None:
    return dataclasses.asdict(corruption) if corruption is not None else None


def record_state(record: dict | None, corruption, checkpoint: dict) -> str:
    """``done`` (the same setting and checkpoint), ``changed`` (another checkpoint or setting: recompute), ``new``."""
    if record is None:
        return "new"
    same = (record.get("corruption") == _setting(corruption)
            and (record.get("checkpoint") or {}).get("sha256") == checkpoint["sha256"])
    return "done" if same else "changed"


def _score_note(task: str, scores: dict) -> str:
    parts = [f"{m} {scores[m]:.3f}" for m in _NOTE[task] if isinstance(scores.get(m), (int, float))]
    if isinstance(scores.get("spoof_fp_rate"), (int, float)):
        parts.append(f"spoof FP rate {scores['spoof_fp_rate']:.3f}")
    return ", ".join(parts)


def evaluate_cell(root: Path, cell: dict, corruption, select: str, store: str | None = None) -> dict:
    """Score ``cell``'s selected checkpoint under ``corruption`` (None: clean) into ``DIR/robustness/<cell>/<tag>/``
    and write its record ``<tag>.json`` atomically; returns the record."""
    from calico.experiment.run import atomic_json, output_to
    from train.eval.finetune import evaluate_checkpoint

    u = cell["cell"]["unit"]
    ck = selected_checkpoint(cell, select)
    folder = Path(root) / "robustness" / u["id"]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with output_to(folder / "log.txt", True, f"{tag(corruption)} of {u['id']}"):
        result = evaluate_checkpoint(Path(root) / ck["path"], u["kind"], store=store, out_dir=folder / tag(corruption),
                                     corruption=corruption, render_curves=False)
    rec = {"cell": u["id"], "unit": u, "tag": tag(corruption), "kind": kind(corruption),
           "corruption": _setting(corruption), "select": select,
           "checkpoint": {"path": ck["path"], "sha256": ck["sha256"], "step": int(result["step"])},
           "split": result["split"], "scores": result["scores"], "wall_s": time.time() - t0, "finished": time.time()}
    atomic_json(record_path(root, u["id"], corruption), rec)
    return rec


def _check_checkpoint(root: Path, cell: dict, select: str, seen: dict) -> str | None:
    """None when the selected checkpoint file's SHA-256 is the one ``done.json`` records, else why not (cached
    per cell in ``seen``)."""
    from data_catalog.version import sha256_file

    uid = cell["cell"]["unit"]["id"]
    if uid not in seen:
        ck = selected_checkpoint(cell, select)
        path = Path(root) / ck["path"]
        if not path.is_file():
            seen[uid] = f"its {select} checkpoint {path} is missing"
        else:
            now = sha256_file(path)
            seen[uid] = None if now == ck["sha256"] else (
                f"its {select} checkpoint {path} changed since the cell finished (done.json records sha256 "
                f"{ck['sha256'][:12]}, the file has {now[:12]}); refusing to score it: rerun `calico experiment "
                f"label-efficiency` or delete the cell's folder to recompute it")
    return seen[uid]


def run_robustness(root: str | Path, spec: RobustnessSpec, log: Callable = print) -> dict:
    """Evaluate every (cell, setting) of ``spec`` that has no current record (module docstring), then write the
    table. Returns {"evaluated", "recomputed", "skipped": [(cell, tag)], "failed": {(cell, tag): message},
    "not_applicable": [(cell, tag, reason)], "fraction", "notes", "table" (:func:`write_table`'s), "wall_s"}."""
    from calico.experiment.run import Counter, elapsed

    t_start = time.time()
    root = Path(root)
    data = collect(root)
    cells, fraction, notes = select_cells(data, spec)
    settings = spec.settings()
    store_rec = data.get("store") or {}
    store = str(root / "store") if store_rec.get("built") and (root / "store").is_dir() else None
    jobs, skipped_pairs = [], []
    for c in cells:
        u = c["cell"]["unit"]
        for s in settings:
            why = not_applicable(u["kind"], u["modality"], s)
            if why is None:
                jobs.append((c, s))
            else:
                skipped_pairs.append((u["id"], tag(s), why))
    for note in notes:
        log(f"note: {note}")
    reasons: dict[str, list[str]] = {}
    for cid, t, why in skipped_pairs:
        reasons.setdefault(why, []).append(t)
    for why, tags in reasons.items():
        uniq = sorted(set(tags), key=tags.index)
        n_cells = len({cid for cid, _, w in skipped_pairs if w == why})
        log(f"note: not evaluated on {n_cells} cell(s), {why}: {', '.join(uniq)}")
    log(f"robustness: {len(cells)} cell(s) at fraction {fmt(fraction)} (--select {spec.select}), "
        f"{len(settings)} setting(s) each: {len(jobs)} evaluation(s), {len(skipped_pairs)} not applicable")
    result = {"evaluated": [], "recomputed": [], "skipped": [], "failed": {}, "not_applicable": skipped_pairs,
              "fraction": fraction, "notes": notes}
    counter = Counter(len(jobs), log)
    sha_checked: dict = {}
    for c, s in jobs:
        u = c["cell"]["unit"]
        name = f"{u['id']} {tag(s)}"
        ck = selected_checkpoint(c, spec.select)
        bad = _check_checkpoint(root, c, spec.select, sha_checked)
        if bad is not None:
            result["failed"][(u["id"], tag(s))] = bad
            counter.line("FAILED", name, bad, count=True)
            continue
        state = record_state(read_json(record_path(root, u["id"], s)), s, ck)
        if state == "done":
            result["skipped"].append((u["id"], tag(s)))
            counter.line("skipped", name, "done earlier", count=True)
            continue
        log_file = root / "robustness" / u["id"] / "log.txt"
        counter.line("evaluating", name, ("recomputing: the record is of another checkpoint or setting; "
                                          if state == "changed" else "") + f"log: {log_file}")
        t = time.time()
        try:
            rec = evaluate_cell(root, c, s, spec.select, store=store)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result["failed"][(u["id"], tag(s))] = msg
            counter.line("FAILED", name, f"{msg}; log: {log_file}", count=True)
            continue
        result["recomputed" if state == "changed" else "evaluated"].append((u["id"], tag(s)))
        counter.line("evaluated", name, f"in {elapsed(time.time() - t)}: {_score_note(u['kind'], rec['scores'])}",
                     count=True)
    refused = {uid for uid, why in sha_checked.items() if why is not None}
    result["table"] = write_table(root, spec, data=data, fraction=fraction, not_applicable_pairs=skipped_pairs,
                                  cells=[c for c in cells if c["cell"]["unit"]["id"] not in refused])
    result["wall_s"] = time.time() - t_start
    return result


# ------------------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------------------


def load_records(root: Path, cells: list[dict], settings: list, select: str) -> dict[tuple[str, str], dict]:
    """{(cell id, tag): record} of the records that hold the setting and the cell's current selected checkpoint."""
    out = {}
    for c in cells:
        u = c["cell"]["unit"]
        ck = selected_checkpoint(c, select)
        for s in settings:
            rec = read_json(record_path(root, u["id"], s))
            if record_state(rec, s, ck) == "done":
                out[(u["id"], tag(s))] = rec
    return out


def _numbers(scores: dict) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def aggregate(cells: list[dict], settings: list, records: dict[tuple[str, str], dict]) -> list[dict]:
    """The table's rows (module docstring), grouped by (task, modality, init, alpha, fraction) in table order and,
    within a group, in the order of ``settings``. A pair that is not applicable gets a row with ``na`` (the
    reason) and no scores."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(_cell_key(c["cell"]["unit"]), []).append(c["cell"]["unit"])
    rows = []
    for key in sorted(groups, key=_row_order):
        task, modality, init, alpha, fraction = key
        units = sorted(groups[key], key=lambda u: u["seed"])
        clean = {u["seed"]: _numbers(records[(u["id"], CLEAN)]["scores"]) for u in units
                 if (u["id"], CLEAN) in records}
        for s in settings:
            row = {"task": task, "modality": modality, "init": init, "alpha": alpha, "fraction": fraction,
                   "setting": tag(s), "kind": kind(s), "corruption": s.name if s is not None else None,
                   "severity": s.severity if s is not None and s.name is not None else None,
                   "spoof_range": s.spoof_range if s is not None else None}
            why = not_applicable(task, modality, s)
            if why is not None:
                rows.append(row | {"seeds": 0, "seed_list": "", "na": why})
                continue
            by_seed = {u["seed"]: _numbers(records[(u["id"], tag(s))]["scores"]) for u in units
                       if (u["id"], tag(s)) in records}
            row |= {"seeds": len(by_seed), "seed_list": " ".join(str(k) for k in sorted(by_seed)), "na": None}
            for name in sorted({k for v in by_seed.values() for k in v}):
                m, sd = mean_std([v[name] for v in by_seed.values() if name in v])
                row[f"{name}_mean"], row[f"{name}_std"] = m, sd
            if s is not None:
                for name in HEADLINE[task]:
                    common = sorted(k for k in by_seed if name in by_seed[k] and k in clean and name in clean[k])
                    drops = [clean[k][name] - by_seed[k][name] for k in common]
                    m, sd = mean_std(drops)
                    row[f"drop_{name}_mean"], row[f"drop_{name}_std"], row[f"drop_{name}_n"] = m, sd, len(common)
                    rel = [(clean[k][name] - by_seed[k][name]) / clean[k][name] for k in common if clean[k][name] != 0]
                    m, sd = mean_std(rel)
                    row[f"rdrop_{name}_mean"], row[f"rdrop_{name}_std"], row[f"rdrop_{name}_n"] = m, sd, len(rel)
            rows.append(row)
    return rows


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _pm(row: dict, name: str, scale: float = 1.0, digits: int = 3) -> str:
    m, s = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    if s is None or math.isnan(s):
        return _num(m * scale, digits)
    return f"{_num(m * scale, digits)} ± {_num(s * scale, digits)}"


def _drop(row: dict, name: str) -> str:
    if f"drop_{name}_mean" not in row:
        return "-"
    text = _pm(row, f"drop_{name}")
    if row.get(f"rdrop_{name}_n"):
        text += f" ({_pm(row, f'rdrop_{name}', 100.0, 1)} %)"
    return text


def _setting_label(row: dict) -> str:
    if row["kind"] == "clean":
        return "clean"
    if row["kind"] == "spoof":
        return f"spoof {row['spoof_range']:g} m"
    return f"{row['corruption']} s{row['severity']}"


def markdown(root: Path, rows: list[dict], spec: RobustnessSpec, fraction: float, missing: list[str]) -> str:
    """``table.md``: per (task, modality), the corruptions and the spoofing attack, the inits side by side."""
    out = [f"# Robustness: {root}", "",
           f"Cells at label fraction {fmt(fraction)}, their {spec.select} checkpoint"
           + (" (selected by NDS / mIoU on the validation split it is scored on)" if spec.select == "best" else "")
           + f"; corruption seed {spec.corrupt_seed}. Mean ± standard deviation over the seeds (ddof 1). Drop = clean "
             "- corrupted, per seed, then mean ± std (positive: worse); in brackets relative to the clean score. "
             "`n/a`: the setting does not reach that model's inputs.", ""]
    if missing:
        out += [f"**Incomplete**: {len(missing)} evaluation(s) have no result: {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else ""), ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["modality"], r["fraction"]), []).append(r)
    for (task, modality, fr), grows in groups.items():
        inits: list[str] = []
        for r in grows:
            if init_label(r) not in inits:
                inits.append(init_label(r))
        cell = {(init_label(r), r["setting"]): r for r in grows}
        settings = []
        for r in grows:
            if r["setting"] not in [s["setting"] for s in settings]:
                settings.append(r)
        seeds = "; ".join(f"{i}: {cell[(i, CLEAN)]['seed_list'] or 'none'}" for i in inits if (i, CLEAN) in cell)
        out += [f"## {'3-D detection' if task == 'det' else 'BEV map segmentation'} ({task}), {modality}, fraction "
                f"{fr:g}", "", f"Seeds (clean): {seeds}.", ""]
        metrics = HEADLINE[task]
        corr = [s for s in settings if s["kind"] != "spoof"]
        head = ["setting"] + [f"{i} {h}" for i in inits for m in metrics for h in (m, f"{m} drop")]
        body = []
        for s in corr:
            line = [_setting_label(s)]
            for i in inits:
                r = cell.get((i, s["setting"]))
                if r is None or r.get("na"):
                    line += [f"n/a: {r['na']}" if r else "-"] + [""] * (2 * len(metrics) - 1)
                    continue
                n = f" [n={r['seeds']}]" if r["seeds"] != cell.get((i, CLEAN), {}).get("seeds") else ""
                for m in metrics:
                    line += [_pm(r, m) + n, _drop(r, m) if s["kind"] != "clean" else ""]
            body.append(line)
        out += [md_table(head, body), ""]
        spoof = [s for s in settings if s["kind"] == "spoof"]
        if spoof:
            head = ["spoofed car at"] + [f"{i} {h}" for i in inits for h in ("FP rate", "NDS", "NDS drop")]
            body = []
            for s in spoof:
                line = [f"{s['spoof_range']:g} m"]
                for i in inits:
                    r = cell.get((i, s["setting"]))
                    if r is None or r.get("na"):
                        line += [f"n/a: {r['na']}" if r else "-", "", ""]
                        continue
                    line += [_pm(r, "spoof_fp_rate"), _pm(r, "NDS"), _drop(r, "NDS")]
                body.append(line)
            out += ["LiDAR spoofing: FP rate = share of the keyframes (without a real object at the fake car) with a "
                    "detection there; NDS drop = clean NDS - NDS under the attack.", "", md_table(head, body), ""]
    return "\n".join(out)


def write_table(root: str | Path, spec: RobustnessSpec, data: dict | None = None, cells: list[dict] | None = None,
                fraction: float | None = None, not_applicable_pairs=None) -> dict:
    """Write ``table.md``, ``table.csv`` and ``table.json`` into ``DIR/robustness/`` from the records of the cells
    and settings of ``spec``; returns {"out", "files", "rows", "missing"} (``missing``: ``cell tag`` of the
    applicable evaluations without a current record)."""
    from train.checkpoint import atomic_write_text

    root = Path(root)
    if cells is None:
        data = collect(root) if data is None else data
        cells, fraction, _ = select_cells(data, spec)
    settings = spec.settings()
    records = load_records(root, cells, settings, spec.select)
    rows = aggregate(cells, settings, records)
    missing = [f"{c['cell']['unit']['id']} {tag(s)}" for c in cells for s in settings
               if not_applicable(c["cell"]["unit"]["kind"], c["cell"]["unit"]["modality"], s) is None
               and (c["cell"]["unit"]["id"], tag(s)) not in records]
    out = root / "robustness"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"root": str(root), "select": spec.select, "fraction": fraction, "corrupt_seed": spec.corrupt_seed,
           "spec": dataclasses.asdict(spec), "rows": rows, "missing": missing,
           "not_applicable": [list(p) for p in (not_applicable_pairs or [])],
           "records": {f"{cid} {t}": f"robustness/{cid}/{t}.json" for cid, t in records}}
    files = []
    for name, text in (("table.md", markdown(root, rows, spec, fraction, missing)), ("table.csv", to_csv(rows)),
                       ("table.json", json.dumps(json_safe(doc), indent=1))):
        atomic_write_text(out / name, text)
        files.append(out / name)
    return {"out": out, "files": files, "rows": rows, "missing": missing}


__all__ = ["CLEAN", "DEFAULT_CORRUPTIONS", "DEFAULT_SEVERITIES", "DEFAULT_SPOOF_RANGES", "RobustnessSpec",
           "aggregate", "evaluate_cell", "load_records", "not_applicable", "record_path", "run_robustness",
           "select_cells", "write_table"]
