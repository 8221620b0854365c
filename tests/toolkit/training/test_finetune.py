"""The REB proxy task (spec §4): loss, schedule, frozen warm-up, and that a few updates learn something."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adtk.toolkit.preprocess import FramePreprocess
from adtk.toolkit.training import PRESETS, FinetunePreset, ProxyClassifier, ProxyTrainer, one_vs_all_bce


def test_loss_is_mean_sigmoid_bce_over_all_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 30.0, -3.0]])
    labels = torch.tensor([0, 1])
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    p = np.clip(p, 1e-6, 1 - 1e-6)
    y = np.eye(3)[labels.numpy()]
    want = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert float(one_vs_all_bce(logits, labels)) == pytest.approx(want, rel=1e-5)


def test_paper_preset_and_its_learning_rate_schedule():
    paper = PRESETS["paper"]
    assert (paper.updates, paper.images_per_update, paper.frozen_updates) == (300, 1008, 39)
    param = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.SGD([param], lr=paper.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimiser, T_0=int(paper.updates * paper.restart_factor), eta_min=paper.eta_min)
    rates = {}
    for t in range(1, 301):
        schedule.step()
        rates[t] = optimiser.param_groups[0]["lr"]
    for t in (100, 200, 300):  # spec §4: lr_t = 1e-5 + (0.03 - 1e-5)(1 + cos(pi t / 330)) / 2
        assert rates[t] == pytest.approx(1e-5 + (0.03 - 1e-5) * (1 + math.cos(math.pi * t / 330)) / 2, rel=1e-6)
    assert rates[300] == pytest.approx(0.00062, abs=1e-5)


class TinyBackbone(torch.nn.Module):
    """Two conv + BatchNorm stages returning stage maps, like a FeatureExtractor (fast on a busy CPU)."""

    def __init__(self):
        super().__init__()
        self.stage1 = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.stage2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())

    def forward(self, x):
        first = self.stage1(x)
        return [first, self.stage2(first)]


@pytest.fixture(scope="module")
def tiny_classifier_parts():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        deep = TinyBackbone()
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, size=(14, 32, 32, 3), dtype=np.uint8))
    images = FramePreprocess(32, (0.5,) * 3, (0.5,) * 3)(frames)
    labels = torch.arange(14) % 7
    return deep, images, labels


def test_frozen_warm_up_trains_only_the_head(tiny_classifier_parts):
    deep, images, labels = tiny_classifier_parts
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    preset = FinetunePreset("t", updates=2, sources_per_pass=2, accumulation=1, frozen_updates=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = ProxyClassifier(deep, 16)
    head_before = [p.clone() for p in classifier.head.parameters()]
    trainer = ProxyTrainer(classifier, preset, torch.device("cpu"))
    trainer.step([(images, labels)])  # update 1: frozen
    assert all(torch.equal(before[k], v) for k, v in deep.state_dict().items())  # BN statistics included
    assert any(not torch.equal(a, b) for a, b in zip(head_before, classifier.head.parameters()))
    trainer.step([(images, labels)])  # update 2: everything trains
    assert any(not torch.equal(before[k], v) for k, v in deep.state_dict().items())
    deep.load_state_dict(before)


def test_frozen_batchnorm_statistics_train_weights_but_keep_running_stats(tiny_classifier_parts):
    deep, images, labels = tiny_classifier_parts
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    preset = FinetunePreset("t", updates=2, sources_per_pass=2, accumulation=1, frozen_updates=0,
                            freeze_batchnorm_stats=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = ProxyClassifier(deep, 16)
    trainer = ProxyTrainer(classifier, preset, torch.device("cpu"))
    trainer.step([(images, labels)])
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], deep.state_dict()[k]) for k in stats)
    assert any(not torch.equal(before[k], v) for k, v in deep.state_dict().items() if k.endswith("weight"))
    assert PRESETS["fast"].freeze_batchnorm_stats and not PRESETS["paper"].freeze_batchnorm_stats
    deep.load_state_dict(before)


def test_a_few_updates_reduce_the_loss_on_a_fixed_batch(tiny_classifier_parts):
    deep, images, labels = tiny_classifier_parts
    preset = FinetunePreset("t", updates=8, sources_per_pass=2, accumulation=2, frozen_updates=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        classifier = ProxyClassifier(deep, 16)
    trainer = ProxyTrainer(classifier, preset, torch.device("cpu"))
    losses = [trainer.step([(images[:7], labels[:7]), (images[7:], labels[7:])])[0] for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the fine-tuning runs there when present)")
def test_updates_on_cuda_match_the_cpu_updates_and_leave_the_backbone_on_the_cpu(tiny_classifier_parts):
    """The same three updates from the same initial weights on CPU and on CUDA give the same weights (up to
    float reordering), BatchNorm statistics included; the fine-tuned backbone comes back on the CPU for export."""
    deep, images, labels = tiny_classifier_parts
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    preset = FinetunePreset("t", updates=3, sources_per_pass=2, accumulation=1, frozen_updates=1)
    trained, tf32 = {}, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round to 10 mantissa bits: compare full fp32
    for device in ("cpu", "cuda"):
        deep.load_state_dict(before)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            classifier = ProxyClassifier(deep, 16)
        trainer = ProxyTrainer(classifier, preset, torch.device(device))
        losses = [trainer.step([(images, labels)])[0] for _ in range(3)]
        classifier.to("cpu")
        trained[device] = ({k: v.detach().clone() for k, v in classifier.state_dict().items()}, losses)
    torch.backends.cudnn.allow_tf32 = tf32
    (cpu_weights, cpu_losses), (cuda_weights, cuda_losses) = trained["cpu"], trained["cuda"]
    assert cpu_losses == pytest.approx(cuda_losses, rel=1e-3)
    for name, cpu_value in cpu_weights.items():
        assert cuda_weights[name].device.type == "cpu"
        if cpu_value.is_floating_point():
            assert torch.allclose(cuda_weights[name], cpu_value, rtol=1e-3, atol=1e-4), name
    assert any(not torch.equal(before[k], v) for k, v in deep.state_dict().items())  # it did train
    deep.load_state_dict(before)


def test_defectmaker_images_made_one_update_ahead_in_a_thread_give_the_same_weights(monkeypatch):
    import concurrent.futures
    import copy

    from adtk.toolkit.training import finetune

    class InlineExecutor:  # runs each job at submit, in this thread: the plain loop's order
        def __init__(self, max_workers):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, job):
            future = concurrent.futures.Future()
            future.set_result(job())
            return future

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        start = TinyBackbone()
    frames = np.random.default_rng(3).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    preset = FinetunePreset("tiny", updates=4, sources_per_pass=2, accumulation=1, frozen_updates=1,
                            learning_rate=0.05)
    normalise = FramePreprocess(32, (0.5,) * 3, (0.5,) * 3)
    threaded, inline = copy.deepcopy(start), copy.deepcopy(start)
    report = finetune.finetune_backbone(threaded, 16, frames, normalise, preset, seed=5, device="cpu")
    monkeypatch.setattr(finetune, "ThreadPoolExecutor", InlineExecutor)
    reference = finetune.finetune_backbone(inline, 16, frames, normalise, preset, seed=5, device="cpu")
    assert report.losses == reference.losses and len(report.losses) == 4
    for (name, a), (_, b) in zip(threaded.state_dict().items(), inline.state_dict().items()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(threaded.state_dict().values(), start.state_dict().values()))
