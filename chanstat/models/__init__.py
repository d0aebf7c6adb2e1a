"""Reference classifiers, training, and loading users' models."""
from chanstat.models.checkpoint import Checkpoint, ModelSourceError, load_checkpoint, load_user_model, save_checkpoint
from chanstat.models.training import TrainResult, evaluate, split_by_group, train
from chanstat.models.vgg import VGGClassifier, default_cam_layer, expected_channels

__all__ = [
    "VGGClassifier", "default_cam_layer", "expected_channels", "train", "evaluate", "split_by_group",
    "TrainResult", "Checkpoint", "save_checkpoint", "load_checkpoint", "load_user_model", "ModelSourceError",
]
