"""Build training folders and benchmarks: `python scripts/make_dataset.py <subcommand> [options]`.

  synthetic            N synthetic scenes → image/ disparity/ mask/ bokeh/ (RenderedBokehDataset layout)
  synthetic-benchmark  synthetic scenes × focus rules × K with exact ground truth → index.json benchmark
  ebb400-lq            EBB400-LQ from an EBB! folder (+ disparity maps, optional focus masks) → benchmark
  sr-benchmark         RealSR / DRealSR HR+LR folders → SR benchmark (LR resized to HR size, K = 0)
  middlebury           Middlebury 2014 "motorcycle" (scikit-image's offline copy) → motorcycle.png + motorcycle.npy

Every build is seeded and resumable: rerun the same command after an interruption and finished items are kept.
Degradations are the presets in configs/degradation/ (`--degradation realesrgan|zoom|osediff|none`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magicbokeh.utils.cli import ArgumentParser, exit_on_user_error, set_offline_defaults
from magicbokeh.utils.config import compose_config


def _degradation(name: str):
    """The preset's degradation and its description for the benchmark's index (compared with checkpoints')."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from magicbokeh.data import builders

    config = compose_config("train", [f"degradation={name}"]).degradation
    return instantiate(config), builders.describe_degradation(name, OmegaConf.to_container(config, resolve=True))


def _write_middlebury(out: Path) -> Path:
    """The motorcycle photo as PNG and its disparity (our convention: [0, 1], 1 = nearest) as .npy."""
    import numpy as np

    from magicbokeh.data.io import write_image
    from magicbokeh.data.middlebury import load_stereo_motorcycle
    from magicbokeh.utils.files import atomic_path

    image, disparity = load_stereo_motorcycle()
    write_image(out / "motorcycle.png", image)
    with atomic_path(out / "motorcycle.npy") as temp_path:
        np.save(temp_path, disparity[0, 0].numpy())
    return out


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="make_dataset.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    synthetic = commands.add_parser("synthetic", help="write synthetic training scenes to disk")
    synthetic.add_argument("--out", type=Path, required=True)
    synthetic.add_argument("--count", type=int, default=1000)
    synthetic.add_argument("--size", type=int, default=512)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--max-coc-px", type=float, default=24.0, help="CoC radius at defocus 1 (pixels)")
    synthetic.add_argument("--K-range", type=float, nargs=2, default=(2.0, 32.0))
    synthetic.add_argument("--texture-dir", type=Path, default=None, help="photos used as scene textures")

    bench = commands.add_parser("synthetic-benchmark", help="synthetic benchmark with exact ground truth")
    bench.add_argument("--out", type=Path, required=True)
    bench.add_argument("--scenes", type=int, default=24)
    bench.add_argument("--size", type=int, default=256)
    bench.add_argument("--K", type=float, nargs="+", default=(8.0, 16.0, 32.0))
    bench.add_argument("--focus", nargs="+", default=("subject", "background"), choices=("subject", "background"))
    bench.add_argument("--max-coc-px", type=float, default=12.0)
    bench.add_argument("--degradation", default="realesrgan")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--texture-dir", type=Path, default=None)

    ebb = commands.add_parser("ebb400-lq", help="EBB400-LQ from an EBB! folder")
    ebb.add_argument("--ebb-root", type=Path, required=True, help="folder with original/ and bokeh/")
    ebb.add_argument(
        "--disparity-dir", type=Path, default=None,
        help="one disparity map per wide photo (default none: evaluation estimates it from the LQ input, as the paper)",
    )  # fmt: skip
    ebb.add_argument("--mask-dir", type=Path, default=None, help="focus annotations (else the pair-agreement rule)")
    ebb.add_argument("--out", type=Path, required=True)
    ebb.add_argument("--count", type=int, default=400)
    ebb.add_argument("--ids-file", type=Path, default=None, help="fixed list of pair ids, one per line")
    ebb.add_argument("--K", type=float, default=16.0)
    ebb.add_argument("--degradation", default="realesrgan")
    ebb.add_argument("--seed", type=int, default=0)

    sr = commands.add_parser("sr-benchmark", help="RealSR / DRealSR layout → SR benchmark")
    sr.add_argument("--hr-dir", type=Path, required=True)
    sr.add_argument("--lr-dir", type=Path, default=None, help="defaults to --hr-dir (RealSR: *_HR and *_LR4 together)")
    sr.add_argument("--out", type=Path, required=True)
    sr.add_argument("--name", default="realsr")

    middlebury = commands.add_parser("middlebury", help="a real photo with ground-truth disparity, for render.py")
    middlebury.add_argument("--out", type=Path, required=True)
    return parser


@exit_on_user_error
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)  # before the heavy imports: a mistyped option fails at once
    set_offline_defaults()
    from magicbokeh.data import builders

    if args.command == "middlebury":
        out = _write_middlebury(args.out)
    elif args.command == "synthetic":
        scene = {"texture_dir": str(args.texture_dir)} if args.texture_dir else None
        out = builders.write_synthetic_folder(
            args.out, args.count, args.size, seed=args.seed, max_coc_px=args.max_coc_px, K_range=args.K_range,
            scene=scene,
        )  # fmt: skip
    elif args.command == "synthetic-benchmark":
        scene = {"texture_dir": str(args.texture_dir)} if args.texture_dir else None
        degradation, info = _degradation(args.degradation)
        out = builders.build_synthetic_benchmark(
            args.out, degradation, num_scenes=args.scenes, size=args.size, K_values=args.K,
            focus_rules=args.focus, seed=args.seed, max_coc_px=args.max_coc_px, scene=scene, degradation_info=info,
        )  # fmt: skip
    elif args.command == "ebb400-lq":
        ids = None
        if args.ids_file is not None:
            ids = [line.strip() for line in args.ids_file.read_text().splitlines() if line.strip()]
        degradation, info = _degradation(args.degradation)
        out = builders.build_ebb400_lq(
            args.ebb_root, args.out, degradation, disparity_dir=args.disparity_dir,
            mask_dir=args.mask_dir, count=args.count, seed=args.seed, ids=ids, K=args.K, degradation_info=info,
        )  # fmt: skip
    else:
        out = builders.build_sr_benchmark(args.hr_dir, args.lr_dir or args.hr_dir, args.out, name=args.name)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
