"""Tests of adtk.toolkit.backbones: shapes, truncation, weight resolution, offline weights, ONNX export."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import torch.nn.functional as F

from adtk.runtime.errors import ConfigError, WeightsError
from adtk.toolkit.backbones import state_dicts, weight_sources
from adtk.toolkit.backbones import IMAGENET_MEAN, IMAGENET_STD, SUPPORTED_BACKBONES, create_backbone

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, empty caches: results do not depend on the machine's network or cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _has_package(timm_name: str) -> bool:
    return weight_sources.offline_package_file(timm_name) is not None


def _skip_without_package(timm_name: str) -> None:
    if not _has_package(timm_name):
        pkg = weight_sources.OFFLINE_PACKAGES[timm_name].pip_name
        pytest.skip(f"offline weight package {pkg} is not installed")


def _param_modules(module):
    return [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]


# --------------------------------------------------------------------------------------------------
# shapes, determinism, truncation, freezing


@pytest.mark.parametrize("name", list(SUPPORTED_BACKBONES))
def test_supported_backbone_shapes_truncation_and_freeze(name):
    spec = SUPPORTED_BACKBONES[name]
    b = create_backbone(name, random_weights=True, seed=3)
    assert b.stages == spec.default_stages
    assert b.strides == (8, 16)
    assert b.weights_source == "random(seed=3)"
    assert (b.mean, b.std) == (spec.mean, spec.std)

    executed = set()
    hooks = [m.register_forward_hook(lambda m, i, o: executed.add(id(m))) for m in b.modules()]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = b(x)
    for h in hooks:
        h.remove()
    assert len(out) == len(b.stages)
    for o, c, s in zip(out, b.channels, b.strides):
        assert tuple(o.shape) == (2, c, 64 // s, 96 // s)

    # truncated: every module with weights runs (nothing dead is kept), and the head is gone
    unused = [m for m in _param_modules(b) if id(m) not in executed]
    assert not unused, f"modules kept but never executed: {unused[:3]}"
    names = {n for n, _ in b.model.named_modules()}
    assert not {"conv_head", "classifier", "fc", "layer4", "blocks.5", "blocks.6"} & names
    with torch.device("meta"):
        full = timm.create_model(spec.timm_name, pretrained=False)
    assert sum(p.numel() for p in b.parameters()) < 0.8 * sum(p.numel() for p in full.parameters())

    # frozen, and stays in eval mode even if a parent module switches to training
    assert not any(p.requires_grad for p in b.parameters())
    assert not b.training
    torch.nn.Sequential(b).train()
    assert not any(m.training for m in b.modules())


def test_random_weights_are_deterministic_per_seed():
    x = torch.randn(1, 3, 64, 64)
    a = create_backbone("tf_efficientnet_lite0", random_weights=True, seed=0)
    b = create_backbone("tf_efficientnet_lite0", random_weights=True, seed=0)
    c = create_backbone("tf_efficientnet_lite0", random_weights=True, seed=1)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    with torch.no_grad():
        for u, v in zip(a(x), b(x)):
            assert torch.equal(u, v)
    # the caller's RNG is not touched by the seeded init
    torch.manual_seed(123)
    r1 = torch.rand(3)
    torch.manual_seed(123)
    create_backbone("mobilenetv2_100", random_weights=True, seed=5)
    assert torch.equal(torch.rand(3), r1)


def test_trainable_flag():
    b = create_backbone("resnet18", random_weights=True, trainable=True)
    assert all(p.requires_grad for p in b.parameters())
    b.train()
    assert b.training
    out = b(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out).backward()
    assert b.model.conv1.weight.grad is not None


def test_stage_selection_by_name_and_index():
    b = create_backbone("resnet18", stages=["3", "layer1"], random_weights=True)
    assert b.stages == ("layer1", "layer3") and b.strides == (4, 16) and b.channels == (64, 256)
    assert "layer4" not in dict(b.model.named_children())
    b = create_backbone("tf_efficientnet_lite0", stages="blocks.1,3", random_weights=True)
    assert b.stages == ("blocks.1", "blocks.4") and b.strides == (4, 16) and b.channels == (24, 112)
    assert len(b.model.blocks) == 5  # blocks 5 and 6 are not executed


def test_unknown_stage_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        create_backbone("tf_efficientnet_lite0", stages=["blocks.9"], random_weights=True)
    msg = str(e.value)
    assert "'blocks.9'" in msg and "'blocks.2' (stride 8, 40 ch)" in msg and "'blocks.4' (stride 16, 112 ch)" in msg


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet-18", random_weights=True)
    msg = str(e.value)
    assert "Did you mean: resnet18" in msg and "wide_resnet50_2" in msg


def test_other_timm_model_uses_first_two_stages_with_stride_at_least_8():
    b = create_backbone("mobilenetv3_small_050", random_weights=True)
    assert b.strides == (8, 16)
    out = b(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == list(b.channels)


# --------------------------------------------------------------------------------------------------
# weight resolution


def test_no_weights_raises_with_hint_and_never_silently_random(offline):
    t = time.perf_counter()
    with pytest.raises(WeightsError) as e:
        create_backbone("resnet18")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    for hint in ("--weights FILE", "--random-weights", "internet", "pip install"):
        assert hint in msg


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    """Online mode but the hub cannot be reached: the probe answers in well under huggingface_hub's ~45 s."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t = time.perf_counter()
    with pytest.raises(WeightsError, match="unreachable"):
        create_backbone("resnet18")
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize("cache", ["hf", "torch-hub"])
def test_timm_pretrained_weights_come_from_the_cache_offline(offline, cache):
    """A populated timm cache (HF hub layout, or the old torch-hub checkpoints folder) is used offline."""
    ref = timm.create_model("resnet18", pretrained=False)
    cfg = timm.models.get_pretrained_cfg("resnet18")
    if cache == "hf":
        from safetensors.torch import save_file

        repo = offline / "hf" / "hub" / ("models--" + cfg.hf_hub_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
        save_file(ref.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    else:
        ckpt = offline / "torch" / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        torch.save(ref.state_dict(), ckpt / cfg.url.rsplit("/", 1)[-1])
    b = create_backbone("resnet18")
    assert b.weights_source == "timm-pretrained"
    assert torch.equal(b.model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)


def test_weights_and_random_together_is_an_error():
    with pytest.raises(ConfigError, match="only one"):
        create_backbone("resnet18", weights="x.pth", random_weights=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix):
    ref = create_backbone("mobilenetv2_100", random_weights=True, seed=7)
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in ref.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    b = create_backbone("mobilenetv2_100", weights=path)
    assert b.weights_source == f"file:{path.resolve()}"
    assert b.weights_sha256 == ref.weights_sha256
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for u, v in zip(b(x), ref(x)):
            assert torch.equal(u, v)


def test_weights_file_full_classifier_and_foreign_layout(tmp_path):
    full = timm.create_model("resnet18", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "full.pth")
    b = create_backbone("resnet18", weights=tmp_path / "full.pth")  # head and layer4 are ignored
    assert torch.equal(b.model.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
    # the same tensors under other names, in the same order (torchvision/lukemelas-style): in-order remap
    foreign = {f"net.t{i}": v for i, v in enumerate(full.state_dict().values())}
    torch.save(foreign, tmp_path / "foreign.pth")
    c = create_backbone("resnet18", weights=tmp_path / "foreign.pth")
    assert c.weights_sha256 == b.weights_sha256
    # ... and a foreign layout whose shapes do not line up fails loudly
    items = list(foreign.items())
    items[1], items[0] = items[0], items[1]
    torch.save(dict(items), tmp_path / "shuffled.pth")
    with pytest.raises(WeightsError, match="shapes disagree"):
        create_backbone("resnet18", weights=tmp_path / "shuffled.pth")


def test_weights_file_with_wrong_key_names_it(tmp_path):
    sd = create_backbone("resnet18", random_weights=True).model.state_dict()
    sd["conv1.wieght"] = sd.pop("conv1.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        create_backbone("resnet18", weights=path)
    msg = str(e.value)
    assert "'conv1.wieght'" in msg and "'conv1.weight'" in msg and str(path) in msg


def test_weights_file_wrong_shape_missing_file_and_pickles(tmp_path):
    sd = create_backbone("resnet18", random_weights=True).model.state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="layer2.0.conv1.weight"):
        create_backbone("resnet18", weights=tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")
    torch.save({"conv1.weight": torch.zeros(1), "note": object.__new__(_Opaque)}, tmp_path / "pickle.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        create_backbone("resnet18", weights=tmp_path / "pickle.pth")


class _Opaque:
    pass


# --------------------------------------------------------------------------------------------------
# offline weight packages: the remap and the normalisation, checked by classifying a cat


def _chelsea_224() -> torch.Tensor:
    data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1).float()[None] / 255
    h, w = img.shape[-2:]
    s = 256 / min(h, w)
    img = F.interpolate(img, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True).clamp(0, 1)
    h, w = img.shape[-2:]
    top, left = (h - 224) // 2, (w - 224) // 2
    return img[..., top : top + 224, left : left + 224]


def _normalise(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _package_classifier(timm_name: str):
    """The FULL classifier with the package weights, through the same in-order remap as create_backbone."""
    _, path = weight_sources.offline_package_file(timm_name)
    model = timm.create_model(timm_name, pretrained=False).eval()
    src = torch.load(str(path), map_location="cpu", weights_only=True)
    state_dicts.load_into(model, state_dicts.remap_in_order(src, state_dicts.full_model_shapes(timm_name), timm_name, str(path)),
                  timm_name, str(path))
    return model


@pytest.mark.parametrize("timm_name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_offline_package_classifies_chelsea_as_cat(offline, timm_name):
    _skip_without_package(timm_name)
    b = create_backbone(timm_name)
    assert b.weights_source == f"package:{weight_sources.OFFLINE_PACKAGES[timm_name].pip_name}"
    model = _package_classifier(timm_name)
    for k, v in b.model.state_dict().items():  # the extractor holds the very same weights
        assert torch.equal(v, model.state_dict()[k]), k
    x = _chelsea_224()
    with torch.no_grad():
        p = model(_normalise(x, b.mean, b.std)).softmax(-1)[0]
    assert int(p.argmax()) in CAT_CLASSES, f"top-1 {int(p.argmax())} p={float(p.max()):.3f}"
    assert float(p[list(CAT_CLASSES)].sum()) > 0.8
    if timm_name == "tf_efficientnet_lite0":  # the chosen normalisation (0.5/0.5) beats ImageNet's
        with torch.no_grad():
            p_in = model(_normalise(x, IMAGENET_MEAN, IMAGENET_STD)).softmax(-1)[0]
        assert float(p[list(CAT_CLASSES)].sum()) > float(p_in[list(CAT_CLASSES)].sum())


def test_offline_normalisations_agree_on_stem_batchnorm_statistics():
    """Stem conv output variance vs bn1.running_var, lite0 calibrated against torchvision mobilenet_v2.

    Chelsea is less contrasted than the average ImageNet photo, so the log ratio is negative for both;
    with the right normalisations the two backbones see the same contrast deficit, with the wrong one
    lite0 is off by log((0.5/0.226)^2) = 1.59.
    """
    for name in ("tf_efficientnet_lite0", "mobilenetv2_100"):
        _skip_without_package(name)
    x = _chelsea_224()

    def stem_log_var_ratio(timm_name, mean, std):
        m = _package_classifier(timm_name)
        with torch.no_grad():
            s = m.conv_stem(_normalise(x, mean, std))
        ok = m.bn1.running_var > 1e-3
        return float((s[0].var((1, 2))[ok] / m.bn1.running_var[ok]).log().median())

    spec_e, spec_m = SUPPORTED_BACKBONES["tf_efficientnet_lite0"], SUPPORTED_BACKBONES["mobilenetv2_100"]
    ref = stem_log_var_ratio("mobilenetv2_100", spec_m.mean, spec_m.std)
    right = stem_log_var_ratio("tf_efficientnet_lite0", spec_e.mean, spec_e.std)
    wrong = stem_log_var_ratio("tf_efficientnet_lite0", IMAGENET_MEAN, IMAGENET_STD)
    assert abs(right - ref) < 0.5, (ref, right, wrong)
    assert abs(wrong - ref) > 1.0, (ref, right, wrong)


# --------------------------------------------------------------------------------------------------
# export


def test_onnx_export_parity_tf_efficientnet_lite0(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    if _has_package("tf_efficientnet_lite0"):
        b = create_backbone("tf_efficientnet_lite0")
    else:
        b = create_backbone("tf_efficientnet_lite0", random_weights=True)
    x = _normalise(F.interpolate(_chelsea_224(), size=(128, 128), mode="bilinear", antialias=True), b.mean, b.std)
    path = tmp_path / "backbone.onnx"
    torch.onnx.export(b, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = b(x)
    assert len(got) == len(want) == 2
    for g, w, c, s in zip(got, want, b.channels, b.strides):
        assert g.shape == (1, c, 128 // s, 128 // s)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
