"""Two-stage training (DeSTSeg Sec. 3.4): stage 1 the denoising student, stage 2 the segmentation net.

Determinism: the batch of step ``s`` is a pure function of (seed, s) — which images (an epoch-wise
permutation), their rotation augmentation, Perlin mask, texture and opacity all come from
``numpy.random.default_rng([seed, s, j])`` — and torch's RNG (dropout of the optional torchvision ASPP) is re-seeded
from (seed, s) at every step.  So results do not depend on ``num_workers`` nor on ``prefetch`` (batches
made ahead by a background thread, :class:`PrefetchedBatches`), and resuming from a checkpoint at
step ``s`` reaches the same final weights as an uninterrupted run with the same seed.

Precision: ``cfg.amp`` resolved for the device (:func:`destseg_lib.precision.resolve_precision`),
printed at the start, stored in every checkpoint (``"precision"``: "float32" or "bf16") and in
:attr:`TrainResult.precision`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_torch_save, make_checkpoint, read_checkpoint, remove_stale_temporaries
from .config import DeSTSegConfig
from .data import DatasetSplit, TrainImages, rotate_augment
from .data_checks import validate_split
from .errors import ConfigError, TrainingDivergedError
from .files import atomic_write_text
from .losses import cosine_loss, segmentation_loss
from .models import DeSTSeg, cosine_distance_maps, segmentation_input
from .precision import autocast, check_precision, describe_precision, resolve_precision
from .synthesis import AnomalySynthesizer
from .textures import make_texture_source

# Fields that may differ between an interrupted run and its resumption: engineering ones, and those of
# the evaluation only (which test images are held out for the thresholds and how they are chosen).
_ENGINEERING = {"num_workers", "checkpoint_every", "cache_images", "amp", "prefetch", "channels_last"}
# A label, not a setting: the preset a config started from (the fields say what it is now).
_LABELS = {"preset"}
_EVALUATION_ONLY = {"val_fraction", "val_seed", "threshold_rule", "target_recall", "eval_size", "baseline",
                    "baseline_bank_size", "baseline_size"}
_RESUME_FREE = _ENGINEERING | _EVALUATION_ONLY


def config_differences(saved: dict, cfg: DeSTSegConfig, evaluation: bool = False) -> list[str]:
    """Fields in which a saved run's config differs from ``cfg``: those that change the training
    (engineering fields and evaluation-only fields excepted), or with ``evaluation=True`` those that
    change the training or the evaluation (for reusing a run's metrics)."""
    free = (_ENGINEERING if evaluation else _RESUME_FREE) | _LABELS
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


def check_same_dataset(ckpt: dict, dataset: str, path) -> None:
    """A :class:`ConfigError` when the checkpoint at ``path`` was trained on another dataset than
    ``dataset`` (checkpoints older than the ``dataset`` entry are not checked)."""
    trained_on = ckpt.get("dataset")
    if trained_on and dataset and trained_on != dataset:
        raise ConfigError(f"{path} was trained on {trained_on}, not on {dataset}: pass --retrain (it is "
                          "replaced) or another --out for a model of this dataset")


class PrefetchedBatches:
    """``dataset[i]`` for ``i`` in ``indices``, in that order, each made up to ``ahead`` items before
    it is asked for, by one background thread, while the caller runs the current training step:
    synthesis (Perlin masks, texture blends, rotations) off the step's critical path.

    The items and their order are exactly those of ``(dataset[i] for i in indices)``: an item of
    :class:`SyntheticBatches` is a pure function of (seed, index), its only state being caches of
    decoded images and textures, which hold the same values whichever thread fills them.  An
    exception raised making an item is re-raised by the iteration at that item.  The thread stops
    when iteration ends, when it is abandoned by an exception (``KeyboardInterrupt`` included:
    :meth:`close`, also called by ``with``), and it is a daemon, so it never holds the interpreter
    at exit.  ``pin_memory=True`` pins each tensor (for CUDA) in the thread too.
    """

    _END = object()

    def __init__(self, dataset, indices, ahead: int = 1, pin_memory: bool = False):
        if ahead < 1:
            raise ValueError(f"ahead={ahead}: at least one item ahead (use the dataset itself for none)")
        self.dataset, self.indices, self.ahead, self.pin_memory = dataset, indices, int(ahead), pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=self.ahead)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _put(self, obj) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        # one intra-op thread for this thread's own torch ops (stacking, conversions): the cores
        # belong to the training step (OpenMP keeps this setting per thread)
        torch.set_num_threads(1)
        try:
            for i in self.indices:
                if self._stop.is_set():
                    return
                item = self.dataset[i]
                if self.pin_memory:
                    item = tuple(t.pin_memory() for t in item)
                if not self._put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put((False, e))
            return
        self._put((True, self._END))

    def __iter__(self):
        if self._thread is not None:
            raise RuntimeError("PrefetchedBatches is iterated once; make a new one to start again")
        self._thread = threading.Thread(target=self._produce, name="destseg-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    ok, item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        raise RuntimeError("the prefetching thread ended without a batch") from None
                    continue
                if not ok:
                    raise item
                if item is self._END:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread (it finishes the item it is making, at most) and drop what it made."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` converted in place to channels-last (NHWC) weights (``cfg.channels_last``); feed it
    channels-last inputs (:func:`channels_last_batch`).  Same maths, different memory order."""
    return model.to(memory_format=torch.channels_last)


def channels_last_batch(batch):
    """A training batch (clean, anomalous, mask) with 4-D tensors in channels-last order."""
    return tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in batch)


def batch_loader(batches, indices, num_workers: int = 0, prefetch: int = 0, pin_memory: bool = False):
    """The training batches ``batches[i]`` for ``i`` in ``indices``, in order: a DataLoader with
    ``num_workers`` processes (which prefetch themselves), else :class:`PrefetchedBatches` with
    ``prefetch`` batches ahead, else (``prefetch=0``) a DataLoader in this process, made when asked
    for (the kit before ``prefetch`` existed).  The same tensors every way."""
    if num_workers == 0 and prefetch > 0:
        return PrefetchedBatches(batches, indices, prefetch, pin_memory)
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=indices, num_workers=num_workers,
                                       persistent_workers=False, pin_memory=pin_memory)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 3, step]).generate_state(1)[0])


def build_model(cfg: DeSTSegConfig) -> DeSTSeg:
    """The model with seeded initial weights; torch's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return DeSTSeg.from_config(cfg)


def make_optimizers(model: DeSTSeg, cfg: DeSTSegConfig):
    """The paper's: SGD (momentum 0.9, wd 1e-4): lr 0.4 student; 0.1 seg residual blocks (and
    PFADSeg's adaptive fusion in front of them), 0.01 seg head (ASPP and convs).  ``optimizer="adamw"``
    (a lever, not the paper's): AdamW with the same groups, rates and weight decay.
    The second optimiser is None for a DeST-only model (no segmentation net)."""
    if cfg.optimizer == "adamw":
        def make(groups, lr):
            return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    else:
        def make(groups, lr):
            return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    student = make(model.student.parameters(), cfg.lr_student)
    if model.segmentation is None:
        return student, None
    net = model.segmentation
    front = list(net.res.parameters()) + (list(net.fusion.parameters()) if net.fusion is not None else [])
    seg = make([{"params": front, "lr": cfg.lr_seg_res},  # PFADSeg's fusion with the res blocks
                {"params": list(net.head.parameters()), "lr": cfg.lr_seg_head}], cfg.lr_seg_res)
    return student, seg


def lr_factor(cfg: DeSTSegConfig, step: int) -> float:
    """The multiple of its stage's base rates that training step ``step`` (0-based, over both stages)
    uses: 1 throughout with the paper's ``lr_schedule="constant"`` and ``warmup_steps=0``.  Each stage
    has its own schedule: ``warmup_steps`` of linear warm-up ((k + 1) / warmup at its k-th step), then
    "cosine" decays from 1 towards 0 over the stage's remaining steps (0.5 (1 + cos(pi t)), t the
    share of them done).  A function of the step alone, so a resumed run continues it exactly."""
    stage = stage_of(cfg, step)
    k = step if stage == 1 else step - cfg.student_steps
    length = cfg.student_steps if stage == 1 else cfg.seg_steps
    warmup = min(cfg.warmup_steps, length)
    if k < warmup:
        return (k + 1) / warmup
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (k - warmup) / max(1, length - warmup)))
    return 1.0


