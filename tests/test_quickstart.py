"""The README main job end to end: configs/quickstart.yaml trains, tests well, and its checkpoint reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from caer_lightning import CAReLU, load_checkpoint
from caer_lightning.cli import build_cli
from caer_lightning.guards import SATURATION_LIMIT
from caer_lightning.models import TimmClassifier
from caer_lightning.optim import SGD_LR_SCALE

CONFIG = Path(__file__).parents[1] / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_trains_and_its_checkpoint_reloads(tmp_path):
    cli = build_cli(["fit", "--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}",
                     f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    accuracy = cli.trainer.callback_metrics["test_acc"].item()
    assert accuracy >= 0.85, f"quickstart test accuracy {accuracy:.3f} (chance is 0.10)"
    (group,) = [g for g in cli.trainer.optimizers[0].param_groups if g.get("name") == "carelu"]
    assert group["initial_lr"] == pytest.approx(SGD_LR_SCALE * 0.05), "the SGD default lr_scale applies"
    for name, module in cli.model.named_modules():
        if isinstance(module, CAReLU):  # no layer ends saturated: max over p in [0, 1] of |α·p + β| stays low
            alpha, beta = module.alpha.item(), module.beta.item()
            assert max(abs(beta), abs(alpha + beta)) < SATURATION_LIMIT, f"{name}: alpha={alpha}, beta={beta}"

    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    loaded = load_checkpoint(TimmClassifier, best).eval()
    names = [n for n, m in loaded.named_modules() if isinstance(m, CAReLU)]
    assert len(names) == 17

    x, _ = cli.datamodule.splits["test"].tensors
    model = cli.model.eval()  # holds the best checkpoint's weights: test_after_fit restored them
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.equal(expected.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, expected)
