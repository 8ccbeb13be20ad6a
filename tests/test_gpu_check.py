"""scripts/gpu_check.py: the dry run plans the same steps as the GPU check, and the orchestration records, times out
and hands back what it should (fake steps; the real dry run is ``bash scripts/gpu_check.sh --device cpu --quick``)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time

import pytest

from magicbokeh.utils.results import REPO_ROOT


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (scripts/ is no package); registered while in use, as dataclasses need."""
    spec = importlib.util.spec_from_file_location("gpu_check_script", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _options(argv: list[str]) -> dict[str, str]:
    return {flag: value for flag, value in itertools.pairwise(argv) if flag.startswith("--")}


def test_the_dry_run_runs_every_step_of_the_gpu_check(gpu_check, tmp_path):
    full = gpu_check.plan("cuda", quick=False, junit_xml=tmp_path / "t.xml")
    dry = gpu_check.plan("cpu", quick=True, junit_xml=tmp_path / "t.xml")
    assert [s.name for s in full] == [s.name for s in dry] == [
        "tests", "model", "training", "speed", "inference", "degradation"
    ]  # fmt: skip
    for gpu_step, cpu_step in zip(full, dry):
        # Same program and subcommand; only the device and the sizes differ.
        assert gpu_step.argv[1:3] == cpu_step.argv[1:3]
        if gpu_step.name != "tests":
            assert _options(gpu_step.argv)["--device"] == "cuda" and _options(cpu_step.argv)["--device"] == "cpu"
            assert set(_options(cpu_step.argv)) <= set(_options(gpu_step.argv)) | {"--dtype"}
    by_name = {step.name: _options(step.argv) for step in full}
    assert by_name["model"]["--tokens"] == "4096" and by_name["model"]["--dtype"] == "float16"
    assert by_name["training"]["--sd21-size"] == "512" and by_name["training"]["--mixed-precision"] == "bf16"
    assert by_name["speed"]["--size"] == "512" and by_name["inference"]["--sizes"] == "2048x1536"
    assert sum(step.timeout_s for step in full) <= 900


def test_the_tests_step_collects_every_file_with_gpu_tests(gpu_check):
    files = gpu_check.gpu_test_files()
    for expected in ("tests/data/test_degradations.py", "tests/models/test_attention.py",
                     "tests/inference/test_precision.py"):  # fmt: skip
        assert expected in files
    assert "tests/test_gpu_check.py" not in files and "tests/utils/test_results.py" not in files


def test_wheel_pins_come_from_constraints(gpu_check):
    pins = gpu_check.pinned_versions()
    for distribution in ("diffusers", "hydra-core", "omegaconf", "antlr4-python3-runtime", "peft", "torch"):
        assert pins[distribution]


def test_junit_counts(gpu_check, tmp_path):
    xml = tmp_path / "tests.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>')
    assert gpu_check.test_counts(xml) == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2, "passed": 2}
    assert gpu_check.test_counts(tmp_path / "missing.xml") is None


def test_a_step_past_its_timeout_is_ended_with_its_children(gpu_check, tmp_path):
    marker = tmp_path / "child_alive"
    child = f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    step = gpu_check.Step("sleep", [sys.executable, "-c", parent], 1, "sleeps")
    with open(tmp_path / "log", "w") as log:
        start = time.monotonic()
        status, code = gpu_check.run_step(step, 1.0, dict(), gpu_check.Tee(log))
    assert status == "timeout" and code is None and time.monotonic() - start < 10
    time.sleep(4)
    assert not marker.exists()  # the grandchild went with the step


def test_main_records_steps_results_and_hands_them_to_out(gpu_check, tmp_path, monkeypatch):
    writer = (
        "import os, sys; from magicbokeh.utils.results import write_results; "
        "write_results('fake', {'x': 1}, title='fake benchmark')"
    )
    steps = [
        gpu_check.Step("writes", [sys.executable, "-c", writer], 60, "writes a results file"),
        gpu_check.Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], 60, "exits 3"),
        gpu_check.Step("late", [sys.executable, "-c", "pass"], 60, "never fits the budget", min_s=10**6),
    ]
    monkeypatch.setattr(gpu_check, "plan", lambda device, quick, junit_xml: steps)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_check.main(["--device", "cpu", "--quick", "--budget", "120", "--results-dir", str(tmp_path / "r")]) == 1
    summary = json.loads((tmp_path / "r" / "gpu_check.json").read_text())
    records = {record["step"]: record for record in summary["figures"]["steps"]}
    assert records["writes"]["status"] == "ok" and records["writes"]["results"] == ["fake.json"]
    assert records["fails"]["status"] == "failed" and records["fails"]["exit_code"] == 3
    assert records["late"]["status"] == "skipped (time budget)"
    assert records["imports"]["status"] == "ok"
    assert summary["command"] == "bash scripts/gpu_check.sh --device cpu --quick"
    assert json.loads((tmp_path / "r" / "fake.json").read_text())["title"] == "fake benchmark"
    out = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert out == ["gpu_check.json", "gpu_check.log", "gpu_check_results.tar.gz"]
    assert "=== fails: failed" in (tmp_path / "r" / "gpu_check.log").read_text()


def test_a_machine_that_cannot_run_the_check_gets_one_line_and_nothing_written(gpu_check, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--results-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --device cuda but torch {torch.__version__} sees no CUDA device here; the dry run of the same steps "
        "is --device cpu --quick"
    ]
    assert not (tmp_path / "out").exists()
    assert gpu_check.device_problem("cpu") is None
