"""What a `pip install` gives: every package and config inside the wheel, one version string, the imports declared,
and the shipped configs reachable by name (and by their checkout path) from outside a checkout."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from caer_lightning import shipped_configs

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_is_every_folder():
    packages = {p.parent.relative_to(ROOT).as_posix().replace("/", ".")
                for p in (ROOT / "caer_lightning").rglob("__init__.py")}
    packages |= {"caer_lightning." + p.relative_to(ROOT).as_posix().replace("/", ".")
                 for p in [ROOT / "configs", *(d for d in (ROOT / "configs").rglob("*") if d.is_dir())]}
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == packages


def test_shipped_configs_by_name_and_by_path(tmp_path, monkeypatch):
    expected = {p.relative_to(ROOT / "configs").with_suffix("").as_posix(): p.resolve()
                for p in (ROOT / "configs").rglob("*.yaml")}
    found = {name: path.resolve() for name, path in shipped_configs.available().items()}
    assert found == expected and "quickstart" in found and "cifar100/resnet18_carelu" in found
    monkeypatch.chdir(tmp_path)  # no configs/ here: README's path means the shipped file
    for spelling in ("quickstart", "quickstart.yaml", "configs/quickstart.yaml", "./configs/quickstart.yaml"):
        assert Path(shipped_configs.resolve(spelling)).resolve() == expected["quickstart"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text("seed_everything: 3\n")
    assert shipped_configs.resolve("configs/quickstart.yaml") == "configs/quickstart.yaml"  # a file of the user's wins
    assert shipped_configs.resolve("no_such_config") == "no_such_config"  # left for the parser to report
    assert shipped_configs.resolve_arguments(["fit", "--config"]) == ["fit", "--config"]  # the parser says what is missing
    assert shipped_configs.resolve_arguments(["--config=a=b"]) == ["--config=a=b"]  # split at the first "="
    argv = ["fit", "--config", "cifar100/resnet18_relu", "--config=digits/vit_gelu", "--trainer.max_epochs", "3"]
    assert shipped_configs.resolve_arguments(argv) == [
        "fit", "--config", str(shipped_configs.available()["cifar100/resnet18_relu"]),
        "--config=" + str(shipped_configs.available()["digits/vit_gelu"]), "--trainer.max_epochs", "3"]


def test_caer_configs_lists_them(capsys):
    shipped_configs.main([])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()][:-1]
    listed = {name: Path(path) for name, path in rows}
    assert listed == shipped_configs.available() and all(path.is_file() for path in listed.values())


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()  # PEP 503


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("caer_lightning-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_configs_types_and_declared_imports(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("caer_lightning/configs/") for n in names if n.startswith("caer_lightning/configs/")}
    assert shipped == {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert "caer_lightning/py.typed" in names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert re.search(r"^Version: (.+)$", text, re.M).group(1) == PYPROJECT["project"]["version"]
    required = {normalized(re.split(r"[<>=!;\[ ]", r)[0]) for r in re.findall(r"^Requires-Dist: (.+)$", text, re.M)}
    imported = set()
    for path in (ROOT / "caer_lightning").rglob("*.py"):
        imported |= set(re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M))
    third_party = imported - set(sys.stdlib_module_names) - {"caer_lightning", "__future__"}
    distribution = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow"}
    optional = {"triton", "transformers", "onnx", "onnxscript", "onnxruntime"}  # each import guarded, each tested
    missing = {normalized(distribution.get(m, m)) for m in third_party - optional} - required
    assert not missing, f"imported but not declared: {missing}"


@pytest.mark.slow
def test_the_wheel_runs_the_main_job_outside_a_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    run.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", "import caer_lightning; from caer_lightning import shipped_configs; "
                               "print(caer_lightning.__file__); print(caer_lightning.__version__); "
                               "print(shipped_configs.resolve('configs/quickstart.yaml'))"],
        capture_output=True, text=True, cwd=run, env=env, timeout=300)
    assert probe.returncode == 0, probe.stderr
    module, version, config = probe.stdout.split()
    assert Path(module).is_relative_to(target) and Path(config).is_relative_to(target)
    assert version == PYPROJECT["project"]["version"]
    fit = subprocess.run(
        [sys.executable, "-m", "caer_lightning.cli", "fit", "--config", "configs/quickstart.yaml",
         "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false"],
        capture_output=True, text=True, cwd=run, env=env, timeout=600)
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-3000:]
    assert "swapped 17 activations for CAReLU" in fit.stdout + fit.stderr


def test_the_declared_floors_are_what_the_minimum_leg_pins():
    from packaging.version import Version

    pins = dict(line.split("==") for line in (ROOT / ".ci" / "minimum.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    floors = {}
    for requirement in PYPROJECT["project"]["dependencies"]:
        if ">=" in requirement:
            name, floor = requirement.split(">=")
            floors[normalized(name.split("[")[0])] = Version(floor.split(",")[0])
    assert floors, "pyproject.toml declares no floor"
    pinned = {normalized(name): Version(version) for name, version in pins.items()}
    assert {name: pinned.get(name) for name in floors} == floors  # every floor is pinned in CI's minimum leg
    python_floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert "minimum) python=$(python_for " + python_floor + ")" in (ROOT / ".ci" / "run").read_text()
