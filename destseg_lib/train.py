"""Two-stage training (DeSTSeg Sec. 3.4): stage 1 the denoising student, stage 2 the segmentation net.

Determinism: the batch of step ``s`` is a pure function of (seed, s) — which images (an epoch-wise
permutation), their rotation augmentation, Perlin mask, texture and opacity all come from
``numpy.random.default_rng([seed, s, j])`` — and torch's RNG (dropout of the optional torchvision ASPP) is re-seeded
from (seed, s) at every step.  So results do not depend on ``num_workers``, and resuming from a
checkpoint at step ``s`` reaches the same final weights as an uninterrupted run with the same seed.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_torch_save, make_checkpoint, read_checkpoint, remove_stale_temporaries
from .config import DeSTSegConfig
from .data import DatasetSplit, TrainImages, rotate_augment, validate_split
from .errors import TrainingDivergedError
from .losses import cosine_loss, segmentation_loss
from .models import DeSTSeg, cosine_distance_maps, segmentation_input
from .synthesis import AnomalySynthesizer
from .textures import make_texture_source

# Fields that may differ between an interrupted run and its resumption: engineering ones, and those of
# the evaluation only (which test images are held out for the thresholds and how they are chosen).
_ENGINEERING = {"num_workers", "checkpoint_every", "cache_images", "amp"}
_EVALUATION_ONLY = {"val_fraction", "val_seed", "threshold_rule", "target_recall"}
_RESUME_FREE = _ENGINEERING | _EVALUATION_ONLY


def config_differences(saved: dict, cfg: DeSTSegConfig, evaluation: bool = False) -> list[str]:
    """Fields in which a saved run's config differs from ``cfg``: those that change the training
    (engineering fields and evaluation-only fields excepted), or with ``evaluation=True`` those that
    change the training or the evaluation (for reusing a run's metrics)."""
    free = _ENGINEERING if evaluation else _RESUME_FREE
    try:  # fields added since the run was saved take the values it was trained with (from_dict)
        saved = DeSTSegConfig.from_dict(saved).to_dict()
    except Exception:  # a saved config this kit cannot read: compare it as it is
        pass
    return sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v and k not in free)


class SyntheticBatches(torch.utils.data.Dataset):
    """Item ``s`` is the whole batch of training step ``s``: (clean, anomalous, mask), each B x C x H x W.

    Square inputs: the batch is B consecutive images of per-epoch seeded permutations.  Images of
    several sizes (``aspect="keep"``): the first image comes from the permutation as before and the
    other B - 1 are drawn (seeded, without replacement while the group is large enough) from the
    images of its size, so a batch stacks; every image is still drawn B/n times per step on average.
    """

    def __init__(self, images: TrainImages, synthesizer: AnomalySynthesizer, batch_size: int, seed: int,
                 rotation: str = "none", rotation_fill: str = "grey"):
        if len(images) == 0:
            raise ValueError("no training images: the train split is empty")
        self.images, self.synth, self.batch_size = images, synthesizer, batch_size
        self.seed, self.rotation, self.rotation_fill = seed, rotation, rotation_fill
        groups = images.size_groups() if hasattr(images, "size_groups") else {None: list(range(len(images)))}
        self._groups = list(groups.values()) if len(groups) > 1 else None
        self._group_of = {i: g for g in (self._groups or []) for i in g}
        if self._groups is not None and rotation == "quarter":
            raise ValueError("rotation='quarter' turns non-square images on their side: use aspect='square' "
                             "for this category (or a dataset rotation policy of 'small' / 'none')")

    def __len__(self) -> int:  # any step index is valid; the sampler decides which are drawn
        return 2 ** 31 - 1

    def _permuted(self, pos: int) -> int:
        n = len(self.images)
        perm = np.random.default_rng([self.seed, 1, pos // n]).permutation(n)
        return int(perm[pos % n])

    def indices(self, step: int) -> list[int]:
        """Images of step ``step`` (see the class docstring)."""
        if self._groups is None:
            return [self._permuted(step * self.batch_size + j) for j in range(self.batch_size)]
        first = self._permuted(step * self.batch_size)
        group = [i for i in self._group_of[first] if i != first]
        if not group:
            return [first] * self.batch_size
        rng = np.random.default_rng([self.seed, 4, step])
        rest = rng.choice(group, size=self.batch_size - 1, replace=len(group) < self.batch_size - 1)
        return [first] + [int(i) for i in rest]

    def __getitem__(self, step: int):
        clean, aug, masks = [], [], []
        for j, i in enumerate(self.indices(step)):
            rng = np.random.default_rng([self.seed, 2, step, j])
            img = rotate_augment(self.images[i], self.rotation, rng, self.rotation_fill)
            hwc = img.permute(1, 2, 0).numpy().astype(np.float32)
            a, m = self.synth(hwc, rng)
            clean.append(img)
            aug.append(torch.from_numpy(a).permute(2, 0, 1))
            masks.append(torch.from_numpy(m)[None])
        return torch.stack(clean), torch.stack(aug), torch.stack(masks)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 3, step]).generate_state(1)[0])


