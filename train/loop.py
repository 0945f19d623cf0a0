"""PRC pre-training loop (METHOD.md section 2): ``pretrain_prc(cfg, out_dir)``, read top to bottom.

One process on CPU or GPU, or several through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU; initialised from the
environment when ``WORLD_SIZE`` > 1). Only rank 0 writes: ``OUT/metrics.jsonl`` (one JSON line per logged step:
step, epoch, loss, plrc, rapc, lr, grad_norm, seconds, nan_skipped), ``OUT/checkpoints/step-*.pt``
(:mod:`train.checkpoint`), ``OUT/config.json`` and, at the end, ``OUT/loss.png``.

Resume (the default): the latest checkpoint in ``OUT`` restores model, optimizer, scheduler, step, RNG states and
the data position (epoch and batches consumed in it; those batches are read again and dropped), after checking
that the store version is the one the checkpoint was trained on.
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

from shared.errors import CalicoError
from train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from train.config import TrainConfig
from train.data import PRCStream, collate_prc


class TrainingDiverged(CalicoError):
    """The loss (or the gradient norm) was not finite for ``max_nan`` consecutive steps."""


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


def pretrain_prc(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
                 model_fn: Callable[[TrainConfig], nn.Module] | None = None,
                 stop_after: int | None = None) -> dict:
    """See :func:`_pretrain_prc`; restores torch's deterministic-algorithms setting afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _pretrain_prc(cfg, out_dir, resume, model_fn, stop_after)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _pretrain_prc(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
                  model_fn: Callable[[TrainConfig], nn.Module] | None = None,
                  stop_after: int | None = None) -> dict:
    """Train PRC for ``cfg.optim.max_steps`` optimizer steps; returns a summary dict (steps, last metrics).

    model_fn: builds the model from the config (default: ``train.prc.PRCModel(cfg.prc)``); it must follow the
    batch contract of :mod:`train.data` and return {"loss", "plrc", "rapc"}.
    stop_after: stop (with a checkpoint) after this many steps *of this call* — a controlled interruption.
    """
    out = Path(out_dir)
    rank, world, _, device = _setup_distributed()
    master = rank == 0
    if master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.data.seed)  # the same initial weights on every rank (DDP also broadcasts them)

    # ---- data: this rank's share of the store version, batched by collate_prc
    d = cfg.data
    stream = PRCStream(d.store, d.version, n_rich=d.n_rich, n_less=d.n_less, seed=d.seed,
                       point_range=d.point_range, shuffle_scenes=d.shuffle_scenes, rank=rank, world_size=world,
                       global_batch=d.batch_size if d.global_batch else None)
    loader = DataLoader(stream, batch_size=d.batch_size, collate_fn=collate_prc, num_workers=d.num_workers,
                        generator=torch.Generator().manual_seed(d.seed))  # leaves the global torch RNG alone

    # ---- model, optimizer, schedule
    if model_fn is None:
        from train.prc import PRCModel

        def model_fn(c: TrainConfig) -> nn.Module:
            return PRCModel(c.prc)
    model = model_fn(cfg).to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, o.lr_factor)
    amp = cfg.amp and device.type == "cuda"

    # ---- resume
    step = epoch = batch_in_epoch = nan_skipped = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        stream.check_version(state["store_version"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        nan_skipped = state.get("nan_skipped", 0)
        set_rng_state(state["rng"])
    metrics_path = out / "metrics.jsonl"
    if master:  # drop lines logged after the checkpoint we resume from (they will be logged again)
        kept = [ln for ln in (metrics_path.read_text().splitlines() if metrics_path.exists() and ckpt else [])
                if json.loads(ln)["step"] <= step]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))

    def checkpoint() -> None:
        if master:
            save_checkpoint(out, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "nan_skipped": nan_skipped, "rng": rng_state(),
                "config": cfg.to_dict(), "store_version": stream.store_version})
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
    model.train()
    consecutive_nan, done_here, last = 0, 0, {}
    data = batches()
    t_prev = time.perf_counter()
    while step < o.max_steps:
        batch = _to(next(data), device)
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
            losses = ddp_model(batch)
        loss = losses["loss"]
        ok = torch.isfinite(loss.detach()).float()
        ok = _mean_over_ranks(ok, world)  # every rank skips together, or none does
        if ok.item() == 1.0:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or math.inf)
            ok = torch.isfinite(grad_norm).float()
        optimizer_step = ok.item() == 1.0
        if not optimizer_step:  # NaN guard: skip this batch
            optimizer.zero_grad(set_to_none=True)
            nan_skipped += 1
            consecutive_nan += 1
            if consecutive_nan >= cfg.max_nan:
                raise TrainingDiverged(f"loss or gradient not finite for {consecutive_nan} consecutive steps "
                                       f"at step {step} (epoch {epoch}); lower optim.lr or check the data")
            continue
        consecutive_nan = 0
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        done_here += 1

        vals = _mean_over_ranks(torch.stack([losses[k].detach().float() for k in ("loss", "plrc", "rapc")]), world)
        now = time.perf_counter()
        last = {"step": step, "epoch": epoch, "loss": vals[0].item(), "plrc": vals[1].item(),
                "rapc": vals[2].item(), "lr": lr, "grad_norm": float(grad_norm), "seconds": now - t_prev,
                "nan_skipped": nan_skipped}
        t_prev = now
        if master and (step % cfg.log_every == 0 or step == o.max_steps):
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
        stopping = stop_after is not None and done_here >= stop_after
        if step % cfg.ckpt_every == 0 or step == o.max_steps or stopping:
            checkpoint()
        if stopping:
            break

    if master and step == o.max_steps:
        plot_losses(metrics_path, out / "loss.png")
    if world > 1:
        torch.distributed.barrier()
    return {"step": step, "epoch": epoch, "nan_skipped": nan_skipped, "store_version": stream.store_version,
            "last": last, "rank": rank, "world_size": world}


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of a metrics file."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_losses(metrics_path: str | Path, png: str | Path) -> None:
    """Loss, PLRC and RAPC against the step (matplotlib Agg) into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    for key in ("loss", "plrc", "rapc"):
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1.2 if key == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("PRC pre-training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
