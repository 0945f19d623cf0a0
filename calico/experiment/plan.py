"""The grid of the label-efficiency experiment: which pre-training stages and fine-tuning cells it holds, the stable
id and the resolved ``TrainConfig`` of each, and the checks of a rerun against what an earlier run recorded.

Units (:class:`Unit`), each run into its own folder under the experiment folder ``DIR``:

* ``pretrain/prc-a<alpha>-s<seed>``: PRC pre-training (``pretrain_prc``) of the LiDAR backbone, once per seed and
  PRC alpha (the base alpha of the preset, after ``--set``, and each of ``--alphas``);
* ``pretrain/rad-<weighting>-a<alpha>-s<seed>``: RAD from the base-alpha PRC of that seed into the camera branch,
  ``weighting`` ``region`` (CALICO) or ``uniform`` (the plain-distillation baseline);
* ``cells/<task>-<modality>-<init>[-a<alpha>]-f<fraction>-s<seed>``: one fine-tuning run (``det`` or ``seg``) per
  (init, fraction, seed, task, modality) and, for the alpha ablation, per alpha of ``--alphas`` with the ``prc``
  init at ``--alpha-fractions``.

Inits: ``scratch`` (random weights), ``prc`` (the LiDAR backbone of the PRC stage), ``prc+uniform`` and ``calico``
(the RAD stage of that weighting: its frozen LiDAR teacher, which is the PRC backbone, plus its camera branch).
RAD never updates the LiDAR backbone (its teacher is frozen), so a LiDAR-only fine-tuning from a RAD run starts
from exactly the PRC weights: the RAD inits differ from ``prc`` only in a camera or fusion fine-tuning. Hence the
modalities (:meth:`ExperimentSpec.modalities`): ``auto`` is ``lidar`` for a grid without RAD inits, else
``lidar`` and ``fusion``, in which case the RAD inits are fine-tuned in ``fusion`` only (their LiDAR-only cells
would repeat ``prc``'s) and ``scratch`` / ``prc`` in both, so that every init has a like-for-like baseline.
With ``--modality lidar`` alone the RAD inits run in LiDAR-only cells too (a check of the wiring: their numbers
should equal ``prc``'s). ``camera`` cells leave out ``prc`` (a camera model holds no LiDAR backbone).

The ids depend only on the unit's identity (kind, task, modality, init, alpha, fraction, seed), never on the
order of the options, so a rerun finds the folders of an earlier one. What a rerun may change is decided by
:func:`config_changes` on the recorded ``cell.json``: the fields of :data:`train.config.NON_RESULT_FIELDS` and
:data:`FREE_FIELDS` may change, anything else refuses the run (:class:`ExperimentChanged`) unless
``allow_config_change``.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, InputError

#: The initialisations of the fine-tuning cells, in the table's order.
INITS: tuple[str, ...] = ("scratch", "prc", "prc+uniform", "calico")
#: The inits that start from a RAD stage, and its weighting.
RAD_INITS: dict[str, str] = {"prc+uniform": "uniform", "calico": "region"}
#: Fine-tuning modalities (``model.finetune.modality``); ``auto`` resolves to some of them.
MODALITIES: tuple[str, ...] = ("lidar", "camera", "fusion")
FINETUNE_TASKS: tuple[str, ...] = ("det", "seg")
#: ``--set STAGE:key=value`` prefixes: the PRC / RAD stages, the det / seg cells, ``ft`` both kinds of cells.
STAGE_PREFIXES: tuple[str, ...] = ("prc", "rad", "det", "seg", "ft")
PRESET_NAMES: tuple[str, ...] = ("small", "small-wide", "nuscenes")
#: Config fields a rerun may change besides :data:`train.config.NON_RESULT_FIELDS`: the init checkpoint's path
#: (its identity, the SHA-256, is checked instead, so the experiment folder may move).
FREE_FIELDS: tuple[str, ...] = ("model.finetune.init",)


def fmt(x: float) -> str:
    """A number as it appears in ids: ``0.05``, ``0.1``, ``1``."""
    return format(float(x), "g")


def _tuple(name: str, values, kind, check, allowed: str) -> tuple:
    vals = tuple(values)
    if not vals:
        raise ConfigError(name, values, "must name at least one value")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, kind) or not check(v):
            raise ConfigError(name, v, f"each value must be {allowed}")
    if len(set(vals)) != len(vals):
        raise ConfigError(name, ",".join(str(v) for v in vals), "repeats a value")
    return vals


def _is_fraction(v) -> bool:
    return math.isfinite(v) and 0 < v <= 1


def _steps(name: str, v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ConfigError(name, v, "must be an integer >= 1")


@dataclass(frozen=True)
class ExperimentSpec:
    """The options of ``calico experiment label-efficiency`` that shape the grid (validated; ConfigError naming the
    option). Steps of None: the preset's ``optim.max_steps``. ``modality``: ``("auto",)`` or some of
    :data:`MODALITIES`. ``overrides``: ``--set`` items, ``key=value`` for every stage or ``STAGE:key=value``
    (:data:`STAGE_PREFIXES`)."""

    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
    fraction_by: str = "scenes"
    seeds: tuple[int, ...] = (0, 1, 2)
    inits: tuple[str, ...] = INITS
    tasks: tuple[str, ...] = FINETUNE_TASKS
    preset: str = "small"
    modality: tuple[str, ...] = ("auto",)
    pretrain_steps: int | None = None
    rad_steps: int | None = None
    steps: int | None = None
    alphas: tuple[float, ...] = ()
    alpha_fractions: tuple[float, ...] = (0.05, 0.5)
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "fractions", tuple(float(v) if isinstance(v, int) and not isinstance(v, bool)
                                                    else v for v in self.fractions))
        _tuple("--fractions", self.fractions, float, _is_fraction, "a fraction in (0, 1]")
        if self.fraction_by not in ("scenes", "samples"):
            raise ConfigError("--fraction-by", self.fraction_by, "must be scenes or samples")
        _tuple("--seeds", self.seeds, int, lambda v: v >= 0, "an integer >= 0")
        _tuple("--inits", self.inits, str, lambda v: v in INITS, f"one of {', '.join(INITS)}")
        _tuple("--task", self.tasks, str, lambda v: v in FINETUNE_TASKS, "det or seg")
        if self.preset not in PRESET_NAMES:
            raise ConfigError("--preset", self.preset, f"must be one of {', '.join(PRESET_NAMES)}")
        if tuple(self.modality) != ("auto",):
            _tuple("--modality", self.modality, str, lambda v: v in MODALITIES,
                   f"auto alone, or some of {', '.join(MODALITIES)}")
        for name, v in (("--pretrain-steps", self.pretrain_steps), ("--rad-steps", self.rad_steps),
                        ("--steps", self.steps)):
            _steps(name, v)
        if self.alphas:
            _tuple("--alphas", self.alphas, (int, float), lambda v: math.isfinite(v) and 0 <= v <= 1,
                   "a number in [0, 1]")
            object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
            _tuple("--alpha-fractions", self.alpha_fractions, (int, float), _is_fraction, "a fraction in (0, 1]")
        object.__setattr__(self, "alpha_fractions", tuple(float(a) for a in self.alpha_fractions))
        split_overrides(self.overrides)  # malformed items fail here

    def modalities(self) -> tuple[str, ...]:
        """The fine-tuning modalities of the grid (``auto``: see the module docstring)."""
        if tuple(self.modality) != ("auto",):
            return tuple(self.modality)
        return ("lidar", "fusion") if any(i in RAD_INITS for i in self.inits) else ("lidar",)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def split_overrides(items) -> dict[str, list[str]]:
    """``--set`` items by stage: ``{"prc": [...], "rad": [...], "det": [...], "seg": [...]}`` (an unprefixed item
    goes to every stage, ``ft:`` to det and seg), in the order given."""
    out: dict[str, list[str]] = {k: [] for k in ("prc", "rad", "det", "seg")}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", item, "expected key=value or STAGE:key=value "
                              f"(STAGE one of {', '.join(STAGE_PREFIXES)})")
        head = item.split("=", 1)[0]
        if ":" in head:
            stage, rest = item.split(":", 1)
            if stage not in STAGE_PREFIXES:
                raise ConfigError("--set", item, f"unknown stage {stage!r}; one of {', '.join(STAGE_PREFIXES)}")
            for k in (("det", "seg") if stage == "ft" else (stage,)):
                out[k].append(rest)
        else:
            for k in out:
                out[k].append(item)
    return out


@dataclass(frozen=True)
class Unit:
    """One run of the experiment: a pre-training stage (``kind`` ``prc`` / ``rad``) or a fine-tuning cell (``det``
    / ``seg``). ``alpha``: the PRC alpha of the stage, or of the PRC a cell's init descends from (None for
    scratch); ``weighting``: a RAD stage's; ``deps``: ids of the units whose checkpoints it starts from;
    ``config``: its resolved :class:`train.config.TrainConfig` (not part of the identity)."""

    kind: str
    seed: int
    alpha: float | None = None
    weighting: str | None = None
    init: str | None = None
    modality: str | None = None
    fraction: float | None = None
    deps: tuple[str, ...] = ()
    config: Any = field(default=None, compare=False, repr=False)

    @property
    def is_stage(self) -> bool:
        return self.kind in ("prc", "rad")

    @property
    def id(self) -> str:
        if self.kind == "prc":
            return f"prc-a{fmt(self.alpha)}-s{self.seed}"
        if self.kind == "rad":
            return f"rad-{self.weighting}-a{fmt(self.alpha)}-s{self.seed}"
        alpha = "" if self.alpha is None else f"-a{fmt(self.alpha)}"
        return f"{self.kind}-{self.modality}-{self.init}{alpha}-f{fmt(self.fraction)}-s{self.seed}"

    @property
    def folder(self) -> str:
        """The unit's folder, relative to the experiment folder."""
        return f"{'pretrain' if self.is_stage else 'cells'}/{self.id}"

    @property
    def steps(self) -> int:
        return int(self.config.optim.max_steps)

    def identity(self) -> dict:
        """The fields that name the unit (recorded in ``cell.json``; the report groups by them)."""
        return {"id": self.id, "kind": self.kind, "seed": self.seed, "alpha": self.alpha,
                "weighting": self.weighting, "init": self.init, "modality": self.modality,
                "fraction": self.fraction, "deps": list(self.deps)}


