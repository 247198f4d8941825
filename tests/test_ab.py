"""`caer ab`: a paired ReLU/CAReLU run over seeds, its report, JSON and plot, resuming, and failures."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from caer_lightning import ab

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TINY = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=1", "--data.init_args.image_size=8", "--data.init_args.batch_size=16",
        "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("ab")
    results = ab.main(["--config", QUICKSTART, "--seeds", "2", "--out", str(out), *TINY])
    return out, results


@pytest.mark.slow
def test_json_has_both_arms_for_both_seeds_consistent_with_run_logs(two_seeds):
    out, results = two_seeds
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(results["runs"]))
    assert sorted((r["seed"], r["arm"]) for r in saved["runs"]) == [(0, "carelu"), (0, "relu"), (1, "carelu"), (1, "relu")]
    for run in saved["runs"]:
        assert run["status"] == "ok"
        run_dir = out / f"seed{run['seed']}" / run["arm"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run["val_acc"] == metrics["val_acc"] and len(run["val_acc"]) == 2
        assert run["final_val_acc"] == metrics["val_acc"][-1] and run["test_acc"] == metrics["test_acc"]
        (event_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
        events = EventAccumulator(str(event_dir))
        events.Reload()
        logged = [e.value for e in events.Scalars("val_acc")]
        assert logged == pytest.approx(run["val_acc"], abs=1e-6), "the run's own TensorBoard log agrees"
        swapped = "carelu/model.act1/energy_ratio" in events.Tags()["scalars"]
        assert swapped == (run["arm"] == "carelu")
    by = {(r["seed"], r["arm"]): r for r in saved["runs"]}
    differences = [by[(s, "carelu")]["test_acc"] - by[(s, "relu")]["test_acc"] for s in (0, 1)]
    summary = saved["summary"]
    assert summary["difference_test_acc"]["mean"] == pytest.approx(statistics.fmean(differences))
    assert summary["difference_test_acc"]["low"] <= summary["difference_test_acc"]["mean"] <= summary["difference_test_acc"]["high"]
    assert summary["params_added"] == 2 * 17  # α and β for each of ResNet-18's 17 ReLUs
    assert summary["ratio_step_seconds_median"] > 0 and summary["ratio_peak_memory_bytes"] > 0


@pytest.mark.slow
def test_report_table_and_plot(two_seeds):
    out, _ = two_seeds
    report = (out / "report.md").read_text()
    for row in ("| final val accuracy |", "| test accuracy (checkpoint with the best val_acc) |",
                "| step time (ms) |", "| peak memory (process RSS, MiB) |", "| parameters |", "| 0 | ReLU | ok |",
                "| 1 | CAReLU | ok |", "| | ReLU | CAReLU | CAReLU − ReLU (95% CI) | ratio |"):
        assert row in report
    assert "the same seed and data order: ReLU (no callback) and CAReLU, default." in report
    assert "95% CI" in report and "+34" in report
    image = Image.open(out / "val_acc.png")
    assert image.size[0] >= 600 and image.size[1] >= 400


@pytest.mark.slow
def test_both_arms_of_a_seed_see_the_same_batches(two_seeds):
    out, _ = two_seeds
    batches = {(s, arm): json.loads((out / f"seed{s}" / arm / "metrics.json").read_text())["batches"]
               for s in (0, 1) for arm in ab.ARMS}
    assert len(batches[(0, "relu")]) == 6  # 3 batches × 2 epochs
    for seed in (0, 1):
        assert batches[(seed, "relu")] == batches[(seed, "carelu")]
    assert batches[(0, "relu")] != batches[(1, "relu")], "the fingerprint must tell different orders apart"


@pytest.mark.slow
def test_rerun_skips_finished_runs(two_seeds, capsys):
    out, results = two_seeds
    result_file = out / "seed1" / "carelu" / "result.json"
    result_file.unlink()  # as if `caer ab` had been interrupted during this run
    again = ab.main(["--config", QUICKSTART, "--seeds", "2", "--out", str(out), *TINY])
    printed = capsys.readouterr().out
    assert printed.count("(the same configuration, finished before)") == 3
    assert "[4/4] seed 1, CAReLU, default: done" in printed
    assert f"[1/4] seed 0, ReLU (no callback): reused from {out / 'seed0' / 'relu'}" in printed
    assert [r["status"] for r in again["runs"]] == ["ok"] * 4


@pytest.mark.slow
def test_another_experiment_in_the_same_out_stops_before_training(two_seeds, capsys):
    """README's sweeps one after another into one folder: the second must not report the first one's numbers."""
    out, _ = two_seeds
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=r"caer ab: .*seed0/relu holds a finished run of another experiment "
                                         r"\(recorded -> now: config\.model\.init_args\.optimizer\.init_args\.lr: "
                                         r"0\.05 -> 0\.01\)\. .*pass another --out"):
        ab.main(["--config", QUICKSTART, "--seeds", "2", "--out", str(out), *TINY,
                 "--model.init_args.optimizer.init_args.lr=0.01"])
    assert "[1/4]" not in capsys.readouterr().out  # nothing ran, nothing was reused
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_run_recorded_without_its_configuration_is_not_reused(tmp_path):
    from caer_lightning.runner import RunMismatch, differences, finished_run, run_key

    run_dir = tmp_path / "seed0" / "relu"
    run_dir.mkdir(parents=True)
    key = run_key({"model": {"lr": 0.1}}, "relu", 0, "relu", None)
    assert finished_run(run_dir, key) is None  # nothing there
    (run_dir / "result.json").write_text(json.dumps({"status": "failed", "key": key}))
    assert finished_run(run_dir, key) is None  # a failed run is run again
    (run_dir / "result.json").write_text(json.dumps({"status": "ok", "test_acc": 0.5}))
    with pytest.raises(RunMismatch, match="written before runs recorded their configuration"):
        finished_run(run_dir, key)
    (run_dir / "result.json").write_text(json.dumps({"status": "ok", "test_acc": 0.5, "key": key}))
    assert finished_run(run_dir, key)["reused_from"] == str(run_dir)
    other = run_key({"model": {"lr": 0.1}}, "carelu", 1, "carelu-lr_scale=1", {"lr_scale": 1.0})
    assert differences(key, other) == [
        "arm: 'relu' -> 'carelu'", "callback_args.lr_scale: '(absent)' -> 1.0", "label: 'relu' -> 'carelu-lr_scale=1'",
        "seed: 0 -> 1"]


@pytest.mark.slow
def test_a_failing_arm_is_reported(tmp_path):
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"] == "caer_lightning.CAReLUCallback":
            callback["init_args"]["include"] = "no_such_layer"  # matches nothing: the CAReLU arm must fail
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match=r"^caer ab: 1 of 2 runs failed"):
        ab.main(["--config", str(path), "--seeds", "1", "--out", str(tmp_path / "out"), *TINY])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    status = {r["arm"]: r["status"] for r in results["runs"]}
    assert status == {"relu": "ok", "carelu": "failed"}
    error = results["runs"][1]["error"]
    assert error.startswith("exit code 1: ") and "matched no module" in error
    assert error.endswith("or widen include/exclude.")  # the whole reason, not cut
    assert results["runs"][1]["log"].endswith("seed0/carelu/output.log")
    assert results["summary"]["failed"][0]["arm"] == "carelu" and results["summary"]["paired_seeds"] == []
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 0 | CAReLU | **failed**" in report


def visible_xticks(axes) -> list[float]:
    low, high = axes.get_xlim()
    return [float(t) for t in axes.get_xticks() if low <= t <= high]


def test_plot_integer_epochs_thin_seeds_thick_means():
    from caer_lightning.ab import ARM_COLOURS, plot_figure

    runs = [dict(seed=s, arm=a, status="ok", val_acc=[v + s * 0.01]) for s in range(3)
            for a, v in (("relu", 0.5), ("carelu", 0.6))]
    axes = plot_figure(runs).axes[0]
    assert visible_xticks(axes) == [1]  # one epoch: no fractional ticks
    lines = axes.get_lines()
    thick = [l for l in lines if l.get_linewidth() > 2]
    thin = [l for l in lines if l.get_linewidth() < 1]
    assert len(thin) == 6 and len(thick) == 2
    for line, arm in zip(thick, ARM_COLOURS):
        assert line.get_color() == ARM_COLOURS[arm]
        expected = (0.5 if arm == "relu" else 0.6) + 0.01
        assert list(line.get_ydata()) == [pytest.approx(expected)]  # the mean of seeds 0, 1, 2
    assert ARM_COLOURS["relu"] != ARM_COLOURS["carelu"]


def test_plot_many_epochs_few_integer_ticks():
    from caer_lightning.ab import plot_figure

    runs = [dict(seed=0, arm=a, status="ok", val_acc=[0.5 + 0.01 * e for e in range(30)]) for a in ab.ARMS]
    ticks = visible_xticks(plot_figure(runs).axes[0])
    assert all(t == int(t) for t in ticks) and 3 <= len(ticks) <= 11, ticks  # not one tick per epoch


def test_paired_difference_is_the_paired_t_interval():
    carelu, relu = [0.91, 0.88, 0.935, 0.90, 0.87], [0.89, 0.885, 0.90, 0.86, 0.872]
    differences = [c - r for c, r in zip(carelu, relu)]
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    result = ab.paired_difference(carelu, relu)
    assert result == {"mean": pytest.approx(mean), "low": pytest.approx(mean - half),
                      "high": pytest.approx(mean + half), "n": 5}
    assert ab.paired_difference([], []) == {"mean": None, "low": None, "high": None, "n": 0}
    assert ab.paired_difference([0.9], [0.8]) == {"mean": pytest.approx(0.1), "low": None, "high": None, "n": 1}
    same = ab.paired_difference([0.9, 0.8], [0.8, 0.7])  # no spread: the interval is the mean
    assert same["low"] == pytest.approx(0.1) and same["high"] == pytest.approx(0.1)


SR_CONFIG = {"trainer": {"callbacks": [
    {"class_path": "caer_lightning.CAReLUCallback"},
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_psnr", "mode": "max"}}]}}
LOSS_CONFIG = {"trainer": {"callbacks": [
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss"}}]}}


def test_the_metric_comes_from_the_config_or_the_options():
    assert ab.choose_metric({}) == ab.Metric("val_acc", "max", "the default")
    assert ab.choose_metric(SR_CONFIG) == ab.Metric("val_psnr", "max", "the config's ModelCheckpoint")
    assert ab.choose_metric(LOSS_CONFIG) == ab.Metric("val_loss", "min", "the config's ModelCheckpoint")  # Lightning's default mode
    assert ab.choose_metric(SR_CONFIG).test == "test_psnr" and ab.Metric("val/ssim").test == "test/ssim"
    assert ab.choose_metric(SR_CONFIG, "val_ssim", "max") == ab.Metric("val_ssim", "max", "--metric")
    assert ab.choose_metric(SR_CONFIG, "val_psnr") == ab.Metric("val_psnr", "max", "--metric")  # the monitor's mode
    for metric, mode, message in ((None, "max", r"--mode='max' without --metric"),
                                  ("val_ssim", None, r"--metric='val_ssim' needs --mode: accepted values: max"),
                                  ("val_psnr", "up", r"--mode='up': accepted values: max, min"),
                                  ("test_psnr", "max", r"--metric='test_psnr', mode='max': accepted values: a "
                                                       r"validation metric whose name starts with 'val'")):
        with pytest.raises(ValueError, match=message):
            ab.choose_metric(SR_CONFIG, metric, mode)


def sr_run(seed: int, arm: str, psnr: float, loss: float) -> dict:
    return dict(seed=seed, arm=arm, status="ok", step_seconds_median=0.1, peak_memory_bytes=2**30, params=100,
                val_metrics=[{"val_psnr": psnr - 1.0, "val_loss": loss + 0.1}, {"val_psnr": psnr, "val_loss": loss}],
                test_metrics={"test_psnr": psnr + 0.5, "test_loss": loss, "test_psnr_bicubic": 30.0})


def test_summary_and_report_of_a_higher_is_better_metric():
    runs = [sr_run(s, arm, 31.0 + s * 0.1 + (0.2 + 0.01 * s if arm == "carelu" else 0), 0.02) for s in range(3)
            for arm in ab.ARMS]
    metric = ab.choose_metric(SR_CONFIG)
    summary = ab.summarize(runs, metric)
    assert summary["relu"]["test_psnr"][0] == pytest.approx(31.6)
    assert summary["difference_test_psnr"]["mean"] == pytest.approx(0.21)
    assert summary["difference_final_val_psnr"]["mean"] == pytest.approx(0.21)
    assert summary["other_test"]["test_psnr_bicubic"]["relu"] == (30.0, 0.0)
    assert summary["other_test"]["test_psnr_bicubic"]["difference"]["mean"] == 0.0
    assert summary["metric"] == {"val": "val_psnr", "mode": "max", "source": "the config's ModelCheckpoint",
                                 "test": "test_psnr"}
    report = ab.markdown("configs/sr/espcn_x2_carelu.yaml", 3, runs, summary, SR_CONFIG, metric)
    assert ("Metric: val_psnr (from the config's ModelCheckpoint), tested as test_psnr; higher is better, so a "
            "positive difference favours CAReLU. On test_psnr CAReLU is better than ReLU over 3 paired seeds") in report
    assert "| test_psnr (checkpoint with the best val_psnr) | 31.6000 ± 0.1000 | 31.8100 ± 0.1100 | +0.2100 [" in report
    assert "| final val_psnr |" in report and "| test_psnr_bicubic | 30.0000 ± 0.0000 | 30.0000 ± 0.0000 |" in report
    assert "| seed | arm | status | final val_psnr | test_psnr | step (ms) |" in report
    assert "| 1 | CAReLU | ok | 31.3100 | 31.8100 | 100.0 |" in report
    axes = ab.plot_figure(runs, "ReLU", metric).axes[0]
    assert axes.get_ylabel() == "val_psnr (higher is better)" and "val_psnr" in axes.get_title()
    assert [list(line.get_ydata()) for line in axes.get_lines() if line.get_linewidth() > 2][0] == \
        pytest.approx([30.1, 31.1])  # ReLU's mean curve over the 3 seeds
    assert ab.plot_name(metric) == "val_psnr.png" and ab.plot_name(ab.Metric("val/psnr")) == "val_psnr.png"


def test_the_report_wording_follows_lower_is_better():
    metric = ab.choose_metric(LOSS_CONFIG)
    for carelu_loss, said in ((0.5, "CAReLU is worse than ReLU"), (0.1, "CAReLU is better than ReLU")):
        runs = [sr_run(s, "relu", 31.0, 0.3 + 0.01 * s) for s in range(3)]
        runs += [sr_run(s, "carelu", 31.0, carelu_loss + 0.02 * s) for s in range(3)]
        report = ab.markdown("c.yaml", 3, runs, ab.summarize(runs, metric), LOSS_CONFIG, metric)
        assert "lower is better, so a negative difference favours CAReLU" in report
        assert f"On test_loss {said} over 3 paired seeds: the 95% interval excludes zero." in report
    same = [sr_run(s, arm, 31.0, 0.3 + (0.01 if (arm == "carelu") == (s % 2 == 0) else -0.01)) for s in range(4)
            for arm in ab.ARMS]
    assert "the 95% interval straddles zero over 4 paired seeds: no difference shown" in ab.markdown(
        "c.yaml", 4, same, ab.summarize(same, metric), LOSS_CONFIG, metric)


def test_classifier_records_of_before_val_metrics_still_report():
    """Runs recorded before RunRecorder kept every metric (val_acc and test_acc only) are still summarised."""
    runs = [dict(seed=s, arm=a, status="ok", val_acc=[0.5, 0.9], test_acc=0.8 + (0.01 if a == "carelu" else 0),
                 step_seconds_median=0.1, peak_memory_bytes=1, params=10) for s in range(2) for a in ab.ARMS]
    summary = ab.summarize(runs)
    assert summary["relu"]["final_val_acc"] == (0.9, 0.0)
    assert summary["difference_test_acc"]["mean"] == pytest.approx(0.01) and summary["other_test"] == {}


@pytest.mark.slow
def test_ab_on_the_super_resolution_config_pairs_psnr(tmp_path):
    config = str(Path(__file__).parents[1] / "configs" / "sr" / "espcn_x2_carelu.yaml")
    tiny = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--data.init_args.train_patches=32",
            "--trainer.enable_progress_bar=false"]
    results = ab.main(["--config", config, "--seeds", "1", "--out", str(tmp_path), *tiny])
    summary = results["summary"]
    assert summary["metric"]["val"] == "val_psnr" and summary["metric"]["mode"] == "max"
    relu, carelu = (r for r in results["runs"])
    for run in (relu, carelu):
        assert run["status"] == "ok" and len(run["val_metrics"]) == 1
        assert set(run["test_metrics"]) == {"test_loss", "test_psnr", "test_ssim", "test_psnr_bicubic", "test_ssim_bicubic"}
    assert relu["test_metrics"]["test_psnr_bicubic"] == carelu["test_metrics"]["test_psnr_bicubic"]  # the same floor
    assert summary["params_added"] == 4  # α, β of ESPCN's 2 ReLUs
    report = (tmp_path / "report.md").read_text()
    assert "| test_psnr (checkpoint with the best val_psnr) |" in report and "| test_psnr_bicubic |" in report
    assert (tmp_path / "val_psnr.png").is_file() and not (tmp_path / "val_acc.png").exists()
