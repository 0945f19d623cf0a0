"""Executing an experiment plan (:mod:`calico.experiment.plan`): the store, then every unit in dependency order,
one after another in this process or as Dask tasks, each resumable.

Files of a unit folder ``DIR/pretrain/<id>/`` or ``DIR/cells/<id>/``:

* ``cell.json``: the unit's identity, its resolved configuration (``TrainConfig.to_dict()``) and that
  configuration's SHA-256 over the fields that change the result (:func:`calico.experiment.plan.config_sha256`),
  the store version, its inputs (the checkpoint and SHA-256 of each stage it starts from, once known), every
  attempt (start, end, wall seconds, how it ended) and every configuration change allowed with
  ``--allow-config-change``; rewritten atomically;
* ``run/``: the training loop's run folder (checkpoints, ``metrics.jsonl``, ``eval.jsonl``, ``config.json``,
  ``loss.png``);
* ``log.txt``: what the loop printed (progress, resume notices), appended at every attempt;
* ``done.json``: written atomically when the unit finished: steps, wall and training seconds, the last checkpoint
  (path relative to ``DIR``, SHA-256) and for a fine-tuning cell the scores of the last evaluation and of the
  best one, with the best checkpoint (the loop's ``keep_best`` by NDS / mIoU).

A rerun (:func:`run_unit`): a unit with ``done.json`` whose inputs are the ones recorded is skipped; one without
resumes from its latest checkpoint (the loop's resume); one whose stages were recomputed since (another
checkpoint SHA-256) is refused (:class:`InputsChanged`). Configuration changes are checked for every unit before
anything runs (:func:`calico.experiment.plan.recorded_changes`).

Dask (:func:`execute` with ``workers`` > 0 or ``scheduler``): one task per unit, each depending on the tasks of the
stages it starts from, which runs ``python -m calico experiment run-cell UNIT_FOLDER`` in a child process of the
worker (a fresh process per run: its own torch threads, DataLoader workers, memory and GPU); a worker runs one
unit at a time when it has one thread (the local cluster's), or when every worker declares the resource
``cell`` (``dask worker ... --resources cell=1``). With ``workers`` and no scheduler: a LocalCluster of that
many single-threaded processes, or dask-cuda's LocalCUDACluster (one worker per GPU) when dask-cuda is importable
and torch sees a GPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from calico.experiment.plan import Plan, Unit, config_sha256, read_json, recorded_changes, ExperimentChanged
from shared.errors import CalicoError, InputError

#: Dask event topic of the units' "started" notices.
TOPIC = "calico-experiment"


class InputsChanged(InputError):
    """A unit's recorded inputs (the checkpoints of the stages it starts from) are not the stages' current ones."""


class UnitFailed(CalicoError):
    """A unit's run raised; the message names the unit and its log."""