@dataclass(frozen=True)
class Plan:
    """The units of an experiment in execution order (dependencies first; seed by seed, so that a one-seed table
    is complete early), over ``store`` / ``version``."""

    spec: ExperimentSpec
    root: str
    store: str
    version: str
    units: tuple[Unit, ...]
    notes: tuple[str, ...] = ()

    def unit(self, uid: str) -> Unit:
        for u in self.units:
            if u.id == uid:
                return u
        raise KeyError(uid)

    def final_checkpoint(self, uid: str) -> Path:
        """The checkpoint a unit ends with (its last step's, always kept): what dependants start from."""
        from train.checkpoint import checkpoint_path

        u = self.unit(uid)
        return checkpoint_path(Path(self.root) / u.folder / "run", u.steps)

    @property
    def cells(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if not u.is_stage)

    @property
    def stages(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.is_stage)


def _build(preset: str, task: str, store: str, version: str, steps: int | None, first: list[str],
           user: list[str], last: list[str], teacher: tuple[Path, dict] | None = None, modality: str = "lidar"):
    """The ``task`` config of ``preset`` (for ``modality`` camera / fusion: with the preset's camera branch), store,
    version and steps set, then ``first`` (defaults of the grid that ``--set`` may change), ``user`` (the
    ``--set`` items of this stage) and ``last`` (what names the unit: seed, fraction, init, ...); for RAD the
    teacher's backbone and PRC head as :func:`train.config.with_teacher` sets them (``teacher``: (checkpoint
    path, its planned config dict))."""
    from train.config import PRESETS, with_overrides, with_teacher

    base = PRESETS[preset](task=task) if modality == "lidar" else PRESETS[preset](task=task, modality=modality)
    if teacher is not None:
        base = with_teacher(base, teacher[0], teacher[1])
    sets = [f"data.store={store!r}", f"data.version={version!r}"]
    if steps is not None:
        sets.append(f"optim.max_steps={steps}")
    return with_overrides(base, sets + first + user + last)


