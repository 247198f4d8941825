"""The `caer` command: its help lists every subcommand, each subcommand's help is its own, the CLI modules import
one another without a circle, and runner.resolved_config is what `caer fit --print_config` prints."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

import caer_lightning
from caer_lightning import ab, cli, runner

ROOT = Path(__file__).parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SUBCOMMANDS = [*LightningCLI.subcommands(), "ab", "stability", "configs"]  # fit, validate, test, predict, ab, ...



def caer(*args: str) -> subprocess.CompletedProcess:
    """`caer ARGS` as run_arm runs it: `python -m caer_lightning.cli ARGS` in its own process."""
    return subprocess.run([sys.executable, "-m", "caer_lightning.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def listed_subcommands(help_text: str) -> dict[str, str]:
    """The subcommand table of `caer --help`: the lines after "subcommands:" up to the first empty line."""
    table = help_text.partition("subcommands:\n")[2].split("\n\n", 1)[0]
    rows = (line.strip().partition(" ") for line in table.splitlines())
    return {name: description.strip() for name, _, description in rows}


@pytest.mark.slow
def test_help_lists_every_subcommand():
    done = caer("--help")
    assert done.returncode == 0, done.stderr
    listed = listed_subcommands(done.stdout)
    assert list(listed) == SUBCOMMANDS
    assert listed["fit"] == "Runs the full optimization routine."  # the first sentence of Trainer.fit's docstring
    assert listed["test"] == "Perform one evaluation epoch over the test set."
    assert listed["ab"].startswith("A paired A/B test") and listed["stability"].startswith("Train one config")
    assert "`caer fit --help`" in done.stdout and "`caer ab --help`" in done.stdout


def test_short_help_and_no_arguments_list_them_too(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["caer", "-h"])
    cli.main()
    assert list(listed_subcommands(capsys.readouterr().out)) == SUBCOMMANDS
    monkeypatch.setattr(sys, "argv", ["caer"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert list(listed_subcommands(err)) == SUBCOMMANDS and "a subcommand is required" in err


@pytest.mark.parametrize(("subcommand", "expected"), [
    ("fit", "--trainer.max_epochs"), ("test", "--ckpt_path"), ("ab", "usage: caer ab"),
    ("stability", "usage: caer stability")])
def test_one_subcommands_help_is_its_own(subcommand, expected, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["caer", subcommand, "--help"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert expected in out and "subcommands:" not in out


def caer_imports(module: str) -> set[str]:
    """The caer_lightning modules that `module`'s source imports, anywhere in it (also inside functions)."""
    package = Path(caer_lightning.__file__).parent
    path = package.joinpath(*module.split(".")[1:]).with_suffix(".py")
    if not path.is_file():
        path = path.with_suffix("") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from caer_lightning import ab`: the submodule ab; `from caer_lightning.ab import x`: ab
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "caer_lightning" or len(parts) < 2:
                continue  # not ours, or the package itself (every submodule's import runs its __init__ first)
            for end in range(len(parts), 1, -1):  # the longest prefix that is a module of the package
                candidate = package.joinpath(*parts[1:end])
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    found.add(".".join(parts[:end]))
                    break
    return found


def test_cli_modules_import_each_other_without_a_circle():
    cli_modules = {f"caer_lightning.{name}" for name in ("cli", "ab", "stability", "runner", "lightning_cli")}
    graph: dict[str, set[str]] = {}
    todo = list(cli_modules)
    while todo:  # every caer_lightning module the CLI modules reach
        module = todo.pop()
        if module not in graph:
            graph[module] = caer_imports(module) - {module}
            todo += graph[module]
    # the layering: lightning_cli <- runner <- ab, stability <- cli
    assert graph["caer_lightning.lightning_cli"].isdisjoint(cli_modules)
    assert graph["caer_lightning.runner"] & cli_modules == {"caer_lightning.lightning_cli"}
    assert graph["caer_lightning.ab"] & cli_modules == {"caer_lightning.runner"}
    assert graph["caer_lightning.stability"] & cli_modules == {"caer_lightning.runner"}
    assert {"caer_lightning.ab", "caer_lightning.stability"} <= graph["caer_lightning.cli"]

    def path_back(start: str) -> list[str] | None:
        """A chain of imports from start back to start, if there is one."""
        stack, seen = [(start, [start])], set()
        while stack:
            module, chain = stack.pop()
            for imported in graph[module]:
                if imported == start:
                    return chain + [start]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, chain + [imported]))
        return None

    for module in sorted(cli_modules):
        assert path_back(module) is None, " -> ".join(path_back(module))


def test_run_recorder_moved_and_its_old_class_path_still_loads(tmp_path):
    assert ab.RunRecorder is runner.RunRecorder
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    config["trainer"]["callbacks"].append(
        {"class_path": "caer_lightning.ab.RunRecorder", "init_args": {"path": str(tmp_path / "old.json")}})
    old_run = tmp_path / "old_run.yaml"  # the config of a run folder written before RunRecorder moved
    old_run.write_text(yaml.safe_dump(config))
    base = runner.resolved_config(str(old_run), [])
    assert any(c["class_path"].endswith("RunRecorder") for c in base["trainer"]["callbacks"])
    arm = runner.arm_config(base, "relu", 0, tmp_path / "run")
    recorders = [c for c in arm["trainer"]["callbacks"] if c["class_path"].endswith("RunRecorder")]
    assert recorders == [{"class_path": "caer_lightning.runner.RunRecorder",
                          "init_args": {"path": str(tmp_path / "run" / "metrics.json")}}]


def assert_contains(resolved, given, where="config"):
    """Every value set in `given` (a config file's dict) is in `resolved`, at the same place."""
    if isinstance(given, dict):
        assert isinstance(resolved, dict), where
        for key, value in given.items():
            assert key in resolved, f"{where}.{key} missing"
            assert_contains(resolved[key], value, f"{where}.{key}")
    elif isinstance(given, list):
        assert isinstance(resolved, list) and len(resolved) == len(given), where
        for index, (r, g) in enumerate(zip(resolved, given)):
            assert_contains(r, g, f"{where}[{index}]")
    else:
        assert resolved == given, f"{where}: {resolved!r} != {given!r}"


OVERRIDES = ["--trainer.max_epochs=2", "--model.init_args.optimizer=torch.optim.AdamW",
             "--model.init_args.optimizer.init_args.lr=1e-3", "--data.init_args.image_size=8", "--seed_everything=true"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], OVERRIDES], ids=["config only", "with overrides"])
def test_resolved_config_is_what_print_config_prints(overrides, tmp_path):
    resolved = runner.resolved_config(QUICKSTART, overrides)
    printed = caer("fit", "--config", QUICKSTART, *overrides, "--print_config")
    assert printed.returncode == 0, printed.stderr
    assert resolved == yaml.safe_load(printed.stdout)

    given = yaml.safe_load(Path(QUICKSTART).read_text())
    if overrides:  # what the overrides set, and what they leave as the file says
        assert resolved["trainer"]["max_epochs"] == 2 and resolved["seed_everything"] is True
        optimizer = resolved["model"]["init_args"]["optimizer"]
        assert optimizer["class_path"] == "torch.optim.AdamW" and optimizer["init_args"]["lr"] == 1e-3
        assert resolved["data"]["init_args"]["image_size"] == 8
        del given["trainer"]["max_epochs"], given["model"]["init_args"]["optimizer"], given["seed_everything"]
        del given["data"]["init_args"]["image_size"]
    assert_contains(resolved, given)
    assert resolved["trainer"]["num_nodes"] == 1, "the defaults are filled in"

    # the dump is a config `caer fit` parses back to itself
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(yaml.safe_dump(resolved, sort_keys=False))
    again = caer("fit", "--config", str(dumped), "--print_config")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout) == resolved


def test_resolved_config_of_a_wrong_override_says_so():
    with pytest.raises(ValueError, match="could not resolve --config"):
        runner.resolved_config(QUICKSTART, ["--trainer.max_epochs=two"])


def test_reports_name_the_arms_by_what_they_run():
    quickstart = runner.resolved_config(QUICKSTART, [])
    vit = runner.resolved_config(str(ROOT / "configs" / "digits" / "vit_gelu.yaml"), [])
    assert runner.baseline_title(quickstart) == "ReLU (no callback)"
    assert runner.baseline_activation(vit) == "GELU"  # the ViT config swaps GELUs: its baseline keeps GELU
    assert runner.carelu_title(quickstart) == "CAReLU, default" == runner.carelu_title(vit)  # reduction picks layers
    assert runner.carelu_title(quickstart, {"lr_scale": 1.0}) == "CAReLU, `lr_scale=1.0`"
    assert runner.carelu_title(quickstart, {"lr_scale": None, "log_histograms": False}) == "CAReLU, default"
    tuned = json.loads(json.dumps(quickstart))
    tuned["trainer"]["callbacks"][0]["init_args"].update(K=3.0, eps=1e-5)
    assert runner.carelu_title(tuned, {"weight_decay": 0.01}) == "CAReLU, `K=3.0`, `eps=1e-05`, `weight_decay=0.01`"
    without = {"trainer": {"callbacks": [c for c in quickstart["trainer"]["callbacks"]
                                         if c["class_path"] != runner.CALLBACK]}}
    assert runner.baseline_activation(without) == "ReLU" and runner.carelu_title(without) == "CAReLU, default"
    assert runner.tested_weights(quickstart) == "checkpoint with the best val_acc"
    no_monitor = json.loads(json.dumps(quickstart))
    for callback in no_monitor["trainer"]["callbacks"]:
        if callback["class_path"].endswith(".ModelCheckpoint"):
            callback["init_args"]["monitor"] = None
    assert runner.tested_weights(no_monitor) == "final weights" == runner.tested_weights({})
