"""Backbone fine-tuning for methods that adapt the backbone before features are extracted (REB)."""

from adtk.toolkit.training.finetune import (  # noqa: F401
    PRESETS,
    FinetunePreset,
    FinetuneReport,
    ProxyClassifier,
    ProxyTrainer,
    finetune_backbone,
    one_vs_all_bce,
)
