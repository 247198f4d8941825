"""TimmClassifier: CIFAR stem, errors, metrics, predict_step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from caer_lightning.models import TimmClassifier


@pytest.mark.slow
def test_cifar_stem_keeps_resolution():
    model = TimmClassifier("resnet18", num_classes=100, cifar_stem=True)
    conv1 = model.model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and isinstance(model.model.maxpool, nn.Identity)
    features = model.model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 512, 4, 4)  # 32 / 8: only the three stride-2 stages downsample
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_cifar_stem_rejects_other_families():
    with pytest.raises(ValueError, match=r"cifar_stem=True applies to ResNet-family.*'densenet121' builds a DenseNet"):
        TimmClassifier("densenet121", cifar_stem=True)


def test_unknown_backbone():
    with pytest.raises(ValueError, match=r"backbone='resnet_18' is not a timm model"):
        TimmClassifier("resnet_18")


@pytest.mark.slow
def test_pretrained_without_network_says_what_to_do():
    code = "from caer_lightning.models import TimmClassifier; TimmClassifier('resnet18', pretrained=True)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "could not load pretrained weights for backbone='resnet18'" in done.stderr
    assert "set pretrained: false" in done.stderr


@pytest.mark.slow
def test_steps_log_top1_top5_and_predict_probabilities():
    model = TimmClassifier("resnet18", num_classes=10, in_chans=1, cifar_stem=True)
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 10, (6,))
    logged = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    model.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    loss = model.training_step((x, y), 0)
    assert loss.ndim == 0 and {"train_loss", "train_acc", "train_acc_top5"} <= set(logged)
    top1, top5 = model.train_metrics["acc"].compute(), model.train_metrics["acc_top5"].compute()
    assert 0 <= top1 <= top5 <= 1
    probabilities = model.predict_step((x, y), 0)
    assert probabilities.shape == (6, 10)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(6))


def test_invalid_arguments():
    with pytest.raises(ValueError, match=r"scheduler_interval='batch'; accepted values: epoch, step"):
        TimmClassifier(scheduler_interval="batch")
    with pytest.raises(ValueError, match=r"num_classes=1"):
        TimmClassifier(num_classes=1)