def atomic_json(path: Path, doc: dict) -> None:
    from train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _rel(root: Path, path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return p.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


def elapsed(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` / ``4.2 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ------------------------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------------------------


def prepare_store(root: str | Path, *, dataroot=None, dataset_version: str | None = None, store=None,
                  store_version: str | None = None, sweeps: str = "keyframes", workers: int = 2,
                  scheduler: str | None = None, connect_timeout: float = 10.0, log: Callable = print,
                  argv=None) -> dict:
    """The store of the experiment, recorded in ``DIR/store.json``: ``store`` given, its version ``store_version``
    (default: the latest) is used as it is; else ``dataroot`` / ``dataset_version`` are preprocessed into
    ``DIR/store`` (:func:`preprocess.run.run`; an identical rerun reuses the version by its content id, and a
    finished store stage with the same request is not run again). Returns the record: store, version, sweeps."""
    from data_catalog.reader import open_version
    from data_catalog.versions import read_version_json
    from shared.paths import absolute

    root = Path(root)
    path = root / "store.json"
    recorded = read_json(path)
    if store is not None:
        v = open_version(store, store_version, verify_checksums=False)
        rec = {"store": str(absolute(store)), "version": v.id, "sweeps": v.spec.get("sweeps", "keyframes"),
               "built": False, "request": {"store": str(absolute(store)), "store_version": store_version}}
        log(f"store: version {v.id} of {rec['store']} (given with --store)")
    else:
        if dataroot is None or dataset_version is None:
            raise InputError("give --dataroot and --version (to preprocess a store into the experiment folder), "
                             "or --store (and --store-version) of an existing one", root)
        request = {"dataroot": str(absolute(dataroot)), "dataset_version": dataset_version, "sweeps": sweeps}
        vdir = (root / "store" / "versions" / recorded["version"]) if recorded and recorded.get("version") else None
        if recorded and recorded.get("request") == request and vdir is not None and (vdir / "version.json").is_file():
            read_version_json(vdir)
            log(f"store: reusing version {recorded['version']} in {root / 'store'} (recorded in {path})")
            return recorded
        from preprocess.run import run as preprocess

        log(f"store: preprocessing {dataroot} ({dataset_version}, {sweeps}) into {root / 'store'}")
        summary = preprocess(dataroot, dataset_version, root / "store", sweeps=sweeps, workers=workers,
                             scheduler=scheduler, connect_timeout=connect_timeout, progress=True,
                             log=lambda *a: log("      " + " ".join(str(x) for x in a)), argv=argv)
        if summary.exit_code:
            log(f"store: warning: version {summary.version} holds {summary.failed_sweeps} failed sweep(s) and "
                f"{len(summary.failed_scenes)} failed scene(s); the experiment trains on the rest (see "
                f"`calico catalog errors --store {root / 'store'}`)")
        rec = {"store": str((root / "store").resolve()), "version": summary.version, "sweeps": sweeps,
               "built": True, "request": request, "wall_s": summary.wall_s}
        log(f"store: version {summary.version}, {summary.scenes_done} scene(s) written, {summary.scenes_skipped} "
            f"reused, {elapsed(summary.wall_s)}")
    root.mkdir(parents=True, exist_ok=True)
    atomic_json(path, rec)
    return rec


# ------------------------------------------------------------------------------------------------------------
# One unit
# ------------------------------------------------------------------------------------------------------------


def record_units(plan: Plan, allow_config_change: bool) -> list[str]:
    """Check every unit against its ``cell.json`` (refusing changed ones, :class:`ExperimentChanged`, unless
    ``allow_config_change``) and write the missing or changed ones. Returns the ids of the changed units."""
    root = Path(plan.root)
    changes = recorded_changes(plan)
    if changes and not allow_config_change:
        raise ExperimentChanged(root, changes)
    now = time.time()
    for u in plan.units:
        path = root / u.folder / "cell.json"
        doc = read_json(path)
        config = u.config.to_dict()
        if doc is not None and u.id not in changes:
            if doc.get("config") != config:  # only fields that do not change the result (a moved folder, cadences)
                atomic_json(path, doc | {"config": config})
            continue
        new = {"unit": u.identity(), "config": config, "config_sha256": config_sha256(config, root),
               "store_version": plan.version, "created": (doc or {}).get("created", now),
               "attempts": (doc or {}).get("attempts", []), "inputs": (doc or {}).get("inputs"),
               "config_changes": (doc or {}).get("config_changes", [])}
        if doc is not None:
            new["config_changes"].append({"time": now, "changes": {k: list(v) for k, v in changes[u.id].items()}})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_json(path, new)
    return sorted(changes)


def dep_inputs(root: Path, doc: dict) -> dict:
    """{stage id: {"checkpoint", "sha256"}} of the stages the unit of ``doc`` (a ``cell.json``) starts from, from
    their ``done.json``; CalicoError naming the unit when one has not finished."""
    out = {}
    for dep in doc["unit"]["deps"]:
        done = read_json(root / "pretrain" / dep / "done.json")
        if done is None:
            raise CalicoError(f"{doc['unit']['id']}: the stage it starts from, {dep}, has not finished "
                              f"(no {root / 'pretrain' / dep / 'done.json'})")
        out[dep] = {"checkpoint": done["last_checkpoint"]["path"], "sha256": done["last_checkpoint"]["sha256"]}
    return out


def unit_state(root: Path, folder: str) -> str:
    """``done`` (finished, with the recorded inputs and configuration), ``partial`` (started), ``new``."""
    unit_dir = root / folder
    doc, done = read_json(unit_dir / "cell.json"), read_json(unit_dir / "done.json")
    if done is not None and doc is not None:
        try:
            inputs = dep_inputs(root, doc)
        except CalicoError:
            return "partial"
        if done.get("inputs") == inputs and done.get("config_sha256") == doc.get("config_sha256"):
            return "done"
    return "partial" if (unit_dir / "run").exists() else "new"


def _inputs_changed(uid: str, recorded: dict, now: dict, unit_dir: Path) -> InputsChanged:
    what = ", ".join(f"{k} (recorded {(recorded.get(k) or {}).get('sha256', '-')[:12]}, now "
                     f"{(now.get(k) or {}).get('sha256', '-')[:12]})" for k in sorted(set(recorded) | set(now))
                     if recorded.get(k) != now.get(k))
    return InputsChanged(f"{uid} was trained from other checkpoints than its stages hold now: {what} (a stage was "
                         f"recomputed); delete this folder to recompute the unit from them", unit_dir)


def run_unit(unit_dir: str | Path, allow_config_change: bool = False, quiet: bool = True) -> tuple[str, dict]:
    """Run (or resume, or skip) the unit of ``unit_dir`` from its ``cell.json``; returns (``"skipped"`` |
    ``"finished"``, its ``done.json``). ``quiet``: the loop's output goes to ``log.txt`` only."""
    from train.config import TrainConfig

    unit_dir = Path(unit_dir).resolve()
    root = unit_dir.parent.parent
    doc = read_json(unit_dir / "cell.json")
    if doc is None:
        raise InputError("not an experiment unit folder (no cell.json)", unit_dir)
    uid = doc["unit"]["id"]
    inputs = dep_inputs(root, doc)
    done = read_json(unit_dir / "done.json")
    if done is not None:
        if done.get("inputs") != inputs:
            raise _inputs_changed(uid, done.get("inputs") or {}, inputs, unit_dir)
        if done.get("config_sha256") == doc["config_sha256"]:
            return "skipped", done
        (unit_dir / "done.json").unlink()  # the configuration changed, allowed: the loop continues the run
    if doc.get("inputs") is not None and doc["inputs"] != inputs:
        raise _inputs_changed(uid, doc["inputs"], inputs, unit_dir)
    cfg = TrainConfig.from_dict(doc["config"])
    t0 = time.time()
    doc["inputs"] = inputs
    doc["attempts"] = list(doc.get("attempts", [])) + [{"start": t0, "pid": os.getpid(), "host": os.uname().nodename}]
    atomic_json(unit_dir / "cell.json", doc)
    how = "finished"
    try:
        with output_to(unit_dir / "log.txt", quiet, f"attempt {len(doc['attempts'])} of {uid}"):
            _train(cfg, unit_dir / "run", allow_config_change)
    except BaseException as exc:
        how = type(exc).__name__
        raise
    finally:
        doc["attempts"][-1] |= {"end": time.time(), "wall_s": time.time() - t0, "ended": how}
        atomic_json(unit_dir / "cell.json", doc)
    done = summarize(unit_dir, doc, inputs)
    atomic_json(unit_dir / "done.json", done)
    return "finished", done


@contextlib.contextmanager
def output_to(log: Path, quiet: bool, header: str):
    if not quiet:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        try:
            yield
        except BaseException as exc:
            import traceback

            from train.interrupt import TrainingInterrupted

            if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)):
                f.write(f"{type(exc).__name__}: {exc}\n")
            else:
                traceback.print_exc(file=f)
            raise


def _train(cfg, run_dir: Path, allow_config_change: bool) -> dict:
    from train.loop import finetune, pretrain_prc, pretrain_rad

    fn = {"prc": pretrain_prc, "rad": pretrain_rad, "det": finetune, "seg": finetune}[cfg.task]
    return fn(cfg, run_dir, resume=True, allow_config_change=allow_config_change)


#: The metric that ranks a fine-tuning run's evaluations (the loop's ``best_metric``).
BEST_METRIC = {"det": "NDS", "seg": "mIoU"}


def _checkpoint_record(root: Path, path: Path, step: int) -> dict:
    from data_catalog.version import sha256_file

    return {"path": _rel(root, path), "sha256": sha256_file(path), "step": int(step)}


def summarize(unit_dir: Path, doc: dict, inputs: dict) -> dict:
    """The ``done.json`` of a finished unit (module docstring), from its run folder and ``cell.json``."""
    from train.checkpoint import checkpoint_scores, checkpoint_steps
    from train.loop import read_metrics

    root = unit_dir.parent.parent
    run = unit_dir / "run"
    steps = checkpoint_steps(run)
    if not steps:
        raise CalicoError(f"{doc['unit']['id']}: the run finished without a checkpoint in {run}")
    last = max(steps)
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    secs = [float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), (int, float))]
    out = {"id": doc["unit"]["id"], "kind": doc["unit"]["kind"], "finished": time.time(),
           "config_sha256": doc["config_sha256"], "inputs": inputs, "store_version": doc.get("store_version"),
           "steps": last, "wall_s": sum(a.get("wall_s", 0.0) for a in doc.get("attempts", [])),
           "attempts": len(doc.get("attempts", [])),
           "train_s": (sum(secs) / len(secs)) * last if secs else None,
           "last_checkpoint": _checkpoint_record(root, steps[last], last)}
    task = doc["unit"]["kind"]
    if task in BEST_METRIC:
        metric = BEST_METRIC[task]
        evals = read_metrics(run / "eval.jsonl") if (run / "eval.jsonl").is_file() else []
        if not evals or evals[-1]["step"] != last:  # no evaluation at the last step (eval_every=0): score it now
            from train.eval.finetune import evaluate_checkpoint

            result = evaluate_checkpoint(steps[last], task)
            evals = evals + [{"step": last, **result["scores"]}]
            out["evaluated_after_training"] = True
        best = max(evals, key=lambda r: (r.get(metric, float("-inf")), r["step"]))
        scores = checkpoint_scores(steps, [], 0, evals, (metric, "max"))
        best_step = min(scores, key=lambda s: (scores[s], -s)) if scores else last
        out |= {"metric": metric, "scores_last": evals[-1], "scores_best": best,
                "best_checkpoint": _checkpoint_record(root, steps[best_step], best_step)}
    return out


# ------------------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------------------


def _score_note(done: dict) -> str:
    s = done.get("scores_last")
    if not s:
        return f"{done.get('steps')} steps"
    m = done["metric"]
    extra = f", mAP {s['mAP']:.3f}" if "mAP" in s else ""
    return f"{done.get('steps')} steps, last {m} {s.get(m, float('nan')):.3f}{extra}"


class Counter:
    """The overall count of the progress lines: ``[k/N]``, k the units finished or skipped so far."""

    def __init__(self, total: int, log: Callable):
        self.total, self.done, self.log = total, 0, log

    def line(self, what: str, uid: str, note: str = "", count: bool = False) -> None:
        if count:
            self.done += 1
        self.log(f"[{self.done}/{self.total}] {what} {uid}" + (f" ({note})" if note else ""))


def execute(plan: Plan, allow_config_change: bool = False, workers: int = 0, scheduler: str | None = None,
            connect_timeout: float = 10.0, log: Callable = print) -> dict:
    """Run every unit of ``plan`` (module docstring); returns {"finished": [...], "skipped": [...], "failed":
    {id: message}, "not_run": {id: the failed unit it needs}, "wall_s"}. Configuration changes are checked
    first (:func:`record_units`)."""
    t0 = time.time()
    changed = record_units(plan, allow_config_change)
    if changed:
        log(f"configuration changed (--allow-config-change) for {len(changed)} unit(s): {', '.join(changed[:5])}"
            + (" ..." if len(changed) > 5 else ""))
    result = {"finished": [], "skipped": [], "failed": {}, "not_run": {}}
    counter = Counter(len(plan.units), log)
    if workers == 0 and scheduler is None:
        _sequential(plan, allow_config_change, counter, result)
    else:
        _dask(plan, allow_config_change, workers, scheduler, connect_timeout, counter, result, log)
    result["wall_s"] = time.time() - t0
    return result


def _blocked(plan: Plan, u: Unit, result: dict) -> str | None:
    return next((d for d in u.deps if d in result["failed"] or d in result["not_run"]), None)


def _sequential(plan: Plan, allow: bool, counter: Counter, result: dict) -> None:
    root = Path(plan.root)
    for u in plan.units:
        need = _blocked(plan, u, result)
        if need is not None:
            result["not_run"][u.id] = need
            counter.line("not run:", u.id, f"needs {need}, which failed", count=True)
            continue
        state = unit_state(root, u.folder)
        if state != "done":
            counter.line("started", u.id, ("resuming; " if state == "partial" else "")
                         + f"log: {root / u.folder / 'log.txt'}")
        t = time.time()
        try:
            how, done = run_unit(root / u.folder, allow)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            from train.interrupt import TrainingInterrupted

            if isinstance(exc, TrainingInterrupted):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result["failed"][u.id] = msg
            counter.line("FAILED", u.id, f"{msg}; log: {root / u.folder / 'log.txt'}", count=True)
            continue
        result[how].append(u.id)
        note = f"in {elapsed(time.time() - t)}, {_score_note(done)}" if how == "finished" else "done earlier"
        counter.line(how, u.id, note, count=True)


def _remote_unit(unit_dir: str, allow: bool, *deps) -> tuple[str, dict]:
    """Dask task: the unit in a child process (``calico experiment run-cell``): (``"finished"`` | ``"skipped"``, its
    done.json), or UnitFailed naming the unit."""
    from distributed import get_worker

    try:
        get_worker().log_event(TOPIC, {"event": "started", "unit": Path(unit_dir).name,
                                       "worker": get_worker().address})
    except ValueError:  # not on a worker (a synchronous client in tests)
        pass
    cmd = [sys.executable, "-m", "calico", "experiment", "run-cell", unit_dir]
    if allow:
        cmd.append("--allow-config-change")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise UnitFailed(f"{Path(unit_dir).name}: exit status {proc.returncode}: "
                         f"{lines[-1] if lines else 'no output'} (log: {Path(unit_dir) / 'log.txt'})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["how"], out["done"]


def _cluster(workers: int):
    """dask-cuda's LocalCUDACluster (one worker per GPU, at most ``workers``) when dask-cuda is importable and torch
    sees a GPU, else a LocalCluster of ``workers`` single-threaded processes."""
    from preprocess.dask_setup import children_ignore_sigint

    with children_ignore_sigint():
        try:
            import torch
            from dask_cuda import LocalCUDACluster

            if torch.cuda.is_available():
                n = min(workers, torch.cuda.device_count())
                return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(range(n)), threads_per_worker=1,
                                        dashboard_address=":0")
        except ImportError:
            pass
        from distributed import LocalCluster

        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")


def _dask(plan: Plan, allow: bool, workers: int, scheduler: str | None, connect_timeout: float,
          counter: Counter, result: dict, log: Callable) -> None:
    from distributed import Client, as_completed

    from preprocess.dask_setup import connect_scheduler, quiet_logs, require_visible

    root = Path(plan.root)
    cluster = None
    if scheduler is not None:
        client = connect_scheduler(scheduler, connect_timeout)
    else:
        cluster = _cluster(workers)
        client = Client(cluster)
    try:
        require_visible(client, [("experiment folder", str(root), "writable"), ("store", plan.store, "folder")])
        info = client.scheduler_info()["workers"]
        every_has_cell = bool(info) and all("cell" in (w.get("resources") or {}) for w in info.values())
        if not every_has_cell and any(w.get("nthreads", 1) > 1 for w in info.values()):
            log("warning: some Dask workers have several threads and no 'cell' resource, so they may run several "
                "units at once; start them with --nthreads 1 or --resources cell=1")
        resources = {"cell": 1} if every_has_cell else None
        log(f"running {len(plan.units)} unit(s) as Dask tasks on {len(info)} worker(s) "
            f"({client.dashboard_link or client.scheduler.address})")

        t_start: dict[str, float] = {}

        def started(event) -> None:
            _, msg = event
            t_start[msg["unit"]] = time.time()
            counter.line("started", msg["unit"], f"on {msg['worker']}")

        client.subscribe_topic(TOPIC, started)
        futures, owner, t_submit = {}, {}, {}
        for u in plan.units:
            state = unit_state(root, u.folder)
            if state == "done" and all(d not in futures for d in u.deps):
                result["skipped"].append(u.id)
                counter.line("skipped", u.id, "done earlier", count=True)
                continue
            deps = [futures[d] for d in u.deps if d in futures]
            fut = client.submit(_remote_unit, str(root / u.folder), allow, *deps, key=f"calico-unit-{u.id}-"
                                f"{os.getpid()}-{int(time.time())}", pure=False, retries=0, resources=resources)
            futures[u.id], owner[fut.key], t_submit[u.id] = fut, u, time.time()
        for fut in as_completed(list(futures.values())):
            u = owner[fut.key]
            try:
                how, done = fut.result()
            except Exception as exc:
                need = next((d for d in u.deps if d in futures and futures[d].status == "error"), None)
                if need is not None:
                    result["not_run"][u.id] = need
                    counter.line("not run:", u.id, f"needs {need}, which failed", count=True)
                else:
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    result["failed"][u.id] = msg
                    counter.line("FAILED", u.id, msg, count=True)
                continue
            result[how].append(u.id)
            note = (f"in {elapsed(time.time() - t_start.get(u.id, t_submit[u.id]))}, {_score_note(done)}"
                    if how == "finished" else "done earlier")
            counter.line(how, u.id, note, count=True)
        client.unsubscribe_topic(TOPIC)
    except KeyboardInterrupt:
        with quiet_logs():
            client.close()
            if cluster is not None:
                cluster.close()
        raise
    finally:
        client.close()
        if cluster is not None:
            with quiet_logs():
                cluster.close()


# ------------------------------------------------------------------------------------------------------------
# The whole experiment in this process (what `calico demo` runs)
# ------------------------------------------------------------------------------------------------------------


def run_experiment(spec, out: str | Path, *, dataroot=None, dataset_version: str | None = None, store=None,
                   store_version: str | None = None, sweeps: str = "keyframes", allow_config_change: bool = False,
                   workers: int = 0, scheduler: str | None = None, preprocess_workers: int = 2,
                   connect_timeout: float = 10.0, select: str = "last", log: Callable = print, argv=None) -> dict:
    """``calico experiment label-efficiency`` as a function: the store (:func:`prepare_store`), the plan of ``spec``
    (an :class:`calico.experiment.plan.ExperimentSpec`), ``OUT/experiment.json``, every unit (:func:`execute`:
    finished units are skipped, started ones resume) and the report (:func:`calico.experiment.report.write_report`,
    into ``OUT/report``). Returns {"plan", "store" (the record), "result" (:func:`execute`'s), "report"
    (``write_report``'s: "out", "files", "rows", "missing")}. A failed unit does not raise (see ``result``); a
    changed configuration raises :class:`ExperimentChanged`, an interrupted training ``TrainingInterrupted``."""
    from calico.experiment.plan import make_plan
    from calico.experiment.report import write_report
    from train.checkpoint import atomic_write_text

    out = Path(out)
    rec = prepare_store(out, dataroot=dataroot, dataset_version=dataset_version, store=store,
                        store_version=store_version, sweeps=sweeps, workers=preprocess_workers, scheduler=scheduler,
                        connect_timeout=connect_timeout, log=log, argv=argv)
    plan = make_plan(spec, out, rec["store"], rec["version"], rec["sweeps"])
    for note in plan.notes:
        log(f"note: {note}")
    atomic_write_text(out / "experiment.json", json.dumps({
        "spec": spec.to_dict(), "store": rec, "units": [u.id for u in plan.units], "argv": list(argv or sys.argv),
        "modalities": list(spec.modalities())}, indent=1))
    states = [unit_state(Path(plan.root), u.folder) for u in plan.units]
    log(f"plan: {len(plan.units)} unit(s) ({len(plan.stages)} pre-training stage(s), {len(plan.cells)} fine-tuning "
        f"cell(s)): {states.count('done')} done, {states.count('partial')} started, {states.count('new')} new")
    result = execute(plan, allow_config_change, workers=workers, scheduler=scheduler,
                     connect_timeout=connect_timeout, log=log)
    return {"plan": plan, "store": rec, "result": result, "report": write_report(out, select=select)}
