"""The GPU check: the gpu-marked tests and every benchmark on one device, each figure in a results file.

Run it through ``scripts/gpu_check.sh`` (= ``make gpu-check``), which first installs the carried wheels (``.whl/``,
``make gpu-wheels``) and puts them on ``PYTHONPATH``. The steps, in order of importance (a step that would start
with less of ``--budget`` left than it needs is skipped and recorded as such; one that overruns its time is stopped):

  imports      the packages every step needs, with their versions and where they were imported from
  tests        ``pytest -m gpu`` over every test file holding gpu-marked tests (CUDA degradations, FAMA backends
               vs the dense reference in fp16, fp16/bf16 network and pipeline vs fp32); without CUDA they skip
  model        ``benchmark.py model``: every FAMA backend vs the dense reference at 4096 and 1024 tokens (fp16 on
               CUDA), the fastest picked; the SD2.1-sized network's 512² tile with it (fp16 on CUDA)
  training     ``benchmark.py training``: SD2.1-sized network, 512², bf16 autocast: steps/s and peak memory per phase
  speed        ``benchmark.py speed``: one 512² tile of the SD2.1-sized network, unified vs two-stage pipelines
  inference    ``benchmark.py inference``: a tiled 2048×1536 image through MagicBokehPipeline (512-px tiles)
  degradation  ``benchmark.py degradation``: Real-ESRGAN degradations on the device

``--device cpu --quick`` is the dry run: the same steps with the same code at toy sizes, in float32. Every
benchmark writes its own results file into ``--results-dir`` (``$MAGICBOKEH_RESULTS_DIR`` for the children); this
script adds ``gpu_check.json`` (each step's status, time, results files and the test counts, with the environment)
and ``gpu_check.log`` (everything printed). When ``$OUT`` is set, the log, the summary and a ``.tar.gz`` of the
results folder are copied there.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
SITE_ENV = "MAGICBOKEH_GPU_CHECK_SITE"  # set by gpu_check.sh: the folder the carried wheels were installed into

# What the steps import, by import name → distribution (the carried wheels cover what the GPU machine lacks).
PACKAGES = {
    "torch": "torch",
    "diffusers": "diffusers",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "peft": "peft",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface-hub",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "pytest": "pytest",
}


@dataclasses.dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int  # the most this step may take
    what: str
    min_s: int = 60  # the least it needs: with less of the budget left it is skipped, not started


def benchmark(*args: str) -> list[str]:
    return [sys.executable, "scripts/benchmark.py", *args]


def gpu_test_files(tests_dir: Path = REPO_ROOT / "tests") -> list[str]:
    """Every test file that holds a gpu-marked test (collecting only these keeps the CPU-only suites' imports out)."""
    files = [path for path in sorted(tests_dir.rglob("test_*.py")) if "pytest.mark.gpu" in path.read_text()]
    return [str(path.relative_to(REPO_ROOT)) for path in files]


def plan(device: str, quick: bool, junit_xml: Path) -> list[Step]:
    """The steps for ``device``; ``quick`` keeps each step and its code path and shrinks only the sizes."""
    cuda = device.startswith("cuda")
    # Step timeouts are sized for the GPU machine (16 cores); the CPU dry run builds the same SD2.1-sized networks
    # on however few cores it has.
    slack = 1 if cuda else 8
    tests = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit_xml}"]
    if quick:
        # In float32: bf16 autocast and half-precision weights are emulated on most CPUs (one SD2.1-sized bf16
        # training step at 64² took ~8 minutes on a 2-core CPU); the autocast + GradScaler code path is covered by
        # tests/training/test_benchmark.py, the half-precision forward by the precision tests.
        model = ["--tokens", "256", "64", "--repeats", "1", "--size", "64", "--full-repeats", "1"]
        training = ["--sd21-size", "64", "--sd21-steps", "1", "--steps", "1", "--mixed-precision", "no"]
        speed = ["--arch", "sd21", "--size", "64", "--repeats", "1", "--warmup", "0"]
        inference = ["--network", "tiny", "--sizes", "96x64", "--tile", "64", "--stride", "32"]
        degradation = ["--size", "64", "--samples", "2"]
    else:
        model = ["--tokens", "4096", "1024", "--repeats", "10", "--size", "512", "--full-repeats", "3"]
        training = ["--sd21-size", "512", "--sd21-steps", "3", "--steps", "3", "--mixed-precision", "bf16"]
        speed = ["--arch", "sd21", "--size", "512", "--repeats", "5", "--warmup", "2"]
        inference = ["--network", "tiny", "--sizes", "2048x1536", "--tile", "512", "--stride", "256"]
        degradation = ["--size", "512", "--samples", "20"]
    dtype = ["--dtype", "float16"] if cuda else []
    return [
        Step("tests", [*tests, *gpu_test_files()], 180 * slack, "gpu-marked tests"),
        Step("model", benchmark("model", "--device", device, *dtype, *model), 150 * slack, "FAMA backends; 512² tile"),
        Step("training", benchmark("training", "--device", device, *training), 180 * slack, "training step per phase"),
        Step("speed", benchmark("speed", "--device", device, *speed), 120 * slack, "512² tile, unified vs two-stage"),
        Step("inference", benchmark("inference", "--device", device, *inference), 120 * slack, "tiled 2048×1536"),
        Step("degradation", benchmark("degradation", "--device", device, *degradation), 90 * slack, "degradations"),
    ]


