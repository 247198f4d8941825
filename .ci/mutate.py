"""Mutation testing, one module group at a time: `python .ci/mutate.py GROUP [GROUP ...]` (or `--list`).

Runs mutmut (pip install -e ".[mutation]") in a scratch copy of this checkout's working tree, mutating only
the group's files and running only the group's own test files (mutmut then runs, for each mutant, the tests
that execute the mutated function). Prints each group's score (killed / mutants) and its survivors; the copy is
removed afterwards unless --keep is given (then `cd COPY && mutmut show NAME` shows a survivor's diff).
Not part of CI: a group takes minutes to tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# group: (files mutated, test files run); paths relative to the repository root, patterns as mutmut's only_mutate
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "ops": (["caer_lightning/ops/*", "caer_lightning/functional.py"],
            ["tests/test_functional.py", "tests/test_triton.py", "tests/test_ops_edges.py", "tests/test_recompute.py"]),
    "recompute": (["caer_lightning/ops/recompute.py"], ["tests/test_recompute.py"]),
    "module": (["caer_lightning/activation.py", "caer_lightning/statistics.py"],
               ["tests/test_module_and_swap.py", "tests/test_export.py", "tests/test_dashboard.py"]),
    "swap": (["caer_lightning/swap.py", "caer_lightning/callsites/*"],
             ["tests/test_module_and_swap.py", "tests/test_call_sites.py", "tests/test_call_site_corpus.py"]),
    "optimizer": (["caer_lightning/param_groups.py", "caer_lightning/optim.py", "caer_lightning/lr_policy.py",
                   "caer_lightning/callbacks/lr_group.py"],
                  ["tests/test_param_groups.py", "tests/test_callback_parts.py", "tests/test_optim.py"]),
    "guards": (["caer_lightning/guards.py"], ["tests/test_guards.py", "tests/test_callback_parts.py"]),
    "dashboard": (["caer_lightning/dashboard.py", "caer_lightning/callbacks/monitor.py",
                   "caer_lightning/callbacks/heat_maps.py"],
                  ["tests/test_dashboard.py", "tests/test_callback_parts.py", "tests/test_dashboard_values.py"]),
    "checkpoint": (["caer_lightning/checkpoint.py", "caer_lightning/record.py", "caer_lightning/pretrained.py",
                    "caer_lightning/callbacks/checkpoint_check.py"],
                   ["tests/test_checkpoint.py"]),
    # not the data modules: mutmut's wrapper around __init__ hides its arguments from save_hyperparameters
    "tasks": (["caer_lightning/models/sr_metrics.py", "caer_lightning/ab.py"],
              ["tests/test_super_resolution.py", "tests/test_ab.py"]),
}


def mutmut_config(files: list[str], tests: list[str], fast: bool) -> str:
    """The [mutmut] section of setup.cfg for one group."""
    def lines(values: list[str]) -> str:
        return "".join(f"\n    {value}" for value in values)

    # torch.compile cannot trace mutmut's trampolines (the mutated functions' wrappers): compile tests stay out
    pytest_args = ["-p", "no:cacheprovider", "-q", "-k", "not compile"] + (["-m", "not slow"] if fast else [])
    return (
        "[mutmut]\n"
        "source_paths =\n    caer_lightning\n"
        f"only_mutate ={lines(files)}\n"
        f"also_copy =\n    tests/\n    configs/\n    benchmarks/\n"
        f"pytest_add_cli_args ={lines(pytest_args)}\n"
        f"pytest_add_cli_args_test_selection ={lines(tests)}\n"
        "mutate_only_covered_lines = true\n"
        "timeout_multiplier = 5.0\n"
    )


def copy_working_tree(destination: Path) -> None:
    """Tracked and untracked-but-not-ignored files, as they are now (uncommitted changes included)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def results(copy: Path) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=copy, check=True,
                         capture_output=True, text=True).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)


def run_group(name: str, children: int, fast: bool, keep: bool) -> tuple[int, int]:
    files, tests = GROUPS[name]
    copy = Path(tempfile.mkdtemp(prefix=f"caer-mutate-{name}-"))
    try:
        copy_working_tree(copy)
        (copy / "setup.cfg").write_text(mutmut_config(files, tests, fast))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log = copy / "mutmut-run.log"
        with log.open("w") as out:  # mutmut's progress line is long: kept in the copy, not on the terminal
            done = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
                                  cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"mutmut failed for group {name!r} (exit {done.returncode}); end of its log:\n{tail}")
        statuses = results(copy)
        killed = sum(status in ("killed", "timeout", "caught by type check") for status in statuses.values())
        print(f"{name}: {killed}/{len(statuses)} killed ({100 * killed / max(len(statuses), 1):.1f}%)")
        for mutant, status in sorted(statuses.items()):
            if status not in ("killed", "timeout", "caught by type check"):
                print(f"    {status}: {mutant}")
        return killed, len(statuses)
    finally:
        if keep:
            print(f"    copy kept at {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"any of: {', '.join(GROUPS)}")
    parser.add_argument("--list", action="store_true", help="show each group's files and tests")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 1, help="parallel mutants")
    parser.add_argument("--fast", action="store_true", help="leave out the tests marked slow (a lower score)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (to `mutmut show` survivors)")
    args = parser.parse_args(argv)
    unknown = [group for group in args.groups if group not in GROUPS]
    if unknown or not (args.groups or args.list):
        parser.error(f"groups={unknown or args.groups!r}: accepted values: {', '.join(GROUPS)}")
    if args.list:
        for group, (files, tests) in GROUPS.items():
            print(f"{group}: mutates {' '.join(files)}; runs {' '.join(tests)}")
        return
    try:
        import mutmut  # noqa: F401
    except ImportError:
        raise SystemExit('mutmut is not installed: pip install -e ".[mutation]"') from None
    for group in args.groups:
        run_group(group, args.children, args.fast, args.keep)


if __name__ == "__main__":
    main()
