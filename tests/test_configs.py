"""Every shipped YAML parses with LightningCLI and runs through fast_dev_run; the CLI's own behaviours."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from caer_lightning import CAReLU
from caer_lightning.cli import build_cli
from helpers import write_snli_sample

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
ROOT = Path(__file__).parents[1]


def _local_args(config: Path, tmp_path: Path) -> list[str]:
    """Keep runs inside tmp_path; configs that need CIFAR-100 get the embedded digits at 32×32 RGB instead, and
    those that need SNLI a few pairs in its release's format."""
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    if "CIFAR100DataModule" in config.read_text():
        args += ["--data=caer_lightning.data.DigitsDataModule", "--data.batch_size=4", "--data.image_size=32",
                 "--data.channels=3", "--data.num_workers=0"]  # the CIFAR configs' 4 workers: more than CI's cores
    if "SNLIDataModule" in config.read_text():
        args += [f"--data.data_dir={write_snli_sample(tmp_path / 'snli')}", "--data.batch_size=4"]
    return args


def test_configs_are_found():
    names = {c.relative_to(ROOT / "configs").as_posix() for c in CONFIGS}
    assert {"quickstart.yaml", "cifar100/resnet18_carelu.yaml", "cifar100/resnet18_relu.yaml"} <= names
    assert len(names) >= 7


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.relative_to(ROOT / "configs").as_posix())
def test_config_runs_fast_dev_run(config, tmp_path):
    if "GPT2CharLM" in config.read_text():
        pytest.importorskip("transformers")
    cli = build_cli(["fit", *_local_args(config, tmp_path), "--trainer.fast_dev_run=1"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    swapped = [m for m in cli.model.modules() if isinstance(m, CAReLU)]
    wants_carelu = "CAReLUCallback" in config.read_text()
    assert bool(swapped) == wants_carelu
    if wants_carelu:
        assert any(g.get("name") == "carelu" for g in cli.trainer.optimizers[0].param_groups)
    monitored = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    (monitor,) = [c["init_args"]["monitor"] for c in monitored if c["class_path"].endswith(".ModelCheckpoint")]
    assert "test" + monitor.removeprefix("val") in cli.trainer.callback_metrics, "test_after_fit ran the test loop"


def test_resnet18_configs_differ_only_in_the_callback():
    carelu, relu = (yaml.safe_load((ROOT / f"configs/cifar100/resnet18_{arm}.yaml").read_text())
                    for arm in ("carelu", "relu"))
    callbacks = carelu["trainer"].pop("callbacks")
    assert [c for c in callbacks if c["class_path"] != "caer_lightning.CAReLUCallback"] == relu["trainer"].pop("callbacks")
    assert carelu == relu
    recipe = carelu["model"]["init_args"]
    assert recipe["optimizer"]["init_args"] == {"lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4}
    assert carelu["trainer"]["max_epochs"] == 200 and carelu["data"]["init_args"]["batch_size"] == 128


@pytest.mark.parametrize("name, baseline", [("cifar100/resnet18", "relu"), ("sr/espcn_x2", "relu"),
                                            ("mnist1d/cnn", "relu"), ("lm/char_transformer", "gelu"),
                                            ("snli/bilstm", "relu")])
def test_baseline_configs_differ_only_in_the_callback(name, baseline):
    carelu, relu = (yaml.safe_load((ROOT / f"configs/{name}_{arm}.yaml").read_text()) for arm in ("carelu", baseline))
    callbacks = carelu["trainer"].pop("callbacks")
    assert [c for c in callbacks if c["class_path"] != "caer_lightning.CAReLUCallback"] == relu["trainer"].pop("callbacks")
    assert carelu == relu


@pytest.mark.slow
def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "caer_lightning.CAReLUCallback" in printed and "TimmClassifier" in printed
    (tmp_path / "printed.yaml").write_text(printed)
    cli = build_cli(["fit", *_local_args(tmp_path / "printed.yaml", tmp_path), "--trainer.fast_dev_run=1",
                     "--test_after_fit=false"])
    assert cli.model.hparams.backbone == "resnet18" and cli.model.hparams.cifar_stem
    assert any(isinstance(m, CAReLU) for m in cli.model.modules())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`ModelCheckpoint\\(monitor='val_acc'\\)` could not find the monitored key")  # 1 step
def test_rerun_into_the_same_directory_does_not_crash(tmp_path):
    """A fixed logger version makes both runs save their config to the same folder."""
    args = ["fit", *_local_args(ROOT / "configs/quickstart.yaml", tmp_path), "--trainer.max_steps=1",
            "--trainer.limit_val_batches=1", "--trainer.logger.init_args.version=fixed", "--test_after_fit=false"]
    cli = build_cli(args)
    with pytest.warns(UserWarning, match="checkpoints exists and is not empty"):  # Lightning says so, and goes on
        cli = build_cli(args)
    assert cli.trainer.log_dir == str(tmp_path / "quickstart" / "fixed")
    assert (tmp_path / "quickstart" / "fixed" / "config.yaml").is_file()


@pytest.mark.slow
def test_caer_console_script():
    caer = shutil.which("caer", path=str(Path(sys.executable).parent))
    assert caer, "the `caer` console script is not installed"
    done = subprocess.run([caer, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in done.stdout
