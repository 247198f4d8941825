"""`caer stability`: arms, the divergence rules, the summary table, and one real (tiny) sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from caer_lightning import stability

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TINY = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=1", "--data.init_args.image_size=8", "--data.init_args.batch_size=16",
        "--trainer.enable_progress_bar=false"]


def record(seed=0, arm="carelu", test_acc=0.9, train_loss=(1.0, 0.5), layers=None, status="ok"):
    return {"seed": seed, "arm": arm, "status": status, "test_acc": test_acc, "train_loss": list(train_loss),
            "carelu": [layers if layers is not None else {"a": [0.1, 0.6], "b": [-0.2, 0.5]}]}


def test_parse_arm():
    assert stability.parse_arm("relu") == ("relu", {})
    assert stability.parse_arm("carelu:lr_scale=1.0,K=3") == ("carelu", {"lr_scale": 1.0, "K": 3})
    for bad in ("gelu", "relu:lr=1", "carelu:lr_scale"):
        with pytest.raises(ValueError, match="--arms entry"):
            stability.parse_arm(bad)


def test_divergence_rules():
    relu = record(arm="relu", test_acc=0.95)
    assert stability.divergence(record(test_acc=0.91), relu) == []
    assert stability.divergence(record(status="failed"), relu) == ["failed"]
    assert stability.divergence(record(layers={"a": [math.nan, 0.5]}), relu) == ["non-finite"]
    assert stability.divergence(record(train_loss=(1.0, 0.4, 2.01)), relu) == ["train loss > 2x epoch 1"]
    assert stability.divergence(record(train_loss=(1.0, 0.4, 1.99)), relu) == []
    assert stability.divergence(record(test_acc=0.899), relu) == ["test acc 0.899 < ReLU 0.950 - 0.05"]


def test_summary_rows_and_table():
    runs = [record(seed=s, arm="relu", test_acc=acc) for s, acc in ((0, 0.9), (1, 0.8))]
    runs += [record(seed=0, arm="carelu-lr_scale=1.0", test_acc=0.7, layers={"a": [2.0, 1.5], "b": [0.0, 0.5]}),
             record(seed=1, arm="carelu-lr_scale=1.0", test_acc=0.84, layers={"a": [0.2, 3.5]})]
    relu, scaled = stability.summarize(["relu", "carelu:lr_scale=1.0"], runs)
    assert relu["test_acc_mean"] == pytest.approx(0.85) and relu["diverged"] == {}
    assert scaled["test_acc_mean"] == pytest.approx(0.77) and scaled["test_acc_min"] == 0.7
    assert scaled["difference_to_relu"] == pytest.approx(((0.7 - 0.9) + (0.84 - 0.8)) / 2)
    assert scaled["max_abs_alpha"] == 2.0 and scaled["max_abs_beta"] == 3.5
    assert scaled["runs_saturated"] == 2  # seed 0: |α + β| = 3.5 at p = 1; seed 1: |β| = 3.5 at p = 0
    assert list(scaled["diverged"]) == [0]
    table = stability.markdown([relu, scaled], seeds=2)
    assert "| carelu:lr_scale=1.0 | 0.770 ± 0.099 | 0.700 | -0.080 | 3.50 | 2.00 | 2 | 1 (seeds 0) |" in table
    titles = {"relu": "GELU (no callback)", "carelu:lr_scale=1.0": "CAReLU, `lr_scale=1.0`"}
    named = stability.markdown([relu, scaled], seeds=2, titles=titles, baseline="GELU")
    assert named.splitlines()[0].startswith("| arm | test acc (mean ± std) | min | Δ vs GELU (paired mean) |")
    assert "| GELU (no callback) | 0.850 ± 0.071 | 0.800 | – | – | – | – | 0 |" in named
    assert "| CAReLU, `lr_scale=1.0` | 0.770 ± 0.099 |" in named
    gelu = stability.summarize(["relu", "carelu:lr_scale=1.0"], runs, baseline="GELU")
    assert gelu[1]["diverged"] == {0: ["test acc 0.700 < GELU 0.900 - 0.05"]}


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
    rows = stability.main(["--config", QUICKSTART, "--seeds", "1", "--out", str(tmp_path),
                           "--arms", "relu", "carelu:lr_scale=3.0", *TINY])
    assert [r["arm"] for r in rows] == ["relu", "carelu:lr_scale=3.0"] and all(r["finished"] == 1 for r in rows)
    run_dir = tmp_path / "seed0" / "carelu-lr_scale=3.0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (callback,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "caer_lightning.CAReLUCallback"]
    assert callback["init_args"]["lr_scale"] == 3.0 and callback["init_args"]["targets"] == ["torch.nn.ReLU"]
    relu_config = yaml.safe_load((tmp_path / "seed0" / "relu" / "config.yaml").read_text())
    assert not any(c["class_path"] == "caer_lightning.CAReLUCallback" for c in relu_config["trainer"]["callbacks"])
    # what the sweep read at the end of epoch 0 is what the run saved in its epoch-0 checkpoint
    saved = json.loads((tmp_path / "stability.json").read_text())
    epochs = next(r for r in saved["runs"] if r["arm"] == "carelu-lr_scale=3.0")["carelu"]
    (checkpoint,) = run_dir.rglob("epoch=0-*.ckpt")
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert len(epochs) == 2 and len(epochs[0]) == 17
    for name, (alpha, beta) in epochs[0].items():
        assert alpha == pytest.approx(state[f"{name}.alpha"].item()) and beta == pytest.approx(state[f"{name}.beta"].item())
    final = epochs[-1]
    assert rows[1]["max_abs_beta"] == pytest.approx(max(abs(b) for _, b in final.values()))
    report = (tmp_path / "stability.md").read_text()
    assert report.startswith("`caer stability --config") and "| Δ vs ReLU (paired mean) |" in report
    assert "\n| ReLU (no callback) | " in report and "\n| CAReLU, `lr_scale=3.0` | " in report
    assert [r["title"] for r in rows] == ["ReLU (no callback)", "CAReLU, `lr_scale=3.0`"]
