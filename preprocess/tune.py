"""Grid search of the per-sweep pipeline's configuration against annotated objects (``calico preprocess tune``).

:func:`tune` runs :func:`preprocess.sweep.process_sweep` for every setting of a grid over a sample of a nuScenes
dataroot's keyframes and scores each setting's regions against the annotated boxes with
:mod:`shared.region_quality` (its :class:`~shared.region_quality.RecoveryRule`; every rate a ratio of sums over
the sample). The pieces, each a pure function:

* :func:`parse_grid`: ``--grid section.field=v1,v2,...`` items -> :class:`GridAxis` (values split at the commas
  outside brackets, so ``--grid cluster.eps_range_scale=[0.5,1],[1,1]`` has two values), and
  :func:`expand_grid`: their Cartesian product over a base :class:`~preprocess.sweep.SweepConfig` (the defaults
  with the ``--set`` overrides), every value and every combination validated through
  :meth:`SweepConfig.from_overrides` (the machinery of ``calico preprocess run --set``) before anything runs: a
  bad field or value is a :class:`~shared.errors.ConfigError` naming it;
* :func:`sample_keyframes`: ``n`` of the keyframes drawn once with ``numpy.random.default_rng(seed)``, kept in
  time order and shared by every setting; :func:`load_keyframes` reads each one's points and boxes (through the
  devkit) once;
* :func:`run_pipeline` / :func:`score_chunk`: the task (one setting, a chunk of keyframes): the pipeline's
  regions, ground and drop reasons of each sweep, its time (``process_sweep`` alone, milliseconds, after a
  warm-up in the same task) and the object and region tables of :func:`~shared.region_quality.evaluate_sweep`;
* :func:`summarize_setting` -> :class:`TuneRow` (recall, point-weighted purity, over/under-segmentation, regions
  per sweep, ground share of object points, median ms per sweep, recall by class and distance band) and
  :func:`pareto_front` over (recall up, purity up, ms down);
* :func:`set_flags` / :func:`run_command`: the exact ``--set`` flags (base overrides, then the grid's) that give
  a row's configuration to ``calico preprocess run``; :func:`best_rows` picks by ``recall`` or ``pareto``;
* :func:`markdown_table`, :func:`csv_text`, :func:`write_outputs` (``tune.csv``, ``tune.json``, ``tune.md``,
  each replaced atomically).

The fan-out reuses the preprocessing stage's cluster setup (:func:`preprocess.run.local_cluster`,
:func:`preprocess.run.warm_workers`, :mod:`preprocess.dask_setup`): a LocalCluster of ``workers`` processes, or
the scheduler at ``scheduler``; the loaded keyframes are scattered once, in chunks of at most :data:`CHUNK`, and
every (setting, chunk) is a task, submitted chunk by chunk (every setting's task of a chunk in turn, so that each
setting's sweeps are spread over the run and a busy spell of the host slows every setting alike). ``workers=0``
runs the same tasks in the same order in this process (tests, debugging).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import shlex
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from preprocess.sweep import SweepConfig, parse_assignments, process_sweep, warm_up
from shared.errors import ConfigError, InputError
from shared.region_quality import (DISTANCE_BANDS, Boxes, ObjectTable, RecoveryRule, RegionTable,
                                   boxes_from_nuscenes, evaluate_sweep, summarize)

#: What :func:`best_rows` can pick: the highest recall, or every setting of the Pareto front.
BEST = ("recall", "pareto")
#: Keyframes per task at most (fewer when needed to give each worker 4 tasks): small tasks spread each
#: setting's sweeps over the run.
CHUNK = 8
#: Files :func:`write_outputs` writes into the output folder.
OUTPUT_FILES = ("tune.csv", "tune.json", "tune.md")


# ----------------------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid`` item: the ``section.field`` key and its values as given (text, parsed by the configs)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its index, its (key, value) per axis as given, and the resolved configuration."""

    index: int
    grid: tuple[tuple[str, str], ...]
    cfg: SweepConfig