def check_imports() -> dict[str, dict]:
    """Import every package the steps need; version, origin (a carried wheel or the machine's) and any error."""
    site = os.environ.get(SITE_ENV)
    report = {}
    for module_name, distribution in PACKAGES.items():
        entry: dict = {"distribution": distribution}
        try:
            module = importlib.import_module(module_name)
            origin = str(Path(getattr(module, "__file__", "") or "").resolve())
            entry["version"] = importlib.metadata.version(distribution)
            entry["carried"] = bool(site) and origin.startswith(str(Path(site).resolve()))
        except Exception as error:  # any import failure is the finding, whatever its type
            entry["error"] = f"{type(error).__name__}: {error}"
        report[module_name] = entry
    return report


def describe_import(entry: dict, pin: str | None) -> str:
    if "error" in entry:
        return entry["error"]
    where = "carried wheel" if entry["carried"] else "this machine"
    differs = "" if pin in (None, entry["version"]) else f"; constraints.txt pins {pin}"
    return f"{entry['version']} ({where}{differs})"


def pinned_versions(constraints: Path = REPO_ROOT / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in constraints.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_counts(junit_xml: Path) -> dict[str, int] | None:
    """passed/failed/errors/skipped from pytest's JUnit XML (None when pytest wrote none)."""
    if not junit_xml.is_file():
        return None
    root = ElementTree.parse(junit_xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in keys}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


class Tee:
    """Lines to the console and the log file, flushed as they come (the caller sees progress live)."""

    def __init__(self, log: TextIO):
        self.log = log
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.log.write(text)
            self.log.flush()


_running: list[subprocess.Popen] = []


def _stop_running_step(signum, frame) -> None:
    """SIGTERM/SIGINT: end the running step's process group too, then exit (nothing is left running)."""
    for process in _running:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def run_step(step: Step, timeout_s: float, env: dict[str, str], tee: Tee) -> tuple[str, int | None]:
    """Run one step, streaming its output; ``(status, exit code)`` with status ok / failed / timeout."""
    process = subprocess.Popen(
        step.argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Its own process group (in this session, so whoever ends the session ends it): a timeout or a signal ends
        # the step's children too.
        process_group=0,
    )  # fmt: skip
    _running[:] = [process]

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tee.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(timeout=5)
        return "timeout", None
    reader.join(timeout=5)
    return ("ok" if code == 0 else "failed"), code


def results_written_since(directory: Path, since: float) -> list[str]:
    return sorted(path.name for path in directory.glob("*.json") if path.stat().st_mtime >= since)


def copy_to_out(results_dir: Path, out: Path, names: list[str]) -> list[str]:
    """The log, the summary and the whole results folder as one archive (the device tool returns ≤ 8 files)."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if (results_dir / name).is_file():
            shutil.copy2(results_dir / name, out / name)
            copied.append(name)
    archive = out / "gpu_check_results.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(results_dir, arcname=results_dir.name)
    copied.append(archive.name)
    return copied


def device_problem(device: str) -> str | None:
    """Why this interpreter cannot run the check on ``device`` (None when it can)."""
    try:
        import torch
    except ImportError:
        return f"{sys.executable} cannot import torch: set PYTHON to an interpreter that has it"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return (f"--device {device} but torch {torch.__version__} sees no CUDA device here; "
                "the dry run of the same steps is --device cpu --quick")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the dry run)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: the same steps, minutes on a CPU")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for all steps together (default 450 on CUDA, 3 h on a CPU)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=None,
        help="where the results files go (default results/gpu for the full check, outputs/gpu_check otherwise)",
    )  # fmt: skip
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (names as listed above)")
    args = parser.parse_args(argv)
    problem = device_problem(args.device)
    if problem:  # before anything is written: a machine that cannot run the check gets one line, not 450 s of failures
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    if args.budget is None:
        args.budget = 450.0 if args.device.startswith("cuda") else 3 * 3600.0
    signal.signal(signal.SIGTERM, _stop_running_step)
    signal.signal(signal.SIGINT, _stop_running_step)
    full_check = args.device.startswith("cuda") and not args.quick
    default_dir = REPO_ROOT / ("results/gpu" if full_check else "outputs/gpu_check")
    results_dir = (args.results_dir or default_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MAGICBOKEH_RESULTS_DIR=str(results_dir), PYTHONUNBUFFERED="1")
    with open(results_dir / "gpu_check.log", "w", encoding="utf-8") as log, tempfile.TemporaryDirectory() as scratch:
        tee = Tee(log)
        junit_xml = Path(scratch) / "tests.xml"
        steps = plan(args.device, args.quick, junit_xml)
        if args.only:
            unknown = sorted(set(args.only) - {step.name for step in steps})
            if unknown:
                parser.error(f"unknown steps {unknown}; choose from {[step.name for step in steps]}")
            steps = [step for step in steps if step.name in args.only]
        tee.write(f"GPU check on {args.device}{' (quick)' if args.quick else ''}: results in {results_dir}\n")
        imports = check_imports()
        pins = pinned_versions()
        for module_name, entry in imports.items():
            tee.write(f"  {module_name:<16}{describe_import(entry, pins.get(entry['distribution']))}\n")
        records = [{
            "step": "imports", "what": "packages the steps need", "status":
            "failed" if any("error" in entry for entry in imports.values()) else "ok",
            "seconds": time.monotonic() - started, "command": None, "exit_code": None, "results": [],
        }]  # fmt: skip
        for step in steps:
            remaining = args.budget - (time.monotonic() - started)
            command = shlex.join(["python", *step.argv[1:]])
            record = {"step": step.name, "what": step.what, "command": command, "exit_code": None, "results": []}
            if remaining < step.min_s:
                record.update(status="skipped (time budget)", seconds=0.0)
                tee.write(f"\n=== {step.name}: skipped, {remaining:.0f} s of the budget left\n")
                records.append(record)
                continue
            tee.write(f"\n=== {step.name}: {step.what}\n$ {command}\n")
            step_start_wall, step_start = time.time(), time.monotonic()
            status, code = run_step(step, min(step.timeout_s, remaining), env, tee)
            seconds = time.monotonic() - step_start
            written = results_written_since(results_dir, step_start_wall - 1)
            record.update(status=status, exit_code=code, seconds=seconds, results=written)
            tee.write(f"=== {step.name}: {status} in {seconds:.0f} s; results files: {', '.join(written) or 'none'}\n")
            records.append(record)
        counts = test_counts(junit_xml)
        summary = write_summary(results_dir, args, records, imports, counts)
        tee.write("\nGPU check summary\n")
        for record in records:
            files = ", ".join(record["results"]) or "–"
            tee.write(f"  {record['step']:<12}{record['status']:<22}{record['seconds']:>7.0f} s   {files}\n")
        # A benchmark that ran but left no results file has figures only in the log.
        silent = [r["step"] for r in records if r["step"] not in ("imports", "tests") and r["status"] == "ok"
                  and not r["results"]]  # fmt: skip
        if silent:
            tee.write(f"  wrote no results file: {', '.join(silent)}\n")
        if counts is not None:
            tee.write(
                f"  tests: {counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
                f"{counts['skipped']} skipped\n"
            )
        tee.write(f"  summary: {summary}\n  total {time.monotonic() - started:.0f} s\n")
    if os.environ.get("OUT"):
        copied = copy_to_out(results_dir, Path(os.environ["OUT"]), ["gpu_check.json", "gpu_check.log"])
        print(f"copied to $OUT: {', '.join(copied)}")
    failed = [record["step"] for record in records if record["status"] != "ok"]
    return 1 if failed else 0


def write_summary(results_dir: Path, args: argparse.Namespace, records: list[dict], imports: dict,
                  counts: dict | None) -> Path:  # fmt: skip
    from magicbokeh.utils.results import Table, write_results

    table = Table(
        ["step", "what", "status", "seconds", "results files"],
        [[r["step"], r["what"], r["status"], r["seconds"], ", ".join(r["results"]) or None] for r in records],
        ["", "", "", ".0f", ""],
    )
    arguments = ["--device", args.device] + (["--quick"] if args.quick else [])
    figures = {"device": args.device, "quick": args.quick, "budget_s": args.budget, "steps": records,
               "tests": counts, "packages": imports}  # fmt: skip
    return write_results(
        "gpu_check", figures, title=f"GPU check on {args.device}{' (quick dry run)' if args.quick else ''}",
        tables={"steps": table}, command=shlex.join(["bash", "scripts/gpu_check.sh", *arguments]),
        out_dir=results_dir,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