#: What a camera / fusion fine-tuning cell takes from the RAD configuration of its seed (so that the RAD student's
#: weights fit its camera branch also after ``--set rad:model.camera...``): the model sections and the images.
CAMERA_SECTIONS: tuple[str, ...] = ("camera", "lss")


def with_camera_branch(cfg, rad_cfg):
    """``cfg`` (a camera / fusion det or seg config) with the camera branch (:data:`CAMERA_SECTIONS`, ``images``) of
    ``rad_cfg``; a lidar config is returned as it is."""
    from train.config import TrainConfig

    if not cfg.finetune.uses_camera:
        return cfg
    d, r = cfg.to_dict(), rad_cfg.to_dict()
    for s in CAMERA_SECTIONS:
        if s in r["model"]:
            d["model"][s] = copy.deepcopy(r["model"][s])
    d["images"] = copy.deepcopy(r["images"])
    return TrainConfig.from_dict(d)


def make_plan(spec: ExperimentSpec, root: str | Path, store: str | Path, version: str,
              sweeps: str = "keyframes") -> Plan:
    """Every unit of ``spec`` over store version ``version`` (a full id; a placeholder validates the grid before
    the store exists), resolved. ``sweeps``: what the store holds (``keyframes``: the cells use one LiDAR sweep
    unless ``--set ft:model.finetune.lidar_sweeps=...``)."""
    root, store = Path(root).resolve(), str(Path(store).resolve())
    sets = split_overrides(spec.overrides)
    prc_base = _build(spec.preset, "prc", store, version, spec.pretrain_steps, [], sets["prc"], [])
    base_alpha = float(prc_base.prc.alpha)
    rad_camera = _build(spec.preset, "rad", store, version, spec.rad_steps, [], sets["rad"], [])  # camera sections
    modalities = spec.modalities()
    notes = []
    if set(modalities) == {"lidar"} and any(i in RAD_INITS for i in spec.inits):
        notes.append("--modality lidar: RAD leaves the LiDAR backbone frozen, so the prc+uniform and calico cells "
                     "start from the same LiDAR weights as prc (a check of the wiring, not a comparison); use "
                     "--modality fusion (or auto) to fine-tune their camera branch too")
    ablation = [a for a in spec.alphas if a != base_alpha]
    need_prc = any(i != "scratch" for i in spec.inits)
    weightings = [w for i, w in RAD_INITS.items() if i in spec.inits]
    first_ft = ["model.finetune.lidar_sweeps=1"] if sweeps == "keyframes" else []

    units: list[Unit] = []

    def stage(kind: str, seed: int, alpha: float, weighting: str | None = None) -> Unit:
        if kind == "prc":
            cfg = _build(spec.preset, "prc", store, version, spec.pretrain_steps, [], sets["prc"],
                         [f"data.seed={seed}", f"model.prc.alpha={alpha!r}"])
            return Unit("prc", seed, alpha=alpha, config=cfg)
        teacher = Unit("prc", seed, alpha=alpha)
        prc_cfg = next(u for u in units if u.id == teacher.id).config
        path = _checkpoint_path(root / teacher.folder / "run", prc_cfg.optim.max_steps)
        cfg = _build(spec.preset, "rad", store, version, spec.rad_steps, [], sets["rad"],
                     [f"data.seed={seed}", f"model.rad.weighting={weighting!r}"],
                     teacher=(path, prc_cfg.to_dict()))
        return Unit("rad", seed, alpha=alpha, weighting=weighting, deps=(teacher.id,), config=cfg)

    def cell(task: str, modality: str, init: str, fraction: float, seed: int, alpha: float | None) -> Unit:
        if init == "scratch":
            dep, init_path = None, "none"
        else:
            dep = (Unit("prc", seed, alpha=alpha) if init == "prc"
                   else Unit("rad", seed, alpha=alpha, weighting=RAD_INITS[init]))
            dep_cfg = next(u for u in units if u.id == dep.id).config
            init_path = str(_checkpoint_path(root / dep.folder / "run", dep_cfg.optim.max_steps))
        cfg = _build(spec.preset, task, store, version, spec.steps, first_ft, sets[task],
                     [f"data.seed={seed}", f"model.finetune.fraction={fraction!r}",
                      f"model.finetune.fraction_by={spec.fraction_by!r}", f"model.finetune.init={init_path!r}"],
                     modality=modality)
        rad_cfg = next((u.config for u in units if u.kind == "rad" and u.seed == seed), rad_camera)
        cfg = with_camera_branch(cfg, rad_cfg)
        return Unit(task, seed, alpha=None if init == "scratch" else alpha, init=init, modality=modality,
                    fraction=fraction, deps=() if dep is None else (dep.id,), config=cfg)

    for seed in spec.seeds:
        if need_prc:
            units.append(stage("prc", seed, base_alpha))
        units.extend(stage("prc", seed, a) for a in ablation)
        units.extend(stage("rad", seed, base_alpha, w) for w in weightings)
        for task in spec.tasks:
            for modality in modalities:
                for fraction in sorted(spec.fractions):
                    for init in spec.inits:
                        if init in RAD_INITS and modality == "lidar" and len(modalities) > 1:
                            continue  # the same LiDAR weights as prc: fine-tuned in the other modalities only
                        if init == "prc" and modality == "camera":
                            continue  # a camera model holds no LiDAR backbone
                        units.append(cell(task, modality, init, fraction, seed, base_alpha))
                if modality != "camera":
                    for a in ablation:
                        for fraction in sorted(spec.alpha_fractions):
                            units.append(cell(task, modality, "prc", fraction, seed, a))
    ids = [u.id for u in units]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:  # cannot happen with validated specs; a guard for the id scheme
        raise ConfigError("grid", dup, "two units with the same id")
    return Plan(spec=spec, root=str(root), store=store, version=version, units=tuple(units), notes=tuple(notes))