def split_values(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes, each part stripped: ``"0.5,[1, 2]"`` ->
    ``["0.5", "[1, 2]"]``."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth <= 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_grid(items: Iterable[str]) -> tuple[GridAxis, ...]:
    """The ``--grid section.field=v1,v2,...`` items as axes. :class:`ConfigError` naming ``--grid`` for no item,
    an item without ``=`` or without a value, an empty value and a key given twice (the fields themselves are
    checked by :func:`expand_grid`)."""
    axes: list[GridAxis] = []
    for item in items:
        key, eq, text = str(item).partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError("--grid", item, "expected section.field=v1,v2,..., e.g. cluster.eps=0.5,0.75,1.0")
        values = split_values(text)
        if not text.strip() or any(v == "" for v in values):
            raise ConfigError("--grid", item, f"{key} needs a comma-separated list of values, none empty")
        if key in {a.key for a in axes}:
            raise ConfigError("--grid", item, f"{key} is given twice; put all its values in one --grid")
        axes.append(GridAxis(key, tuple(values)))
    if not axes:
        raise ConfigError("--grid", [], "no grid given; pass at least one --grid section.field=v1,v2,...")
    return tuple(axes)


def expand_grid(axes: Sequence[GridAxis], base: SweepConfig = SweepConfig()) -> tuple[Setting, ...]:
    """The Cartesian product of ``axes`` (the first axis varies slowest) applied to ``base``. Every value is
    first checked alone, then every combination (a pair of fields a config checks together): a
    :class:`ConfigError` from :meth:`SweepConfig.from_overrides` names the key and the value."""
    if not axes:
        raise ConfigError("--grid", [], "no grid given; pass at least one --grid section.field=v1,v2,...")
    for axis in axes:
        for v in axis.values:
            SweepConfig.from_overrides({axis.key: v}, base=base)
    out = []
    for i, combo in enumerate(itertools.product(*[[(a.key, v) for v in a.values] for a in axes])):
        out.append(Setting(i, tuple(combo), SweepConfig.from_overrides(dict(combo), base=base)))
    return tuple(out)


def set_flags(base_overrides: Sequence[str], grid: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The ``section.field=value`` assignments giving a setting's configuration from the defaults: the base
    ``--set`` overrides (those of a grid key left out: the grid's value wins), then the grid's values."""
    keys = {k for k, _ in grid}
    base = [f"{k}={v}" for k, v in parse_assignments(base_overrides).items() if k not in keys]
    return tuple(base + [f"{k}={v}" for k, v in grid])


def set_options(flags: Sequence[str]) -> str:
    """``flags`` as shell-quoted ``--set`` options: ``--set cluster.eps=0.5 --set 'a.b=[1, 2]'``."""
    return " ".join(f"--set {shlex.quote(f)}" for f in flags)


def run_command(flags: Sequence[str], dataroot: str | Path, version: str, store: str = "STORE") -> str:
    """The ``calico preprocess run`` command line (shell-quoted) that preprocesses with ``flags``."""
    words = ["calico", "preprocess", "run", "--dataroot", str(dataroot), "--version", version, "--store", store]
    return " ".join([*(shlex.quote(w) for w in words), set_options(flags)]).rstrip()


# ----------------------------------------------------------------------------------------------------------
# Keyframes
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Keyframe:
    """A loaded keyframe: LiDAR sample_data token, scene name, points (N, C) float32 and annotated boxes."""

    token: str
    scene: str
    points: np.ndarray
    boxes: Boxes


def keyframe_tokens(nusc: Any, scenes: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(LiDAR sample_data token, scene name) of every keyframe of ``scenes`` (default all; sorted by name, in
    time order; an unknown name is an :class:`InputError`)."""
    from shared.nuscenes_io import iter_lidar_tokens, iter_scenes

    return [(tok, sc["name"]) for sc in iter_scenes(nusc, scenes) for tok in iter_lidar_tokens(nusc, sc)]


def sample_keyframes(items: Sequence[Any], n: int | None, seed: int = 0) -> list[Any]:
    """``n`` of ``items`` drawn without replacement by ``numpy.random.default_rng(seed)``, in their order; all of
    them when ``n`` is None or at least ``len(items)``. :class:`ConfigError` naming ``--sample`` when n < 1."""
    if n is None or n >= len(items):
        if n is not None and n < 1:
            raise ConfigError("--sample", n, "must be a number of keyframes >= 1")
        return list(items)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError("--sample", n, "must be a number of keyframes >= 1")
    idx = np.sort(np.random.default_rng(seed).choice(len(items), int(n), replace=False))
    return [items[i] for i in idx]


def load_keyframes(nusc: Any, items: Sequence[tuple[str, str]],
                   log: Callable[[str], object] | None = None) -> tuple[list[Keyframe], list[str]]:
    """Each keyframe's points and boxes (in the LiDAR frame, :func:`~shared.region_quality.boxes_from_nuscenes`),
    read once. Returns (keyframes, problems): an unreadable keyframe (:class:`InputError`: a missing or truncated
    point file) is left out, its error line in ``problems`` (and on ``log``)."""
    from shared.pointcloud import load_points

    out, problems = [], []
    for token, scene in items:
        try:
            rec = nusc.get("sample_data", token)
            points = load_points(Path(nusc.dataroot) / rec["filename"])
            out.append(Keyframe(token, scene, points, boxes_from_nuscenes(nusc, token)))
        except InputError as exc:
            problems.append(f"keyframe {token} of {scene} left out: {exc}")
            if log is not None:
                log(problems[-1])
    return out, problems


# ----------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PipelineOutput:
    """What the scoring needs of one :func:`process_sweep`: region (N,) int64 (-1 none), ground (N,) bool,
    reason (N,) int64 (0 = not in a dropped cluster, k = dropped by filter ``REASONS[k - 1]``), and ms (the call's
    wall time)."""

    region: np.ndarray
    ground: np.ndarray
    reason: np.ndarray
    ms: float


def run_pipeline(points: np.ndarray, cfg: SweepConfig = SweepConfig(), backend: str = "cpu") -> PipelineOutput:
    """:func:`process_sweep` on ``points`` (no cameras), timed, with each point's drop reason from
    ``PoolingResult.cluster_reason``."""
    t0 = time.perf_counter()
    res = process_sweep(points, None, cfg, backend=backend)
    ms = (time.perf_counter() - t0) * 1e3
    reason = np.zeros(len(points), dtype=np.int64)
    if res.pooling is not None:
        lab = res.labels
        reason[lab >= 0] = res.pooling.cluster_reason[lab[lab >= 0]]
    return PipelineOutput(res.region.astype(np.int64), res.ground, reason, ms)


@dataclass(frozen=True, eq=False)
class SweepScore:
    """One (setting, keyframe): the object and region tables of :func:`evaluate_sweep` and the pipeline's ms."""

    token: str
    objects: ObjectTable
    regions: RegionTable
    ms: float


def score_keyframe(kf: Keyframe, cfg: SweepConfig, rule: RecoveryRule = RecoveryRule(),
                   backend: str = "cpu") -> SweepScore:
    """Run the pipeline on one keyframe and score its regions against its boxes."""
    out = run_pipeline(kf.points, cfg, backend)
    q = evaluate_sweep(kf.points, out.region, kf.boxes, ground=out.ground, dropped_reason=out.reason, rule=rule)
    return SweepScore(kf.token, q.objects, q.regions, out.ms)


def score_chunk(cfg: SweepConfig, chunk: Sequence[Keyframe], rule: RecoveryRule = RecoveryRule(),
                backend: str = "cpu") -> list[SweepScore]:
    """The task: :func:`score_keyframe` of each keyframe of ``chunk`` with ``cfg``, after one warm-up sweep with
    the same configuration (the kernels of this configuration loaded: the times are steady-state)."""
    warm_up(cfg, backend)
    return [score_keyframe(kf, cfg, rule, backend) for kf in chunk]


# ----------------------------------------------------------------------------------------------------------
# Rows, Pareto front, choice
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneRow:
    """The scores of one setting over the sample (see the module docstring; NaN where a rate has no
    denominator). recall_by_class / recall_by_distance: name -> (objects, recall)."""

    setting: int
    grid: tuple[tuple[str, str], ...]
    flags: tuple[str, ...]
    sweeps: int
    objects: int
    recovered: int
    recall: float
    purity: float
    over_segmentation: float
    under_segmentation: float
    regions_per_sweep: float
    ground_share: float
    ms_per_sweep: float
    recall_by_class: dict[str, tuple[int, float]] = field(default_factory=dict)
    recall_by_distance: dict[str, tuple[int, float]] = field(default_factory=dict)
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid"] = dict(self.grid)
        d["flags"] = list(self.flags)
        return d


def summarize_setting(setting: Setting, scores: Sequence[SweepScore], flags: Sequence[str],
                      rule: RecoveryRule = RecoveryRule(), reason_names: Sequence[str] = ()) -> TuneRow:
    """One setting's :class:`TuneRow` from its sweeps' scores (:func:`~shared.region_quality.summarize`: ratios
    of sums over all the sweeps; ms: the median)."""
    if not scores:
        raise InputError(f"setting {setting.index} has no scored keyframe")
    s = summarize([x.objects for x in scores], [x.regions for x in scores], rule=rule, reason_names=reason_names)
    return TuneRow(setting=setting.index, grid=setting.grid, flags=tuple(flags), sweeps=len(scores),
                   objects=s.objects, recovered=s.recovered, recall=s.recall, purity=s.purity,
                   over_segmentation=s.over_segmentation, under_segmentation=s.under_segmentation,
                   regions_per_sweep=s.regions / len(scores), ground_share=s.ground_share,
                   ms_per_sweep=float(np.median([x.ms for x in scores])),
                   recall_by_class={k: (n, r) for k, (n, _, r) in s.by_class.items()},
                   recall_by_distance={k: (n, r) for k, (n, _, r) in s.by_distance.items()})


def _key(v: float, sign: float) -> float:
    return -math.inf if v != v else sign * v  # NaN is worst


def pareto_front(points: Sequence[tuple[float, float, float]]) -> list[bool]:
    """For each (recall, purity, ms): True when no other point is at least as good in all three (recall and
    purity higher, ms lower) and better in one; NaN counts as worst. Equal points are all on the front."""
    keys = [(_key(r, 1), _key(p, 1), _key(m, -1)) for r, p, m in points]
    return [not any(all(o >= s for o, s in zip(other, mine)) and other != mine for other in keys)
            for mine in keys]


def mark_pareto(rows: Sequence[TuneRow]) -> tuple[TuneRow, ...]:
    """``rows`` with :attr:`TuneRow.pareto` set by :func:`pareto_front`."""
    front = pareto_front([(r.recall, r.purity, r.ms_per_sweep) for r in rows])
    return tuple(dataclasses.replace(r, pareto=f) for r, f in zip(rows, front))


def best_rows(rows: Sequence[TuneRow], by: str) -> list[TuneRow]:
    """``recall``: the one row of highest recall (ties: higher purity, then fewer ms, then the lower index);
    ``pareto``: the rows of the Pareto front, highest recall first. :class:`ConfigError` naming ``--best``."""
    if by not in BEST:
        raise ConfigError("--best", by, f"expected one of {', '.join(BEST)}")
    order = sorted(rows, key=lambda r: (-_key(r.recall, 1), -_key(r.purity, 1), -_key(r.ms_per_sweep, -1),
                                        r.setting))
    return order[:1] if by == "recall" else [r for r in order if r.pareto]


# ----------------------------------------------------------------------------------------------------------
# Tables and files
# ----------------------------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def markdown_table(rows: Sequence[TuneRow]) -> str:
    """The rows as a markdown table: the grid's values, the scores, a ``*`` on the Pareto front and the
    ``--set`` flags; then recall by class and by distance band, one row per setting."""
    keys = [k for k, _ in rows[0].grid] if rows else []
    head = ["#", *keys, "recall", "purity", "over-seg", "under-seg", "regions / sweep", "ground share",
            "ms / sweep", "Pareto", "`calico preprocess run` flags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * (1 + len(keys) + 7) + ":-:|---|"]
    for r in rows:
        flags = set_options(r.flags)
        cells = [str(r.setting), *(v for _, v in r.grid), _fmt(r.recall), _fmt(r.purity),
                 _fmt(r.over_segmentation), _fmt(r.under_segmentation), _fmt(r.regions_per_sweep, 1),
                 _fmt(r.ground_share), _fmt(r.ms_per_sweep, 2), "*" if r.pareto else "", f"`{flags}`"]
        lines.append("| " + " | ".join(cells) + " |")
    classes = list(dict.fromkeys(c for r in rows for c in r.recall_by_class))
    bands = [b for b, _, _ in DISTANCE_BANDS]
    counts = {**{c: max(r.recall_by_class.get(c, (0, 0))[0] for r in rows) for c in classes},
              **{b: max(r.recall_by_distance.get(b, (0, 0))[0] for r in rows) for b in bands}}
    lines += ["", "Recall by class and distance band (objects in brackets):", "",
              "| # | " + " | ".join(f"{c} ({counts[c]})" for c in classes) + " | "
              + " | ".join(f"{b} m ({counts[b]})" for b in bands) + " |",
              "|---:|" + "---:|" * (len(classes) + len(bands))]
    for r in rows:
        cells = [_fmt(r.recall_by_class.get(c, (0, math.nan))[1], 2) for c in classes]
        cells += [_fmt(r.recall_by_distance.get(b, (0, math.nan))[1], 2) for b in bands]
        lines.append(f"| {r.setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[TuneRow]) -> str:
    """The rows as CSV: one column per grid key, the scores, ``pareto`` (0/1), ``flags`` (the ``--set`` options,
    as for the shell) and ``recall_<class>`` / ``recall_<band>m`` columns."""
    keys = [k for k, _ in rows[0].grid] if rows else []
    classes = list(dict.fromkeys(c for r in rows for c in r.recall_by_class))
    bands = [b for b, _, _ in DISTANCE_BANDS]
    scores = ["sweeps", "objects", "recovered", "recall", "purity", "over_segmentation", "under_segmentation",
              "regions_per_sweep", "ground_share", "ms_per_sweep"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["setting", *keys, *scores, "pareto", "flags", *(f"recall_{c}" for c in classes),
                *(f"recall_{b}m" for b in bands)])
    for r in rows:
        w.writerow([r.setting, *(v for _, v in r.grid), *(getattr(r, s) for s in scores), int(r.pareto),
                    set_options(r.flags), *(r.recall_by_class.get(c, (0, math.nan))[1] for c in classes),
                    *(r.recall_by_distance.get(b, (0, math.nan))[1] for b in bands)])
    return buf.getvalue()


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` did: the rows (Pareto front marked), the resolved base configuration and its
    ``--set`` overrides, the grid, the sample (keyframe tokens, of how many, seed), the keyframes left out,
    the recovery rule, where it ran and how long it took."""

    rows: tuple[TuneRow, ...]
    base_config: dict[str, Any]
    base_overrides: tuple[str, ...]
    grid: tuple[GridAxis, ...]
    dataroot: str
    version: str
    scenes: tuple[str, ...] | None
    keyframes: tuple[str, ...]
    keyframes_total: int
    sample: int | None
    seed: int
    left_out: tuple[str, ...]
    rule: RecoveryRule
    workers: int
    wall_s: float
    tasks_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"dataroot": self.dataroot, "version": self.version, "scenes": self.scenes,
                "sample": {"requested": self.sample, "seed": self.seed, "drawn": len(self.keyframes),
                           "of": self.keyframes_total, "tokens": list(self.keyframes)},
                "left_out": list(self.left_out), "rule": dataclasses.asdict(self.rule),
                "grid": {a.key: list(a.values) for a in self.grid}, "base_overrides": list(self.base_overrides),
                "base_config": self.base_config, "workers": self.workers, "wall_s": self.wall_s,
                "tasks_s": self.tasks_s, "rows": [r.to_dict() for r in self.rows]}

    def sample_line(self) -> str:
        how = (f"{len(self.keyframes)} of {self.keyframes_total} keyframes drawn with seed {self.seed}"
               if self.sample is not None and self.sample < self.keyframes_total
               else f"all {self.keyframes_total} keyframes")
        left = f", {len(self.left_out)} unreadable left out" if self.left_out else ""
        objects = self.rows[0].objects if self.rows else 0
        return (f"{how}{left}; {objects} objects with >= {self.rule.min_points} points; {len(self.rows)} "
                f"setting(s), {self.workers or 'no'} Dask worker(s), {self.wall_s:.1f} s")


def markdown_report(result: TuneResult) -> str:
    """``tune.md``: what was run, the tables and the resolved base configuration."""
    base = json.dumps(result.base_config, indent=1)
    over = set_options(result.base_overrides) or "(none: the defaults)"
    return (f"# `calico preprocess tune` on {result.dataroot} ({result.version})\n\n{result.sample_line()}.\n"
            f"Base overrides: {over}.\n\n{markdown_table(result.rows)}\n"
            f"Resolved base configuration (the grid's fields are replaced per row):\n\n```json\n{base}\n```\n")


def write_outputs(result: TuneResult, out: str | Path) -> list[Path]:
    """Write :data:`OUTPUT_FILES` into ``out`` (created), each replaced atomically; returns their paths."""
    from data_catalog.layout import replace_file

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        texts = (csv_text(result.rows), json.dumps(result.to_dict(), indent=1, default=str) + "\n",
                 markdown_report(result))
        paths = [out / name for name in OUTPUT_FILES]
        for path, text in zip(paths, texts):
            replace_file(path, text.encode())
        return paths
    except OSError as exc:
        raise InputError(f"cannot write the tuning results ({exc.strerror or exc})", out) from None


# ----------------------------------------------------------------------------------------------------------
# The fan-out
# ----------------------------------------------------------------------------------------------------------


def chunks_of(items: Sequence[Any], n_chunks: int) -> list[list[Any]]:
    """``items`` in at most ``n_chunks`` consecutive chunks of near-equal size (none empty)."""
    n_chunks = max(1, min(int(n_chunks), len(items)))
    return [[items[i] for i in c] for c in np.array_split(np.arange(len(items)), n_chunks) if len(c)]


def _inline(settings, chunks, rule, backend, progress, log) -> dict[int, list[SweepScore]]:
    from tqdm import tqdm

    from preprocess.run import warm_worker

    warm_worker(settings[0].cfg.to_dict(), backend, notify=log)
    out: dict[int, list[SweepScore]] = {s.index: [] for s in settings}
    with tqdm(total=len(settings) * len(chunks), unit="task", disable=not progress, desc="tune") as bar:
        for chunk in chunks:
            for s in settings:
                out[s.index] += score_chunk(s.cfg, chunk, rule, backend)
                bar.update(1)
    return out


def _dask(settings, chunks, rule, backend, client, progress, log) -> dict[int, list[SweepScore]]:
    from distributed import as_completed
    from tqdm import tqdm

    from preprocess.dask_setup import forward_notices
    from preprocess.run import warm_workers

    tag = uuid.uuid4().hex[:8]
    try:
        with forward_notices(client, log):
            warm_workers(client, tag, settings[0].cfg.to_dict(), backend, None, 1)
    except Exception as exc:  # an optimisation only: each task warms up its own configuration anyway
        log(f"worker warm-up failed ({type(exc).__name__}: {exc}); going on")
    data = client.scatter(chunks)  # each chunk's points and boxes go to the workers once
    # chunk by chunk, every setting's task of a chunk in turn: each setting's sweeps are spread over the whole
    # run, so that a busy spell of the host slows all settings alike (the ms column compares them)
    futures = {client.submit(score_chunk, s.cfg, d, rule, backend, pure=False,
                             key=f"tune-{tag}-{s.index}-{j}"): (s.index, j)
               for j, d in enumerate(data) for s in settings}
    parts: dict[tuple[int, int], list[SweepScore]] = {}
    with tqdm(total=len(futures), unit="task", disable=not progress, desc="tune") as bar:
        for fut in as_completed(futures):
            parts[futures[fut]] = fut.result()
            bar.update(1)
    return {s.index: [x for j in range(len(chunks)) for x in parts[(s.index, j)]] for s in settings}


@contextmanager
def _client(client, workers: int, backend: str) -> Iterator[Any]:
    """``client`` (of a ``--scheduler``: the caller closes it), or one of a local cluster of ``workers``
    (:func:`preprocess.run.local_cluster`) started here and closed quietly at the end."""
    if client is not None:
        yield client
        return
    from distributed import Client

    from preprocess.dask_setup import quiet_logs
    from preprocess.run import local_cluster

    cluster = local_cluster(workers, backend)
    local = Client(cluster)
    try:
        yield local
    finally:
        with quiet_logs(local):
            local.close()
            cluster.close()


def tune(dataroot: str | Path, version: str, grid: Sequence[str], overrides: Sequence[str] = (),
         scenes: Sequence[str] | None = None, sample: int | None = None, seed: int = 0, workers: int = 2,
         scheduler: str | None = None, connect_timeout: float | None = None, backend: str = "cpu",
         rule: RecoveryRule = RecoveryRule(), progress: bool = True,
         log: Callable[[str], object] | None = None) -> TuneResult:
    """Score every setting of ``grid`` (``section.field=v1,v2,...`` items) over the base configuration (the
    defaults with ``overrides``, ``section.field=value`` items) on ``sample`` keyframes (default all) of
    ``scenes`` (default all); see the module docstring. Everything is checked before anything runs: the
    configurations (:class:`ConfigError`), the scheduler's address, the dataroot and the scene names
    (:class:`InputError`); a sample without any annotated box is an :class:`InputError`."""
    from preprocess.dask_setup import CONNECT_TIMEOUT_S, connect_scheduler
    from preprocess.pooling import REASONS
    from shared.backend import resolve_backend
    from shared.nuscenes_io import open_nuscenes
    from shared.paths import absolute

    t0 = time.perf_counter()
    log = log or (lambda line: None)
    timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
    base = SweepConfig.from_overrides(list(overrides))
    axes = parse_grid(grid)
    settings = expand_grid(axes, base)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError("--workers", workers, "must be an integer >= 0 (0: in this process, no Dask)")
    backend = resolve_backend(backend)
    dataroot = absolute(dataroot)
    client = connect_scheduler(scheduler, timeout) if scheduler else None  # an unreachable one fails first
    try:
        nusc = open_nuscenes(dataroot, version)
        items = keyframe_tokens(nusc, scenes)
        if not items:
            raise InputError(f"no keyframe in {version}" + (f" scenes {', '.join(scenes)}" if scenes else ""),
                             dataroot)
        drawn = sample_keyframes(items, sample, seed)
        keyframes, left_out = load_keyframes(nusc, drawn, log)
        if not keyframes:
            raise InputError(f"none of the {len(drawn)} sampled keyframes could be read", dataroot)
        if not any(len(kf.boxes) for kf in keyframes):
            raise InputError(f"no annotated box in the {len(keyframes)} sampled keyframes: tuning scores the "
                             "regions against annotations (sample_annotation.json)", dataroot)
        del nusc
        log(f"{len(settings)} setting(s) x {len(keyframes)} keyframe(s)")
        t_tasks = time.perf_counter()
        if client is None and workers == 0:
            nw = 0
            scores = _inline(settings, chunks_of(keyframes, -(-len(keyframes) // CHUNK)), rule, backend,
                             progress, log)
        else:
            with _client(client, workers, backend) as c:
                nw = max(1, len(c.scheduler_info().get("workers", {})) or workers)
                chunks = chunks_of(keyframes, max(-(-4 * nw // len(settings)), -(-len(keyframes) // CHUNK)))
                scores = _dask(settings, chunks, rule, backend, c, progress, log)
    finally:
        if client is not None:
            client.close()
    tasks_s = time.perf_counter() - t_tasks
    rows = mark_pareto([summarize_setting(s, scores[s.index], set_flags(overrides, s.grid), rule, REASONS)
                        for s in settings])
    return TuneResult(rows=rows, base_config=base.to_dict(), base_overrides=tuple(overrides), grid=axes,
                      dataroot=str(dataroot), version=version, scenes=None if scenes is None else tuple(scenes),
                      keyframes=tuple(kf.token for kf in keyframes), keyframes_total=len(items), sample=sample,
                      seed=seed, left_out=tuple(left_out), rule=rule, workers=nw,
                      wall_s=time.perf_counter() - t0, tasks_s=tasks_s)


__all__ = ["GridAxis", "Setting", "Keyframe", "PipelineOutput", "SweepScore", "TuneRow", "TuneResult", "BEST",
           "OUTPUT_FILES", "split_values", "parse_grid", "expand_grid", "set_flags", "set_options", "run_command",
           "keyframe_tokens", "sample_keyframes", "load_keyframes", "run_pipeline", "score_keyframe",
           "score_chunk", "summarize_setting", "pareto_front", "mark_pareto", "best_rows", "markdown_table",
           "csv_text", "markdown_report", "write_outputs", "chunks_of", "tune"]