def _set_rates(optimizer, base_rates: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_rates):
        group["lr"] = base * factor


def stage_of(cfg: DeSTSegConfig, step: int) -> int:
    """1 for the first ``student_steps`` steps (denoising student), 2 after (segmentation net)."""
    return 1 if step < cfg.student_steps else 2


def _diverged(what: str, value, step, stage: int) -> TrainingDivergedError:
    lr = "lr_student" if stage == 1 else "lr_seg_res / lr_seg_head"
    return TrainingDivergedError(f"training diverged: {what} became {value} at step {step} (stage {stage}); "
                                 f"lower {lr} (e.g. --set {lr.split(' ')[0]}=...) or check the input images")


def training_step(model: DeSTSeg, batch, cfg: DeSTSegConfig, stage: int, optimizer=None,
                  precision: str = "float32", step: int | None = None) -> dict:
    """One training step of stage 1 or 2 (Sec. 3.4) on ``batch`` = (clean, anomalous, mask), already
    on the model's device.  Sets the train/eval modes, computes the loss, raises
    :class:`~destseg_lib.errors.TrainingDivergedError` if it is not finite, and — when an optimiser
    is given — back-propagates and steps.  Returns the logged row (losses as floats) and the loss
    tensor under ``"loss_tensor"``.

    Stage 1 (Eq. 3-4): the teacher sees the clean image, the student the corrupted one
    (``cfg.denoising``; Table 4 without "den": the clean one).  Stage 2 (Eq. 2, 5-7): teacher and
    student, frozen, both see the corrupted image; the segmentation net learns the mask.

    ``precision``: ``"float32"`` (the paper's) or ``"bf16"`` (autocast around the networks'
    forward passes; :mod:`destseg_lib.precision`; ``True`` / ``False`` are read as bf16 / float32).
    Either way the features are cast to float32 before the cosine maps and the segmentation input
    are formed, the segmentation output before the focal and L1 losses, and the weights and the
    optimiser state stay float32.
    """
    clean, aug, mask = batch
    precision, device_type = check_precision(precision), clean.device.type

    def amp():
        return autocast(precision, device_type)
    model.student.train(stage == 1)
    if model.segmentation is not None:
        model.segmentation.train(stage == 2)
    if stage == 1:
        with amp():
            with torch.no_grad():
                t_feats = model.teacher(model.normalize(clean))
            s_feats = model.student_features(model.normalize(aug if cfg.denoising else clean))
        maps = cosine_distance_maps([f.float() for f in t_feats], [f.float() for f in s_feats])
    else:
        with torch.no_grad(), amp():
            t_feats, s_feats = model.features(aug)
        seg_in = segmentation_input([f.float() for f in t_feats], [f.float() for f in s_feats], cfg.seg_input)
        with amp():
            probs = model.segmentation(seg_in)
        probs = probs.float()
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
    precision: str = "float32"  # what training ran in (cfg.amp resolved for the device)


