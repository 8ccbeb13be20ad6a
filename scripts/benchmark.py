"""Benchmarks, one subcommand per room: `python scripts/benchmark.py <name> [--help] [options]`.

Each prints ratios against a baseline measured in the same run (never a timed assertion in tests) and writes its
figures to results/<name>.json with the command, commit and hardware (--results NAME to rename, --results none to
skip; magicbokeh/utils/results.py). The studies of the smoke recipe are scripts/study_*.py.

  renderer     classical bokeh renderers vs the brute-force reference          (magicbokeh.data.renderer_benchmark)
  degradation  Real-ESRGAN degradation throughput, samples/s/core             (magicbokeh.data.benchmark)
  degradation-presets  PSNR of LQ vs HQ, ours vs OSEDiff's engine, same params (magicbokeh.data.degradation_presets)
  model        FAMA vs dense attention; full-size forward time                  (magicbokeh.models.benchmark)
  training     training steps/s per phase: smoke network and SD2.1-sized network (magicbokeh.training.benchmark)
  inference    peak memory and time vs image size for the tiled pipeline       (magicbokeh.inference.benchmark)
  speed        unified model vs two-stage baselines: latency, memory, FLOPs    (magicbokeh.evaluation.speed)
  metrics      SSIM: separable window vs the direct 11×11 window, same values  (magicbokeh.evaluation.metric_benchmark)
  readme       every README command as the docs test runs it: exit code, time  (magicbokeh.utils.readme_commands)
"""

from __future__ import annotations

import importlib
import sys

from magicbokeh.errors import ConfigError
from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults

BENCHMARKS = {
    "renderer": "magicbokeh.data.renderer_benchmark",
    "degradation": "magicbokeh.data.benchmark",
    "degradation-presets": "magicbokeh.data.degradation_presets",
    "model": "magicbokeh.models.benchmark",
    "training": "magicbokeh.training.benchmark",
    "inference": "magicbokeh.inference.benchmark",
    "speed": "magicbokeh.evaluation.speed",
    "metrics": "magicbokeh.evaluation.metric_benchmark",
    "readme": "magicbokeh.utils.readme_commands",
}


@exit_on_user_error
def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        given = f"unknown benchmark '{argv[0]}'" if argv else "no benchmark named"
        raise ConfigError(f"{given}; choose one of {', '.join(BENCHMARKS)} (see scripts/benchmark.py --help)")
    set_offline_defaults()
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
