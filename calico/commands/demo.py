"""``calico demo``: the main job end to end on the embedded default (a generated nuScenes-format dataset).

1. ``calico synth``: write a small nuScenes-format dataroot (reused when this demo already generated it);
2. read it through nuscenes-devkit (scenes, keyframes, the LiDAR -> camera chains);
3. ``calico preprocess run``: the Dask stage preprocesses every keyframe sweep (ground removal, DBSCAN, semantic
   pooling, projection into the six cameras, two-view augmentation parameters) into a versioned store;
4. ``calico preprocess verify``, ``calico catalog show``, ``stats`` and ``report``: check the store, show its
   configuration and lineage, audit it per scene and write its HTML report (plots and bird's-eye pictures of regions, read back through
   ``data_catalog``);
5. ``calico train pretrain-prc``: a short PRC pre-training schedule of the PointPillars backbone on the store
   (the CPU ``small`` preset), reading the store through ``data_catalog`` only; the loss curve is plotted;
6. ``calico train pretrain-rad``: a short RAD schedule distilling the frozen PRC backbone into the camera branch
   (the ``small`` preset: a timm ResNet-18, an FPN and an LSS view transform onto the LiDAR grid), reading the
   six images of every keyframe from the dataroot the store version names;
7. ``calico train det``: a short detection fine-tuning from the PRC backbone, scored by nuscenes-devkit on the
   validation split;
8. score the ground truth of the validation split with nuscenes-devkit's DetectionEval (a check that the
   generated data and the evaluation path agree);
9. ``calico experiment label-efficiency`` in miniature, in this process, on the demo's store
   (:func:`calico.experiment.run.run_experiment`): inits scratch and prc (the experiment's own short PRC stage),
   label fractions 0.5 and 1 of the training keyframes, one seed, det and seg, a few steps per unit; prints the
   table (``table.md``) and says that it is a miniature (the mechanics, not the paper's result).

Run it twice: the second run reuses the dataset, the store version and every finished run (nothing is recomputed).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from calico.commands import checks


#: The grid of the demo's miniature label-efficiency experiment (step 9).
MINI_INITS: tuple[str, ...] = ("scratch", "prc")
MINI_FRACTIONS: tuple[float, ...] = (0.5, 1.0)


def _loss_summary(run_dir: Path, what: str) -> str:
    """Mean loss of the first and of the last fifth of a run's logged steps, and where its loss curve is."""
    import numpy as np

    from train.loop import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    k = max(1, len(rows) // 5)
    first, last = (float(np.mean([r["loss"] for r in part])) for part in (rows[:k], rows[-k:]))
    return (f"mean {what} of the first {k} steps {first:.3f}, of the last {k} steps {last:.3f} "
            f"(loss curve: {run_dir / 'loss.png'})")


def demo(
    workdir: Path = typer.Option(Path("out/demo"), callback=checks.out_folder,
                                 help="Folder for the generated data and the outputs."),
    preset: str = typer.Option("small", help="Synthetic dataset preset (see `calico synth --help`)."),
    seed: int = typer.Option(0, help="Seed of the generated dataset and of the augmentations."),
    backend: str = typer.Option("auto", help="Compute backend: auto, cpu or gpu."),
    workers: int = typer.Option(2, help="Dask worker processes for the preprocessing stage."),
    train_steps: int = typer.Option(40, help="PRC pre-training steps (the CPU 'small' preset; 0 skips training)."),
    rad_steps: int = typer.Option(20, help="RAD distillation steps after PRC (the CPU 'small' preset; 0 skips it)."),
    finetune_steps: int = typer.Option(20, help="Detection fine-tuning steps from the PRC backbone (the CPU 'small' "
                                                "preset, one sweep; 0 skips it)."),
    evaluate: bool = typer.Option(True, help="Run nuscenes-devkit's DetectionEval on the ground truth."),
    experiment_steps: int = typer.Option(10, help="Steps of every unit of the miniature label-efficiency experiment "
                                                  "(its PRC stage and each fine-tuning cell; 0 skips it)."),
) -> None:
    """Generate a small synthetic nuScenes dataset and run the pipeline on it end to end."""
    from calico.commands.output import console as make_console
    from calico.commands.store import show as catalog_show
    from calico.commands.store import stats as catalog_stats
    from data_catalog.report import ReportConfig, write_report
    from data_catalog.verify import verify_version
    from preprocess.run import run as run_stage
    from preprocess.sweep import SweepConfig
    from shared.backend import resolve_backend
    from shared.nuscenes_io import iter_lidar_tokens, iter_scenes, open_nuscenes
    from shared.synth import generate

    console = make_console()
    workdir.mkdir(parents=True, exist_ok=True)
    backend = resolve_backend(backend)  # once per run

    # 1. the embedded default dataset
    dataroot, marker = workdir / "nuscenes", workdir / "nuscenes.json"
    made = json.loads(marker.read_text()) if marker.is_file() else {}
    if made.get("preset") == preset and made.get("seed") == seed and dataroot.is_dir():
        version = made["version"]
        console.print(f"[1/9] reusing the generated '{preset}' dataset at {dataroot} ({version})")
    else:
        if dataroot.exists():
            raise typer.BadParameter(f"{dataroot} exists but holds another dataset than preset={preset} "
                                     f"seed={seed}; remove it or choose another --workdir", param_hint="--workdir")
        console.print(f"[1/9] generating the '{preset}' synthetic nuScenes dataset into {dataroot}")
        dataroot, version = generate(dataroot, preset=preset, seed=seed, progress=True)
        marker.write_text(json.dumps({"preset": preset, "seed": seed, "version": version}))

    # 2. read it through nuscenes-devkit
    nusc = open_nuscenes(dataroot, version)
    scenes = list(iter_scenes(nusc))
    n_key = sum(len(list(iter_lidar_tokens(nusc, s, keyframes_only=True))) for s in scenes)
    console.print(f"[2/9] nuscenes-devkit loaded {version}: {len(scenes)} scenes, {n_key} keyframe sweeps, "
                  f"{len(nusc.sample_annotation)} annotations")

    # 3. the preprocessing stage into a versioned store
    store = workdir / "store"
    console.print(f"[3/9] preprocessing the keyframe sweeps into {store} ({workers} Dask workers, "
                  f"{backend.upper()} backend)")
    summary = run_stage(dataroot, version, store, SweepConfig(), sweeps="keyframes", backend=backend, seed=seed,
                        workers=workers, progress=True, log=lambda *a: console.print(*a), argv=sys.argv)
    console.print(f"      version {summary.version}: {summary.scenes_done} scene shard(s) written, "
                  f"{summary.scenes_skipped} reused, {summary.sweeps_done} sweeps, {summary.failed_sweeps} failed, "
                  f"{summary.wall_s:.1f} s")

    # 4. verify, audit per scene, one picture
    report = verify_version(summary.path)
    if not report.ok:
        for line in report.lines():
            console.print(line)
        raise typer.Exit(1)
    console.print("[4/9] store verified (every shard matches its manifest); calico catalog show, stats, report:")
    catalog_show(store=store, version=summary.version, as_json=False)
    catalog_stats(store=store, version=summary.version, as_json=False)
    page = write_report(store, summary.version, workdir / "reports", ReportConfig(n_sweeps=2),
                        defaults=SweepConfig().to_dict())
    console.print(f"      report: {page.path}")

    # 5. PRC pre-training, a short schedule (resumes from its last checkpoint when run again)
    if train_steps > 0:
        from train.config import small, with_overrides
        from train.loop import pretrain_prc

        run_dir = workdir / "runs" / f"prc-{summary.version}"
        cfg = with_overrides(small(str(store), summary.version), [f"optim.max_steps={train_steps}",
                                                                   f"ckpt_every={max(1, train_steps // 2)}"])
        console.print(f"[5/9] PRC pre-training: {train_steps} steps of the 'small' preset into {run_dir}")
        result = pretrain_prc(cfg, run_dir)
        console.print(f"      step {result['step']}: {_loss_summary(run_dir, 'loss')}")

    # 6. RAD distillation from the PRC run just trained (resumes from its last checkpoint when run again)
    if train_steps > 0 and rad_steps > 0:
        from calico.commands.train import train_config
        from train.loop import pretrain_rad

        rad_dir = workdir / "runs" / f"rad-{summary.version}"
        rcfg = train_config("small", "rad", store, summary.version, rad_steps, None,
                            [f"ckpt_every={max(1, rad_steps // 2)}"], teacher=run_dir)
        console.print(f"[6/9] RAD distillation: {rad_steps} steps of the 'small' preset ({rcfg.camera.backbone} "
                      f"at {rcfg.camera.image_size[0]}x{rcfg.camera.image_size[1]}, six cameras) into {rad_dir}")
        result = pretrain_rad(rcfg, rad_dir)
        console.print(f"      step {result['step']}: {_loss_summary(rad_dir, 'RAD loss')}")

    # 7. detection fine-tuning from the PRC backbone, scored by the devkit on the validation split
    if train_steps > 0 and finetune_steps > 0:
        from calico.commands.train import train_config
        from train.checkpoint import resolve_checkpoint
        from train.loop import finetune, read_metrics

        det_dir = workdir / "runs" / f"det-{summary.version}"
        init = resolve_checkpoint(run_dir).resolve()
        dcfg = train_config("small", "det", store, summary.version, finetune_steps, None,
                            [f"ckpt_every={max(1, finetune_steps // 2)}", f"model.finetune.init={str(init)!r}",
                             "model.finetune.lidar_sweeps=1"])
        console.print(f"[7/9] detection fine-tuning: {finetune_steps} steps of the 'small' preset from {init.name} "
                      f"of the PRC run, one sweep, into {det_dir}")
        result = finetune(dcfg, det_dir)
        scores = read_metrics(det_dir / "eval.jsonl")
        last = scores[-1] if scores else {}
        console.print(f"      step {result['step']}: {_loss_summary(det_dir, 'loss')}; devkit on the validation "
                      f"split: mAP {last.get('mAP', float('nan')):.3f}, NDS {last.get('NDS', float('nan')):.3f} "
                      f"(a few steps on a few scenes: a smoke test of the path, not a result)")

    # 8. the evaluation path
    if evaluate:
        from train.eval.detection import evaluate_detection, gt_submission

        split = "mini_val" if "mini" in version else "val"
        metrics = evaluate_detection(nusc, gt_submission(nusc, split), split, workdir / "eval")
        console.print(f"[8/9] DetectionEval ({split}) of the ground truth: mAP {metrics['mean_ap']:.3f}, "
                      f"NDS {metrics['nd_score']:.3f}")
    # 9. the label-efficiency experiment in miniature, on the demo's store (finished units are skipped when run again)
    if train_steps > 0 and experiment_steps > 0:
        import time

        from calico.experiment.plan import ExperimentSpec
        from calico.experiment.run import run_experiment

        exp_dir = workdir / "experiments" / f"mini-{summary.version}-s{seed}-{experiment_steps}steps"
        spec = ExperimentSpec(fractions=MINI_FRACTIONS, fraction_by="samples", seeds=(seed,), inits=MINI_INITS,
                              tasks=("det", "seg"), preset="small", pretrain_steps=experiment_steps,
                              steps=experiment_steps)
        console.print(f"[9/9] miniature label-efficiency experiment into {exp_dir}: inits {', '.join(MINI_INITS)}, "
                      f"fractions {', '.join(f'{f:g}' for f in MINI_FRACTIONS)} of the training keyframes, seed "
                      f"{seed}, det and seg, {experiment_steps} steps per unit (`calico experiment label-efficiency "
                      f"--store {store} --store-version {summary.version}` in this process)")
        t0 = time.time()
        exp = run_experiment(spec, exp_dir, store=store, store_version=summary.version,
                             log=lambda line: console.print("      " + line, markup=False, highlight=False),
                             argv=sys.argv)
        result, rep = exp["result"], exp["report"]
        if result["failed"] or result["not_run"]:
            for uid, msg in result["failed"].items():
                console.print(f"      failed: {uid}: {msg}", markup=False)
            for uid, need in result["not_run"].items():
                console.print(f"      not run: {uid} (needs {need}, which failed)", markup=False)
            raise typer.Exit(1)
        table = rep["out"] / "table.md"
        console.print(table.read_text(), markup=False, highlight=False, emoji=False)
        console.print(f"      {table} (also table.csv, table.json, listing.md, plot-det.png, plot-seg.png); "
                      f"{len(result['finished'])} unit(s) run, {len(result['skipped'])} done earlier, "
                      f"{time.time() - t0:.1f} s", markup=False, highlight=False)
        det_zero = all(r.get("NDS_mean") == 0.0 for r in rep["rows"] if r["task"] == "det")
        console.print(f"      a miniature: {len(scenes)} scenes ({n_key} keyframes), {experiment_steps} steps of PRC "
                      f"and of each fine-tuning, one seed, LiDAR only, no RAD inits: it shows the mechanics (the "
                      f"grid, one folder per cell, resume, the table), not the paper's result"
                      + ("; detection finds no box after so few steps, hence its zeros" if det_zero else "")
                      + "; the full experiment and the tables the project measured: docs/experiments.md",
                      markup=False, highlight=False)
    console.print(f"[green]demo finished[/green]: outputs under {workdir}; try "
                  f"`calico catalog show --store {store}`")