def _checkpoint_path(run: Path, step: int) -> Path:
    from train.checkpoint import checkpoint_path

    return checkpoint_path(run, step)


# ------------------------------------------------------------------------------------------------------------
# Recorded configurations: what a rerun may change
# ------------------------------------------------------------------------------------------------------------


def _is_free(key: str) -> bool:
    from train.config import NON_RESULT_FIELDS

    return any(key == f or key.startswith(f + ".") for f in NON_RESULT_FIELDS + FREE_FIELDS)


def result_config(config: dict) -> dict:
    """``config`` (``TrainConfig.to_dict()``) without the fields a rerun may change (:func:`_is_free`)."""
    from train.config import plain

    def walk(d: dict, prefix: str) -> dict:
        out = {}
        for k, v in d.items():
            key = prefix + k
            if _is_free(key):
                continue
            out[k] = walk(v, key + ".") if isinstance(v, dict) else v
        return out

    return walk(plain(config), "")


def config_sha256(config: dict, root: str | Path | None = None) -> str:
    """SHA-256 of the canonical JSON of :func:`result_config` plus the init checkpoint's path relative to ``root``
    (the experiment folder): equal for two configs that compute the same run, also after the folder moved."""
    from data_catalog.version import canonical_json, sha256_bytes

    init = ((config.get("model") or {}).get("finetune") or {}).get("init")
    if init not in (None, "none") and root is not None:
        try:
            init = Path(init).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return sha256_bytes(canonical_json({"config": result_config(config), "init": init}).encode())


