"""The training loop, one for every task: ``train(task, out_dir)``, read top to bottom.

A *task* (``train/tasks/``: :class:`train.tasks.prc.PRCTask`, :class:`train.tasks.rad.RADTask`) owns what differs
between the stages::

    task.cfg                          the resolved TrainConfig (written next to the run and into every checkpoint)
    task.title                        a name for plots and messages
    task.stream(rank, world)          -> (IterableDataset with set_epoch / check_version / store_version, collate)
    task.build_model()                -> nn.Module whose forward(batch) returns {"loss": ..., other named scalars}
    task.frozen(model)                -> modules kept in eval mode, without gradients, never in the optimizer
    task.param_groups(model)          -> [{"name", "params", "lr_mult"[, "frozen_steps"]}], the trainable
                                         parameters; a group's learning rate is 0 for its first frozen_steps
                                         steps (a frozen warm-up that keeps the group in the optimizer and DDP)
    task.checkpoint_extra()           -> extra entries of every checkpoint (e.g. the teacher's identity)
    task.check_resume(state)          refuses a checkpoint this task must not continue from
    task.evaluate(model)              -> {name: number} or None, every ``eval_every`` steps and at the end

One process on CPU or GPU, or several through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU; initialised from the
environment when ``WORLD_SIZE`` > 1). Only rank 0 writes: ``OUT/metrics.jsonl`` (one JSON line per logged step:
step, epoch, every scalar the task returns, lr (and ``lr/<group>`` with several groups), grad_norm, seconds,
nan_skipped), ``OUT/eval.jsonl`` (the evaluations), TensorBoard event files under ``OUT/tb`` when the
``tensorboard`` package is installed, ``OUT/checkpoints/step-*.pt`` (:mod:`train.checkpoint`), ``OUT/config.json``
and, at the end, ``OUT/loss.png``.

Resume (the default): the latest checkpoint in ``OUT`` restores model, optimizer, scheduler, step, RNG states and
the data position (epoch and batches consumed in it; those batches are read again and dropped), after checking
that the store version is the one the checkpoint was trained on, that the task accepts it and that the
configuration differs from the checkpoint's only in :data:`train.config.NON_RESULT_FIELDS` (else
:class:`ResumeRefused` naming the fields; ``allow_config_change=True`` continues and appends the change to
``OUT/config_changes.jsonl``). It prints which checkpoint and step it resumes from.

Interrupts (:mod:`train.interrupt`): SIGINT or SIGTERM during the steps lets the step in progress finish; every
rank stops after that same step (the flags are all-reduced with the step's losses), rank 0 writes its checkpoint,
and :class:`train.interrupt.TrainingInterrupted` is raised (the CLI exits 130 / 143 saying how to resume).
Progress: :mod:`train.progress` on rank 0's stderr. After every checkpoint the older ones are pruned to
``keep_last`` plus the best (``keep_best``), never the one resumed from or the one just written.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from shared.errors import CalicoError, ConfigError, InputError
from train.checkpoint import (atomic_write_text, checkpoint_path, checkpoint_scores, checkpoint_steps,
                              latest_checkpoint, load_checkpoint, prune_checkpoints, rng_state, save_checkpoint,
                              set_rng_state)
from train.config import TrainConfig, result_changes
from train.interrupt import StopSignals, TrainingInterrupted, agreed_signal, ignore_stop_signals
from train.progress import Progress

#: Metric keys that are bookkeeping, not losses (left out of the loss plot).
BOOKKEEPING = ("step", "epoch", "lr", "grad_norm", "seconds", "nan_skipped")


class TrainingDiverged(CalicoError):
    """The loss (or the gradient norm) was not finite for ``max_nan`` consecutive steps."""


class ResumeRefused(InputError):
    """The checkpoint to resume from was trained with another configuration in fields that change the result
    (``fields``: {dotted field: (checkpoint value, new value)})."""

    def __init__(self, checkpoint, fields: dict[str, tuple]):
        self.fields = dict(fields)
        what = ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in self.fields.items())
        super().__init__(f"refusing to resume: the configuration differs from this checkpoint's in {what}, which "
                         "changes the result; rerun with the checkpoint's values, add --allow-config-change to "
                         "continue with the new ones (logged in config_changes.jsonl of the run), or use "
                         "--no-resume or another --out to start over", checkpoint)


def _setup_distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world_size, local_rank, device); initialises the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return rank, world, local, torch.device("cuda", local)
    return rank, world, local, torch.device("cpu")


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _mean_over_ranks(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= world
    return values


def _group_factor(factor: Callable[[int], float], frozen_steps: int) -> Callable[[int], float]:
    """The schedule ``factor``, 0 for the first ``frozen_steps`` steps."""
    if not frozen_steps:
        return factor
    return lambda step: 0.0 if step < frozen_steps else factor(step)


def _tensorboard(out: Path):
    """A SummaryWriter under OUT/tb when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def train(task, out_dir: str | Path, resume: bool = True, stop_after: int | None = None,
          allow_config_change: bool = False) -> dict:
    """Run ``task`` for ``task.cfg.optim.max_steps`` optimizer steps into ``out_dir``; returns a summary dict
    (step, epoch, nan_skipped, store_version, last metrics, rank, world_size).

    stop_after: stop (with a checkpoint) after this many steps *of this call*, a controlled interruption.
    allow_config_change: resume even when the configuration differs from the checkpoint's in fields that change
    the result (logged in ``OUT/config_changes.jsonl``). Raises :class:`train.interrupt.TrainingInterrupted`
    after a SIGINT / SIGTERM (module docstring). Restores torch's deterministic-algorithms setting afterwards.
    """
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _train(task, Path(out_dir), resume, stop_after, allow_config_change)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _log_config_change(out: Path, ckpt: Path, step: int, changed: dict, free: dict, note) -> None:
    """Append the resume's configuration changes to ``OUT/config_changes.jsonl`` (rewritten atomically) and say so."""
    path = out / "config_changes.jsonl"
    line = json.dumps({"step": step, "checkpoint": str(ckpt), "allowed_with_flag": sorted(changed),
                       "changes": {k: list(v) for k, v in (changed | free).items()}})
    atomic_write_text(path, (path.read_text() if path.exists() else "") + line + "\n")
    what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in (changed | free).items())
    note(f"configuration changed on resume at step {step}: {what}" + (" (--allow-config-change)" if changed else "")
         + f"; logged in {path}")