def build_model(cfg: DeSTSegConfig) -> DeSTSeg:
    """The model with seeded initial weights; torch's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return DeSTSeg.from_config(cfg)


def make_optimizers(model: DeSTSeg, cfg: DeSTSegConfig):
    """SGD (momentum 0.9, wd 1e-4): lr 0.4 student; 0.1 seg residual blocks (and PFADSeg's adaptive
    fusion in front of them), 0.01 seg head (ASPP and convs).
    The second optimiser is None for a DeST-only model (no segmentation net)."""
    kw = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    student = torch.optim.SGD(model.student.parameters(), lr=cfg.lr_student, **kw)
    if model.segmentation is None:
        return student, None
    net = model.segmentation
    front = list(net.res.parameters()) + (list(net.fusion.parameters()) if net.fusion is not None else [])
    seg = torch.optim.SGD([{"params": front, "lr": cfg.lr_seg_res},  # PFADSeg's fusion with the res blocks
                           {"params": net.head.parameters(), "lr": cfg.lr_seg_head}], **kw)
    return student, seg


def stage_of(cfg: DeSTSegConfig, step: int) -> int:
    """1 for the first ``student_steps`` steps (denoising student), 2 after (segmentation net)."""
    return 1 if step < cfg.student_steps else 2


def _diverged(what: str, value, step, stage: int) -> TrainingDivergedError:
    lr = "lr_student" if stage == 1 else "lr_seg_res / lr_seg_head"
    return TrainingDivergedError(f"training diverged: {what} became {value} at step {step} (stage {stage}); "
                                 f"lower {lr} (e.g. --set {lr.split(' ')[0]}=...) or check the input images")


def training_step(model: DeSTSeg, batch, cfg: DeSTSegConfig, stage: int, optimizer=None,
                  use_amp: bool = False, step: int | None = None) -> dict:
    """One training step of stage 1 or 2 (Sec. 3.4) on ``batch`` = (clean, anomalous, mask), already
    on the model's device.  Sets the train/eval modes, computes the loss, raises
    :class:`~destseg_lib.errors.TrainingDivergedError` if it is not finite, and — when an optimiser
    is given — back-propagates and steps.  Returns the logged row (losses as floats) and the loss
    tensor under ``"loss_tensor"``.

    Stage 1 (Eq. 3-4): the teacher sees the clean image, the student the corrupted one
    (``cfg.denoising``; Table 4 without "den": the clean one).  Stage 2 (Eq. 2, 5-7): teacher and
    student, frozen, both see the corrupted image; the segmentation net learns the mask.
    """
    clean, aug, mask = batch
    device_type = clean.device.type
    model.student.train(stage == 1)
    if model.segmentation is not None:
        model.segmentation.train(stage == 2)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_amp):
        if stage == 1:
            with torch.no_grad():
                t_feats = model.teacher(model.normalize(clean))
            s_feats = model.student_features(model.normalize(aug if cfg.denoising else clean))
            maps = [m.float() for m in cosine_distance_maps(t_feats, s_feats)]
        else:
            with torch.no_grad():
                t_feats, s_feats = model.features(aug)
            probs = model.segmentation(segmentation_input(t_feats, s_feats, cfg.seg_input)).float()
    if stage == 1:
        loss = cosine_loss(maps)
        row = {"step": step, "stage": 1, "loss": loss.item()}
    else:
        if not torch.isfinite(probs).all():  # BCE would fail with "input should be between 0 and 1"
            raise _diverged("the segmentation output", "NaN", step, stage)
        parts = segmentation_loss(probs, mask, cfg.focal_gamma, l1=cfg.l1_loss)
        loss = parts["loss"]
        row = {"step": step, "stage": 2, "loss": loss.item(), "focal": parts["focal"].item(),
               "l1": parts["l1"].item()}
    if not math.isfinite(row["loss"]):
        raise _diverged("the loss", row["loss"], step, stage)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    row["loss_tensor"] = loss
    return row


@dataclass
class TrainResult:
    model: DeSTSeg
    history: list[dict]
    checkpoint: Path
    out_dir: Path
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _grayscale(cfg: DeSTSegConfig, split: DatasetSplit) -> bool:
    return split.grayscale if cfg.grayscale_textures is None else bool(cfg.grayscale_textures)


def _write_log(history: list[dict], out_dir: Path) -> None:
    if not history:
        return
    keys = sorted({k for h in history for k in h},
                  key=["step", "stage", "loss", "focal", "l1", "seconds", "data_wait"].index)
    tmp = out_dir / "train_log.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    tmp.replace(out_dir / "train_log.csv")


def train(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", resume: bool = False,
          progress: bool = True, stop_after: int | None = None, callback=None) -> TrainResult:
    """Train DeSTSeg on ``split.train`` with synthetic anomalies; write checkpoints and logs to ``out_dir``.

    * ``out_dir/checkpoints/last.pt`` — every ``cfg.checkpoint_every`` steps and at the end of each
      stage (atomic); ``resume=True`` continues from it.
    * ``out_dir/model.pt`` — the final model; ``out_dir/train_log.csv`` — one row per step (losses,
      elapsed seconds, and ``data_wait``: the seconds the step waited for its batch).
    * ``stop_after`` — stop (after checkpointing) once this many steps are done: for tests, for
      splitting a long run into sessions, and for the notebooks (stage 1 in one, stage 2 in the next).
    * ``callback(row)`` — called after every step with the logged row (step, stage, losses,
      seconds), e.g. to draw a live loss curve.
    """
    remove_stale_temporaries(out_dir)  # e.g. checkpoints/last.pt.<random>.tmp of a write that was killed
    cfg.validate()
    validate_split(split, require_test=False)  # every image and mask, before any training step
    device = torch.device(device)
    out_dir = Path(out_dir)
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    last = out_dir / "checkpoints" / "last.pt"

    model = build_model(cfg).to(device)
    opt_student, opt_seg = make_optimizers(model, cfg)
    start, history = 0, []
    if resume and last.exists():
        ckpt = read_checkpoint(last)
        diff = config_differences(ckpt["config"], cfg)
        if diff:
            raise ValueError(f"cannot resume from {last}: config differs in {diff}; use the same "
                             "config or a new out_dir")
        model.load_state_dict(ckpt["model"])
        opt_student.load_state_dict(ckpt["optim_student"])
        if opt_seg is not None:
            opt_seg.load_state_dict(ckpt["optim_seg"])
        start, history = ckpt["step"], ckpt["history"]

    grayscale = _grayscale(cfg, split)
    textures = make_texture_source(cfg.texture_dir, augment=cfg.texture_augment, resize=cfg.resize)
    synth = AnomalySynthesizer.from_config(cfg, textures, grayscale)
    images = TrainImages.for_config(split.train, cfg)
    batches = SyntheticBatches(images, synth, cfg.batch_size, cfg.seed, split.rotation, cfg.rotation_fill)
    end = cfg.total_steps if stop_after is None else min(cfg.total_steps, stop_after)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, end),
                                         num_workers=cfg.num_workers,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    use_amp = cfg.amp and device.type == "cuda"

    def save(step: int, path: Path, optimizers: bool = True) -> Path:
        """Resumable checkpoints carry the optimisers' momentum (as large as the weights); the final
        model does not."""
        extra = {"optim_student": opt_student.state_dict(),
                 "optim_seg": opt_seg.state_dict() if opt_seg is not None else None} if optimizers else {}
        return atomic_torch_save(make_checkpoint(
            model, cfg, step=step, history=history, dataset=split.name, grayscale_textures=grayscale,
            **extra), path)

    t0 = time.perf_counter()
    bar = tqdm(total=end - start, desc="train", disable=not progress, unit="step")
    step = start
    ready = time.perf_counter()
    for step, batch in enumerate(loader, start=start):
        # seconds the model waited for this batch (synthesis in the main process with num_workers=0,
        # or workers that fell behind): the "data_wait" column of train_log.csv
        data_wait = time.perf_counter() - ready
        torch.manual_seed(_step_seed(cfg.seed, step))
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        stage = stage_of(cfg, step)
        row = training_step(model, batch, cfg, stage, opt_student if stage == 1 else opt_seg, use_amp, step)
        del row["loss_tensor"]
        row["seconds"] = round(time.perf_counter() - t0, 3)
        row["data_wait"] = round(data_wait, 4)
        history.append(row)
        if callback is not None:
            callback(row)
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{row['loss']:.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done in (cfg.student_steps, end):
            save(done, last)
            _write_log(history, out_dir)
        ready = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - t0
    final = last
    if end == cfg.total_steps:
        final = save(cfg.total_steps, out_dir / "model.pt", optimizers=False)
        _write_log(history, out_dir)
        with open(out_dir / "config.json", "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
    model.eval()
    return TrainResult(model, history, final, out_dir, seconds)
