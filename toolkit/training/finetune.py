"""Self-supervised fine-tuning on the DefectMaker 7-class proxy task (REB, seed 004 §4).

    source images -> DefectMaker (7 variants each: normal + 6 defects; class-balanced batches)
                  -> backbone up to its deepest stage (the spec's layer4) -> global average pool
                  -> MLP head C -> 512 -> 256 -> 7 (BN + ReLU) -> sigmoid one-vs-all BCE (spec P6)
    SGD (momentum 0.9, wd 3e-5), CosineAnnealingWarmRestarts(T_0 = int(1.1 x updates), eta_min 1e-5)
    stepped once per update (spec P8); backbone frozen in eval mode for the first updates, then every
    layer, BatchNorm included, trains (spec P9).

Only the backbone's weights are kept: the caller copies them into the truncated extractor that the
scoring graph uses (the head and the stages after the tapped ones are dropped, spec §4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.defectmaker import NUM_CLASSES, DefectMaker


@dataclass(frozen=True)
class FinetunePreset:
    name: str
    updates: int  # optimiser updates
    sources_per_pass: int  # source images per forward pass; each gives 7 images
    accumulation: int  # forward passes per update (gradient accumulation, loss / accumulation)
    frozen_updates: int  # updates 1..frozen_updates train the head only (backbone in eval mode)
    learning_rate: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 3e-5
    eta_min: float = 1e-5
    restart_factor: float = 1.1  # T_0 = int(updates * restart_factor): lr never restarts (spec P8)
    # Keep the backbone's BatchNorm running statistics (ImageNet's) for the whole run; weights and BN affine
    # parameters still train. For small batches only: 21-image batches re-estimate the statistics from a
    # few noisy DefectMaker mixes. Measured (bench/results/reb_ablation.md, seed 0): with live statistics
    # REB scored 0.891 image AUROC, with them frozen 0.944 (ImageNet PatchCore: 0.941).
    freeze_batchnorm_stats: bool = False
    # Parameters up to and including the first tapped stage (e.g. tf_efficientnet_lite0's blocks.0-2, the
    # stride-8 features) never train: only the stages between the taps and after them do (see prepare_backbone
    # in methods/reb.py, which names the stage).
    freeze_through_first_tap: bool = False
    backbone_lr_scale: float = 1.0  # the backbone's learning rate = learning_rate x this; the head's is learning_rate

    @property
    def images_per_update(self) -> int:
        return self.sources_per_pass * NUM_CLASSES * self.accumulation


PRESETS: dict[str, FinetunePreset] = {
    # spec §4 / §11 for ResNet18: 300 updates of 48 x 7 x 3 = 1008 images, head-only for updates 1-39
    "paper": FinetunePreset("paper", updates=300, sources_per_pass=48, accumulation=3, frozen_updates=39),
    # Sized for the 10-minute budget on 2 CPU cores with tf_efficientnet_lite0 at 256 px: 24 updates of
    # 3 x 7 = 21 images (504 in all, 0.2% of the paper's), the first 6 head-only (forward only through the
    # backbone). Measured on this shared machine: see bench/results/reb_ablation.md. With 48x smaller
    # batches than the paper, lr 0.03 would move the ImageNet features far in a few noisy steps; 0.01 is a
    # compromise, not tuned.
    "fast": FinetunePreset("fast", updates=24, sources_per_pass=3, accumulation=1, frozen_updates=6,
                           learning_rate=0.01, freeze_batchnorm_stats=True),
}


def one_vs_all_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid BCE over all B x C logits against one-hot labels, sigma clamped to [1e-6, 1 - 1e-6]."""
    target = nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    prob = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    return -(target * prob.log() + (1 - target) * (1 - prob).log()).mean()