def _train(task, out: Path, resume: bool, stop_after: int | None, allow_config_change: bool) -> dict:
    cfg: TrainConfig = task.cfg
    rank, world, _, device = _setup_distributed()
    master = rank == 0
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.data.seed)  # the same initial weights on every rank (DDP also broadcasts them)

    # ---- data: this rank's share of the store version
    d = cfg.data
    stream, collate = task.stream(rank, world)
    loader = DataLoader(stream, batch_size=d.batch_size, collate_fn=collate, num_workers=d.num_workers,
                        worker_init_fn=ignore_stop_signals,
                        generator=torch.Generator().manual_seed(d.seed))  # leaves the global torch RNG alone

    # ---- model (frozen parts without gradients), optimizer over the task's groups, schedule
    model = task.build_model().to(device)
    frozen = list(task.frozen(model))
    for m in frozen:
        m.requires_grad_(False)
    groups = task.param_groups(model)
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    for g in groups:
        bad = [p for p in g["params"] if id(p) in frozen_ids or not p.requires_grad]
        if bad:
            raise CalicoError(f"parameter group {g['name']!r} holds {len(bad)} frozen parameter(s)")
    ddp_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [{"params": g["params"], "lr": o.lr * g.get("lr_mult", 1.0), "name": g["name"]} for g in groups],
        lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [_group_factor(o.lr_factor, g.get("frozen_steps", 0))
                                                               for g in groups])
    trainable = [p for g in groups for p in g["params"]]
    amp = cfg.amp and device.type == "cuda"

    # ---- resume
    step = epoch = batch_in_epoch = nan_skipped = 0
    progress = Progress(o.max_steps, cfg.log_every, enabled=master)
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise InputError(f"--no-resume, but this run folder holds checkpoints of an earlier run (latest {ckpt.name}); "
                         f"starting over here would mix the two runs' checkpoints and metrics: use another --out, or "
                         f"delete {out / 'checkpoints'} first", out)
    resumed_step = None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        stream.check_version(state["store_version"])
        task.check_resume(state)
        changed, free = result_changes(state.get("config") or {}, cfg.to_dict())
        if changed and not allow_config_change:
            raise ResumeRefused(ckpt, changed)
        if master and (changed or free):
            _log_config_change(out, ckpt, state["step"], changed, free, progress.note)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        nan_skipped = state.get("nan_skipped", 0)
        set_rng_state(state["rng"])
        resumed_step = step
        progress.note(f"resuming from {ckpt} (step {step} of {o.max_steps}, epoch {epoch})")
    metrics_path, eval_path = out / "metrics.jsonl", out / "eval.jsonl"
    if master:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
        for path in (metrics_path, eval_path):  # drop lines logged after the checkpoint resumed from (logged again)
            kept = [ln for ln in (path.read_text().splitlines() if path.exists() and ckpt else [])
                    if json.loads(ln)["step"] <= step]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
    tb = _tensorboard(out) if master else None
    written: Path | None = None

    def checkpoint() -> None:
        nonlocal written
        if master:
            written = save_checkpoint(out, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "nan_skipped": nan_skipped, "rng": rng_state(),
                "config": cfg.to_dict(), "task": cfg.task, "store_version": stream.store_version,
                **task.checkpoint_extra()})
            scores = None
            if cfg.keep_best:
                metric = getattr(task, "best_metric", None)
                scores = checkpoint_scores(
                    checkpoint_steps(out),
                    read_metrics(metrics_path) if metrics_path.exists() else [], cfg.ckpt_every,
                    read_metrics(eval_path) if metric and eval_path.exists() else [], metric)
            prune_checkpoints(out, cfg.keep_last, scores, protect=(step, resumed_step))
        if world > 1:
            torch.distributed.barrier()

    def set_train_mode() -> None:
        model.train()
        for m in frozen:
            m.eval()

    def evaluate() -> None:
        if master:
            model.eval()
            with torch.no_grad():
                result = task.evaluate(model)
            set_train_mode()
            if result:
                with eval_path.open("a") as f:
                    f.write(json.dumps({"step": step, **result}) + "\n")
                for k, v in result.items():
                    if tb is not None and isinstance(v, (int, float)):
                        tb.add_scalar(f"eval/{k}", v, step)
        if world > 1:
            torch.distributed.barrier()

    def batches():
        """Endless batches; advances ``epoch``/``batch_in_epoch`` (skipping those consumed before a resume)."""
        nonlocal epoch, batch_in_epoch
        skip = batch_in_epoch
        while True:
            stream.set_epoch(epoch)
            n = 0
            for batch in loader:
                n += 1
                if n <= skip:
                    continue
                batch_in_epoch = n
                yield batch
            if n == 0:
                raise CalicoError(f"rank {rank} got no data from store version {stream.store_version}")
            epoch, batch_in_epoch, skip = epoch + 1, 0, 0

    # ---- the loop
    set_train_mode()
    consecutive_nan, done_here, last, stop = 0, 0, {}, None
    data = batches()
    t_prev = time.perf_counter()
    with StopSignals() as signals:  # SIGINT / SIGTERM: finish this step, checkpoint it, stop (train.interrupt)
        while step < o.max_steps:
            batch = _to(next(data), device)
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
                losses = ddp_model(batch)
            loss = losses["loss"]
            ok = torch.isfinite(loss.detach()).float()
            ok = _mean_over_ranks(ok, world)  # every rank skips together, or none does
            if ok.item() == 1.0:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, o.grad_clip or math.inf)
                ok = _mean_over_ranks(torch.isfinite(grad_norm).float(), world)
            if ok.item() != 1.0:  # NaN guard: skip this batch
                optimizer.zero_grad(set_to_none=True)
                nan_skipped += 1
                consecutive_nan += 1
                if consecutive_nan >= cfg.max_nan:
                    raise TrainingDiverged(f"loss or gradient not finite for {consecutive_nan} consecutive steps "
                                           f"at step {step} (epoch {epoch}); lower optim.lr or check the data")
                continue
            consecutive_nan = 0
            lrs = scheduler.get_last_lr()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            done_here += 1

            keys = ["loss"] + sorted(k for k in losses if k != "loss")  # the same order on every rank
            # the step's losses and this rank's stop flags, averaged over the ranks in one all-reduce
            flat = torch.cat([torch.stack([losses[k].detach().float() for k in keys]),
                              torch.tensor(signals.flags(), device=loss.device)])
            vals = _mean_over_ranks(flat, world).tolist()
            stop = agreed_signal(vals[len(keys):])
            now = time.perf_counter()
            last = {"step": step, "epoch": epoch, **dict(zip(keys, vals)), "lr": lrs[0],
                    "grad_norm": float(grad_norm), "seconds": now - t_prev, "nan_skipped": nan_skipped}
            if len(groups) > 1:
                last |= {f"lr/{g['name']}": lr for g, lr in zip(groups, lrs)}
            t_prev = now
            if master and (step % cfg.log_every == 0 or step == o.max_steps):
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                if tb is not None:
                    for k in keys + ["lr", "grad_norm"]:
                        tb.add_scalar(f"train/{k}", last[k], step)
            progress.update(step, last["loss"])
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == o.max_steps):
                evaluate()
            stopping = (stop_after is not None and done_here >= stop_after) or stop is not None
            if step % cfg.ckpt_every == 0 or step == o.max_steps or stopping:
                checkpoint()
            if stopping:
                break
    progress.close()

    if master and step == o.max_steps:
        plot_losses(metrics_path, out / "loss.png", title=task.title)
    if tb is not None:
        tb.close()
    if world > 1:
        torch.distributed.barrier()
    if stop is not None and step < o.max_steps:
        raise TrainingInterrupted(stop, step, written or checkpoint_path(out, step), out)
    return {"step": step, "epoch": epoch, "nan_skipped": nan_skipped, "store_version": stream.store_version,
            "last": last, "rank": rank, "world_size": world, "task": cfg.task}