def _grayscale(cfg: DeSTSegConfig, split: DatasetSplit) -> bool:
    return split.grayscale if cfg.grayscale_textures is None else bool(cfg.grayscale_textures)


def _write_log(history: list[dict], out_dir: Path) -> None:
    if not history:
        return
    keys = sorted({k for h in history for k in h},
                  key=["step", "stage", "loss", "focal", "l1", "lr", "seconds", "data_wait"].index)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(out_dir / "train_log.csv", buf.getvalue())


def train_model(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", resume: bool = False,
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
    out_dir = Path(out_dir)
    new_folders = [f for f in (out_dir, out_dir / "checkpoints") if not f.exists()]
    try:
        return training_loop(cfg, split, out_dir, device, resume, progress, stop_after, callback)
    except BaseException:  # a run that fails before its first checkpoint leaves no empty folders
        for folder in reversed(new_folders):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
        raise


def training_loop(cfg, split, out_dir, device, resume, progress, stop_after, callback) -> TrainResult:
    """The loop around :func:`training_step` (what :func:`train_model` runs): build or resume the
    model and its optimisers, make the synthetic batches of each step, run the step, log it, write
    checkpoints atomically every ``checkpoint_every`` steps, and the final ``model.pt``."""
    cfg.validate()
    validate_split(split, require_test=False)  # every image and mask, before any training step
    device = torch.device(device)
    out_dir = Path(out_dir)  # folders are made by the first write: a run that fails early leaves none
    last = out_dir / "checkpoints" / "last.pt"

    model = build_model(cfg).to(device)
    if cfg.channels_last:  # before the optimisers: their momentum buffers take the weights' layout
        model = to_channels_last(model)
    opt_student, opt_seg = make_optimizers(model, cfg)
    # each group's own rate (lr_factor scales it per step; a checkpoint's optimiser holds the last one)
    base_rates = {id(o): [g["lr"] for g in o.param_groups] for o in (opt_student, opt_seg) if o is not None}
    start, history = 0, []
    if resume and last.exists():
        ckpt = read_checkpoint(last)
        diff = config_differences(ckpt["config"], cfg)
        if diff:
            raise ValueError(f"cannot resume from {last}: config differs in {diff}; use the same "
                             "config or a new out_dir")
        check_same_dataset(ckpt, split.name, last)
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
    loader = batch_loader(batches, range(start, end), cfg.num_workers, cfg.prefetch, device.type == "cuda")
    precision = resolve_precision(cfg.amp, device)
    if progress:
        print(describe_precision(cfg.amp, device), flush=True)

    def save(step: int, path: Path, optimizers: bool = True) -> Path:
        """Resumable checkpoints carry the optimisers' momentum (as large as the weights); the final
        model does not."""
        extra = {"optim_student": opt_student.state_dict(),
                 "optim_seg": opt_seg.state_dict() if opt_seg is not None else None} if optimizers else {}
        return atomic_torch_save(make_checkpoint(
            model, cfg, finished=not optimizers, dataset=split.name, step=step, history=history,
            grayscale_textures=grayscale, precision=precision, **extra), path)

    t0 = time.perf_counter()
    bar = tqdm(total=end - start, desc="train", disable=not progress, unit="step")
    step = start
    ready = time.perf_counter()
    try:
        for step, batch in enumerate(loader, start=start):
            # seconds the model waited for this batch (synthesis in this process with prefetch=0, or
            # a prefetching thread / workers that fell behind): the "data_wait" column of train_log.csv
            data_wait = time.perf_counter() - ready
            torch.manual_seed(_step_seed(cfg.seed, step))
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            if cfg.channels_last:
                batch = channels_last_batch(batch)
            stage = stage_of(cfg, step)
            optimizer = opt_student if stage == 1 else opt_seg
            factor = lr_factor(cfg, step)
            _set_rates(optimizer, base_rates[id(optimizer)], factor)
            row = training_step(model, batch, cfg, stage, optimizer, precision, step)
            del row["loss_tensor"]
            row["lr"] = float(f"{optimizer.param_groups[0]['lr']:.6g}")
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
    finally:  # the prefetching thread stops with the loop, also on an exception or Ctrl-C
        if isinstance(loader, PrefetchedBatches):
            loader.close()
    bar.close()
    seconds = time.perf_counter() - t0
    final = last
    if end == cfg.total_steps:
        final = save(cfg.total_steps, out_dir / "model.pt", optimizers=False)
        _write_log(history, out_dir)
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_record(), indent=2) + "\n")
    model.eval()
    return TrainResult(model, history, final, out_dir, seconds, precision)