class ProxyClassifier(nn.Module):
    """backbone (returns stage maps; the last one is used) -> GAP -> MLP -> [B, 7] logits (spec §4)."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(channels, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )

    def forward(self, images: torch.Tensor, backbone_frozen: bool = False) -> torch.Tensor:
        if backbone_frozen:
            with torch.no_grad():
                deepest = self.backbone(images)[-1]
        else:
            deepest = self.backbone(images)[-1]
        return self.head(deepest.mean(dim=(2, 3)))


class ProxyTrainer:
    """Optimiser, schedule and the frozen warm-up of one fine-tuning run."""

    def __init__(self, classifier: ProxyClassifier, preset: FinetunePreset, device: torch.device):
        self.classifier, self.preset, self.device = classifier.to(device), preset, device
        groups = [{"params": [p for p in classifier.head.parameters()], "lr": preset.learning_rate},
                  {"params": [p for p in classifier.backbone.parameters() if p.requires_grad],
                   "lr": preset.learning_rate * preset.backbone_lr_scale}]
        self.optimiser = torch.optim.SGD([g for g in groups if g["params"]], lr=preset.learning_rate,
                                         momentum=preset.momentum, weight_decay=preset.weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            self.optimiser, T_0=max(1, int(preset.updates * preset.restart_factor)), T_mult=1,
            eta_min=preset.eta_min)
        self.updates_done = 0

    def step(self, passes: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """One update over `passes` [(images [B,3,H,W] normalised, labels [B])] -> (loss, accuracy)."""
        frozen = self.updates_done < self.preset.frozen_updates
        self.classifier.train()
        if frozen:  # spec P9: BN statistics stay fixed while only the head trains
            self.classifier.backbone.eval()
        elif self.preset.freeze_batchnorm_stats:
            for module in self.classifier.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        self.optimiser.zero_grad(set_to_none=True)
        total_loss, correct, count = 0.0, 0, 0
        for images, labels in passes:
            images, labels = images.to(self.device), labels.to(self.device)
            logits = self.classifier(images, backbone_frozen=frozen)
            loss = one_vs_all_bce(logits, labels) / len(passes)
            loss.backward()
            total_loss += float(loss.detach())
            correct += int((logits.argmax(1) == labels).sum())
            count += int(labels.numel())
        self.optimiser.step()
        self.schedule.step()
        self.updates_done += 1
        return total_loss, correct / max(count, 1)


@dataclass
class FinetuneReport:
    preset: str
    updates: int
    images_per_update: int
    final_loss: float
    final_accuracy: float  # proxy-task accuracy on the last update's batch (argmax of the 7 logits)
    device: str
    seconds: float
    losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"preset": self.preset, "updates": self.updates, "images_per_update": self.images_per_update,
                "final_loss": round(self.final_loss, 5), "final_accuracy": round(self.final_accuracy, 4),
                "first_loss": round(self.losses[0], 5) if self.losses else None,
                "device": self.device, "seconds": round(self.seconds, 1)}


def _source_stream(num_images: int, rng: np.random.Generator):
    """Endless shuffled passes over the image indices (the official code cycles a shuffled list)."""
    while True:
        yield from rng.permutation(num_images).tolist()


def resolve_preset(preset: FinetunePreset | str) -> FinetunePreset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown fine-tuning preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    return preset


def freeze_through(model: nn.Module, module_name: str) -> list[str]:
    """Stop gradients for every parameter registered before or inside `module_name` (registration order is
    forward order for timm's CNNs) -> the frozen parameter names."""
    frozen, inside = [], False
    for name, parameter in model.named_parameters():
        in_module = name.startswith(module_name + ".")
        if inside and not in_module:
            break
        inside = inside or in_module
        parameter.requires_grad_(False)
        frozen.append(name)
    if not inside:
        raise ConfigError(f"fine-tuning: the backbone has no module {module_name!r} to freeze through")
    return frozen


def finetune_backbone(deep_backbone: nn.Module, channels: int, frames: np.ndarray,
                      normalise: Callable[[torch.Tensor], torch.Tensor], preset: FinetunePreset | str,
                      seed: int = 0, device: str | None = None,
                      progress: Callable[[int, int, str], None] | None = None,
                      first_tap: str | None = None) -> FinetuneReport:
    """Fine-tune `deep_backbone` in place on DefectMaker batches made from `frames`.

    frames: uint8 [N, S, S, 3] training images at the model size; normalise: uint8 NHWC tensor ->
    normalised float NCHW (the artefact's preprocessing). progress(update, updates, "loss 0.123").
    first_tap: the module name of the scoring graph's first tapped stage (presets that freeze through it).
    """
    preset = resolve_preset(preset)
    if preset.freeze_through_first_tap:
        if first_tap is None:
            raise ConfigError(f"fine-tuning preset {preset.name!r} needs the first tapped stage's module name")
        freeze_through(deep_backbone.model, first_tap)
    if len(frames) < 1:
        raise ConfigError("fine-tuning needs at least one training image")
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rng = np.random.default_rng(seed)
    maker = DefectMaker(seed=int(rng.integers(2**31)))
    sources = _source_stream(len(frames), rng)
    with torch.random.fork_rng(devices=[]):  # seeded head init without touching the caller's RNG
        torch.manual_seed(seed)
        classifier = ProxyClassifier(deep_backbone, channels)
    trainer = ProxyTrainer(classifier, preset, device_t)
    started, losses, accuracy = time.perf_counter(), [], 0.0

    def next_update_passes():
        return [_make_pass(maker, frames, [next(sources) for _ in range(preset.sources_per_pass)], normalise)
                for _ in range(preset.accumulation)]

    # The next update's DefectMaker images are made by one worker thread while this update trains (PIL and numpy
    # release the GIL, torch's kernels too): ~40 ms an image of single-threaded work, ~10% of the fine-tune, no
    # longer in series with it. One worker, one update ahead: the maker's and the source stream's random draws
    # happen in the same order as in a plain loop, so the fine-tuned weights are the same.
    with ThreadPoolExecutor(max_workers=1) as worker:
        upcoming = worker.submit(next_update_passes)
        for update in range(preset.updates):
            passes = upcoming.result()
            if update + 1 < preset.updates:
                upcoming = worker.submit(next_update_passes)
            loss, accuracy = trainer.step(passes)
            losses.append(loss)
            if progress is not None:
                progress(update + 1, preset.updates, f"loss {loss:.4f}")
    classifier.to("cpu").eval()
    return FinetuneReport(preset.name, preset.updates, preset.images_per_update, losses[-1], accuracy,
                          str(device_t), time.perf_counter() - started, losses)


def _make_pass(maker: DefectMaker, frames: np.ndarray, indices: list[int], normalise):
    images, labels = [], []
    for index in indices:
        for sample in maker.make_variants(index, frames):
            images.append(sample.image)
            labels.append(sample.label)
    batch = torch.from_numpy(np.stack(images))
    return normalise(batch), torch.tensor(labels, dtype=torch.long)