def pretrain_prc(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
                 model_fn: Callable[[TrainConfig], nn.Module] | None = None,
                 stop_after: int | None = None, allow_config_change: bool = False) -> dict:
    """PRC pre-training (METHOD.md section 2): :func:`train` of a :class:`train.tasks.prc.PRCTask`.

    model_fn: builds the model from the config (default: ``PRCModel(cfg.prc)``); it must follow the batch
    contract of :mod:`train.data.prc` and return {"loss", ...}.
    """
    from train.tasks.prc import PRCTask

    return train(PRCTask(cfg, model_fn=model_fn), out_dir, resume=resume, stop_after=stop_after,
                 allow_config_change=allow_config_change)


def pretrain_rad(cfg: TrainConfig, out_dir: str | Path, resume: bool = True, stop_after: int | None = None,
                 allow_config_change: bool = False) -> dict:
    """RAD pre-training (METHOD.md section 3): :func:`train` of a :class:`train.tasks.rad.RADTask`."""
    from train.tasks.rad import RADTask

    return train(RADTask(cfg), out_dir, resume=resume, stop_after=stop_after, allow_config_change=allow_config_change)


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of a metrics file."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_losses(metrics_path: str | Path, png: str | Path, title: str = "training") -> None:
    """Every loss the task logged (all keys but :data:`BOOKKEEPING` and ``lr/*``) against the step into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return
    keys = [k for k in rows[-1] if k not in BOOKKEEPING and not k.startswith("lr/")
            and isinstance(rows[-1][k], (int, float))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    for key in keys:
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key, lw=1.2 if key == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def finetune(cfg: TrainConfig, out_dir: str | Path, resume: bool = True, stop_after: int | None = None,
             allow_config_change: bool = False) -> dict:
    """Fine-tuning (METHOD.md section 4): :func:`train` of a :class:`train.tasks.detect.DetectTask` (``cfg.task``
    ``det``) or :class:`train.tasks.segment.SegmentTask` (``seg``)."""
    return train(finetune_task(cfg), out_dir, resume=resume, stop_after=stop_after,
                 allow_config_change=allow_config_change)


def finetune_task(cfg: TrainConfig, nusc=None):
    """The fine-tuning task of ``cfg.task`` (``det`` or ``seg``); ``nusc``: an opened devkit of the dataroot."""
    from train.tasks.detect import DetectTask
    from train.tasks.segment import SegmentTask

    tasks = {"det": DetectTask, "seg": SegmentTask}
    if cfg.task not in tasks:
        raise ConfigError("task", cfg.task, "fine-tuning needs det or seg")
    return tasks[cfg.task](cfg, nusc=nusc)