def config_changes(recorded: dict, unit: Unit) -> dict[str, tuple]:
    """``{field: (recorded, now)}`` of what changes the result between a ``cell.json`` document and ``unit``: its
    identity (``unit.*``) and the config fields outside :func:`_is_free`."""
    from data_catalog.version import diff_specs
    from train.config import plain

    now = unit.identity()
    out = {f"unit.{k}": v for k, v in diff_specs(plain(recorded.get("unit") or {}), plain(now)).items()}
    diff = diff_specs(plain(recorded.get("config") or {}), plain(unit.config.to_dict()))
    return out | {k: v for k, v in diff.items() if not _is_free(k)}


class ExperimentChanged(InputError):
    """Units of the experiment folder were run with another configuration (``changes``: {unit id: {field:
    (recorded, now)}})."""

    def __init__(self, root, changes: dict[str, dict[str, tuple]]):
        self.changes = changes
        shown = []
        for uid, fields in list(changes.items())[:3]:
            what = ", ".join(f"{k} (recorded {a!r}, now {b!r})" for k, (a, b) in list(fields.items())[:4])
            more = f" and {len(fields) - 4} more" if len(fields) > 4 else ""
            shown.append(f"{uid}: {what}{more}")
        rest = f"; and {len(changes) - 3} more unit(s)" if len(changes) > 3 else ""
        super().__init__(f"refusing to continue: {len(changes)} unit(s) were run with another configuration, which "
                         f"would mix two experiments in one table: {'; '.join(shown)}{rest}. Rerun with the "
                         "recorded options, add --allow-config-change to continue them with the new ones "
                         "(recorded in each cell.json), or use another --out", root)


def read_json(path: Path) -> dict | None:
    """A JSON document, or None when the file is absent; InputError naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"not valid JSON ({exc}); delete the unit's folder to recompute it", path) from None
    if not isinstance(doc, dict):
        raise InputError("not a JSON object; delete the unit's folder to recompute it", path)
    return doc


def recorded_changes(plan: Plan) -> dict[str, dict[str, tuple]]:
    """{unit id: changes} of the units whose ``cell.json`` in the experiment folder records another configuration
    (:func:`config_changes`); units without one are new."""
    out = {}
    for u in plan.units:
        doc = read_json(Path(plan.root) / u.folder / "cell.json")
        if doc is not None:
            changes = config_changes(doc, u)
            if changes:
                out[u.id] = changes
    return out
