"""Reference classifiers, training, and the one adapter every verb uses for users' models."""

from chanstat.models.adapter import (
    Classifier,
    ModelAdapter,
    ModelAdapterError,
    ModelSourceError,
    as_model,
    load_model,
    load_user_model,
    unwrap,
)
from chanstat.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from chanstat.models.training import TrainResult, evaluate, split_by_group, train
from chanstat.models.vgg import VGGClassifier, default_cam_layer, expected_channels

__all__ = [
    "VGGClassifier",
    "default_cam_layer",
    "expected_channels",
    "train",
    "evaluate",
    "split_by_group",
    "TrainResult",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_user_model",
    "ModelSourceError",
    "ModelAdapter",
    "ModelAdapterError",
    "as_model",
    "load_model",
    "unwrap",
    "Classifier",
]
