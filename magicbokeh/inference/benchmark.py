"""Inference benchmark: peak memory and time vs image size, tiled vs untiled, and the seam error of real tiles.

    python scripts/benchmark.py inference                                   # default sweep (CPU: a few minutes)
    python scripts/benchmark.py inference --network pointwise --sizes 2048x1536,8000x6000
    python scripts/benchmark.py inference --network tiny --sizes 64x64,128x128 --tile 64 --stride 32
    python scripts/benchmark.py inference --seam --tile 64 --stride 32      # tiny model, two overlapping tiles
    python scripts/benchmark.py inference --small-images --results inference_small_images   # padding: old vs new

Every measurement runs in a fresh child process, so its peak resident memory (``VmHWM``) belongs to that run
alone. ``extra`` is the peak minus the process's peak before the image existed (imports, network): the image,
maps, accumulators, colour fix, and, untiled, the network's activations. It is also given in units of one
float32 RGB image of the output size (``× img``): a pipeline whose memory is bounded by the tile stays at a
constant multiple as the image grows, while the untiled baseline (``--tile 0``, measured in the same run) grows
with its activations. On a GPU the peak device memory (``torch.cuda.max_memory_allocated``) is reported too.

Networks: ``pointwise`` (a per-pixel stand-in with no cost: isolates the pipeline's own memory, feasible at 48 MP
on a CPU) and ``tiny`` (``configs/model/tiny.yaml``, random weights: the real architecture, small sizes only on a
CPU). ``--io`` goes through the CLI's file path (read PNG → render → write PNG) instead of an in-memory image.

``--small-images`` times the pipeline on photos whose upsampled size is smaller than a tile on at least one side,
both ways in the same run: the former path (``pad_small_to_tile``: a short side mirror-padded to a whole tile) and
the current one (padded to the model stride only); ``ratio`` = old time / new time. Its defaults are the tiny
network with 128-px tiles on 32×32 and 80×53 photos at ×2 and ×4: the tile-to-image ratios of the render CLI's
512-px tiles on 128×128 and 320×213 photos (those take minutes per tile on a CPU; pass ``--tile 512 --stride 256
--sizes 128x128,320x213`` where there is time or a GPU). ``--results NAME`` writes ``results/NAME.json``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from magicbokeh.errors import ParameterError
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.results import chosen_results_name

DEFAULT_SIZES = {
    "pointwise": "1024x768,2048x1536,4096x3072,8000x6000",
    "tiny": "64x64,128x128,192x192",
}
DEFAULT_TILES = {"pointwise": (512, 256), "tiny": (64, 32)}
SMALL_IMAGE_SIZES = "32x32,80x53"
SMALL_IMAGE_SCALES = "2,4"
SMALL_IMAGE_TILE = (128, 64)


class PointwiseNetwork(torch.nn.Module):
    """Per-pixel stand-in for the network (darkens by the defocus): the pipeline's memory without activations."""

    stride = 8

    def forward(self, images: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        return images * (1.0 - 0.5 * defocus)


class GradientDepth:
    """Disparity rising left → right (a stand-in depth model; costs one map)."""

    def predict_disparity(self, images: torch.Tensor) -> torch.Tensor:
        width = images.shape[-1]
        ramp = torch.linspace(0.0, 1.0, width, dtype=torch.float32).view(1, 1, 1, width)
        return ramp.expand(images.shape[0], 1, images.shape[-2], width).contiguous()


def build_tiny_network() -> torch.nn.Module:
    """The tiny MagicBokeh network of ``configs/model/tiny.yaml`` with seeded random weights."""
    from hydra.utils import instantiate

    from magicbokeh.utils.config import compose_config

    torch.manual_seed(0)
    return instantiate(compose_config("train", ["model=tiny"]).model)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    ``VmHWM`` where the kernel provides it: ``ru_maxrss`` survives ``exec`` and so starts at the parent's RSS at
    ``fork``, which would hide a child's own peak whenever the parent was bigger.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024.0)  # bytes on macOS, kilobytes elsewhere


def _smooth_photo(height: int, width: int) -> torch.Tensor:
    """A smooth synthetic ``1×3×H×W`` photo (cheap at 48 MP, compresses well as PNG)."""
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    phases = torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1)
    return 0.5 + 0.4 * torch.sin(6.0 * xs + 4.0 * ys + phases)


def run_child(settings: dict) -> dict:
    """One measurement (in this process): build the network, then render one image and report peak memory."""
    from magicbokeh.inference.pipeline import MagicBokehPipeline

    network = build_tiny_network() if settings["network"] == "tiny" else PointwiseNetwork()
    tile = settings["tile"] or None
    pipeline = MagicBokehPipeline(
        network,
        GradientDepth(),
        tile_size=tile,
        tile_stride=settings["stride"] if tile else None,
        color_fix=settings["color_fix"],
        device=settings["device"],
        pad_small_to_tile=settings.get("pad_small_to_tile", False),
        progress=False,
    )
    scale = settings.get("scale", 1.0)
    width, height = settings["size"]
    device = torch.device(settings["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_rss_mb()
    start = time.perf_counter()
    if settings.get("input_file"):
        from magicbokeh.inference.batch import RenderOptions, render_inputs

        options = RenderOptions(K=16.0, scale=scale, focus=0.5)
        render_inputs(pipeline, settings["input_file"], settings["output_dir"], options)
    else:
        pipeline(_smooth_photo(height, width), focus=0.5, K=16.0, scale=scale)
    seconds = time.perf_counter() - start
    result = {"before_mb": before, "peak_mb": _peak_rss_mb(), "seconds": seconds}
    if device.type == "cuda":
        result["device_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def measure(
    size: tuple[int, int],
    *,
    network: str = "pointwise",
    tile: int = 512,
    stride: int = 256,
    color_fix: str = "adain",
    device: str = "cpu",
    io: bool = False,
    scale: float = 1.0,
    pad_small_to_tile: bool = False,
    timeout_s: float | None = None,
) -> dict:
    """Run one measurement of a ``(width, height)`` image in a fresh process; ``tile=0`` means untiled."""
    settings = {
        "size": list(size), "network": network, "tile": tile, "stride": stride, "color_fix": color_fix,
        "device": device, "scale": scale, "pad_small_to_tile": pad_small_to_tile,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mb_inference_bench_") as folder:
        if io:
            from magicbokeh.data.io import write_image

            settings["input_file"] = str(write_image(Path(folder) / "photo.png", _smooth_photo(size[1], size[0])))
            settings["output_dir"] = str(Path(folder) / "out")
        completed = subprocess.run(
            [sys.executable, "-m", "magicbokeh.inference.benchmark", "--child", json.dumps(settings)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"benchmark child failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        if io:
            result["output_exists"] = (Path(folder) / "out" / "photo.png").is_file()
    image_mb = round(size[0] * scale) * round(size[1] * scale) * 3 * 4 / 2**20
    result.update(settings, extra_mb=result["peak_mb"] - result["before_mb"], image_mb=image_mb)
    result["extra_images"] = result["extra_mb"] / image_mb
    return result


def seam_error(tile: int = 64, stride: int = 32, network: str = "tiny") -> dict[str, float]:
    """Disagreement of two overlapping tiles of the tiny network on a real photo (scikit-image's astronaut)."""
    import torch.nn.functional as F
    from skimage import data

    from magicbokeh.inference.tiling import overlap_disagreement
    from magicbokeh.optics.defocus import defocus_map

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255.0
    photo = F.interpolate(photo, size=(tile, tile + stride), mode="bilinear", antialias=True, align_corners=False)
    defocus = defocus_map(GradientDepth().predict_disparity(photo), 0.5, 16.0)
    model = build_tiny_network().eval() if network == "tiny" else PointwiseNetwork()
    with torch.inference_mode():
        return overlap_disagreement(model, [photo.clamp(0, 1), defocus], tile_size=tile, tile_stride=stride)


def small_image_speedup(
    sizes: list[tuple[int, int]],
    scales: list[float],
    *,
    network: str = "tiny",
    tile: int = SMALL_IMAGE_TILE[0],
    stride: int = SMALL_IMAGE_TILE[1],
    device: str = "cpu",
) -> list[dict]:
    """Time the former (pad to a tile) and the current (pad to the stride) path on each size × scale; one row each."""
    rows = []
    for width, height in sizes:
        for scale in scales:
            common = {"network": network, "tile": tile, "stride": stride, "device": device, "scale": scale}
            old = measure((width, height), pad_small_to_tile=True, **common)
            new = measure((width, height), pad_small_to_tile=False, **common)
            out_w, out_h = round(width * scale), round(height * scale)
            row = {
                "input": f"{width}x{height}", "scale": scale, "output": f"{out_w}x{out_h}",
                "old_seconds": old["seconds"], "new_seconds": new["seconds"], "ratio": old["seconds"] / new["seconds"],
                "old_peak_mb": old["peak_mb"], "new_peak_mb": new["peak_mb"],
            }  # fmt: skip
            print(
                f"{row['input']:>9} ×{scale:g} → {row['output']:>9}: old {old['seconds']:8.2f} s, "
                f"new {new['seconds']:8.2f} s, ratio {row['ratio']:6.2f}",
                flush=True,
            )
            rows.append(row)
    return rows


def _write_small_image_results(name: str, rows: list[dict], settings: dict) -> Path:
    from magicbokeh.utils.results import Table, write_results

    table = Table(
        ["input", "scale", "output", "old path (s)", "new path (s)", "speed-up"],
        [[r["input"], r["scale"], r["output"], r["old_seconds"], r["new_seconds"], r["ratio"]] for r in rows],
        ["", "g", "", ".2f", ".2f", ".1f"],
    )
    return write_results(
        name,
        {"settings": settings, "rows": rows},
        title="Inference time of photos smaller than a tile: padded to a whole tile (old) vs to the model stride (new)",
        tables={"speedup": table},
        notes=(
            "Each time is one pipeline call (network on every tile, blending, colour fix) in a fresh process, the "
            f"{settings['network']} network with random weights, tiles {settings['tile']}/{settings['stride']}; "
            "the old path mirror-pads an image side shorter than a tile to the whole tile, the new one pads it to "
            "the model stride only. Both paths run in the same invocation; speed-up = old / new."
        ),
    )


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError as error:
            raise ParameterError(f"sizes are WIDTHxHEIGHT separated by commas, got {item!r}") from error
        sizes.append((width, height))
    return sizes


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(item) for item in text.split(",")]
    except ValueError as error:
        raise ParameterError(f"scales are numbers separated by commas, got {text!r}") from error
    if any(scale <= 0 for scale in scales):
        raise ParameterError(f"scales must be positive, got {text!r}")
    return scales


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="benchmark.py inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=("pointwise", "tiny"), help="default pointwise (tiny: --small-images)")
    parser.add_argument("--sizes", help="WIDTHxHEIGHT,… (default depends on --network)")
    parser.add_argument("--tile", type=int, help="tile size (default 512 pointwise, 64 tiny); 0 = untiled only")
    parser.add_argument("--stride", type=int)
    parser.add_argument("--baseline-max-pixels", type=int, default=None, help="skip the untiled baseline above this")
    parser.add_argument("--color-fix", default="adain")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--io", action="store_true", help="read/write PNG files through the CLI code path")
    parser.add_argument("--seam", action="store_true", help="only report the tiny network's seam error")
    parser.add_argument(
        "--small-images", action="store_true", help="time small photos padded to a tile (old) vs to the stride (new)"
    )
    parser.add_argument("--scales", default=None, help=f"--small-images: output scales (default {SMALL_IMAGE_SCALES})")
    parser.add_argument(
        "--results", default=None,
        help="write results/NAME.json (default: 'inference' for the memory sweep, none for --small-images; 'none')",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.small_images:
        network = args.network or "tiny"
        tile = SMALL_IMAGE_TILE[0] if args.tile is None else args.tile
        stride = (tile // 2) if args.stride is None else args.stride
        sizes = _parse_sizes(args.sizes or SMALL_IMAGE_SIZES)
        scales = _parse_scales(args.scales or SMALL_IMAGE_SCALES)
        print(f"network={network} device={args.device} tile={tile}/{stride}: old pads to a tile, new to the stride")
        rows = small_image_speedup(sizes, scales, network=network, tile=tile, stride=stride, device=args.device)
        if chosen_results_name(args.results):
            settings = {"network": network, "tile": tile, "stride": stride, "device": args.device}
            print(f"wrote {_write_small_image_results(chosen_results_name(args.results), rows, settings)}")
        return 0

    args.network = args.network or "pointwise"
    default_tile, default_stride = DEFAULT_TILES["tiny" if args.seam else args.network]
    tile = default_tile if args.tile is None else args.tile
    stride = default_stride if args.stride is None else args.stride
    if args.seam:
        errors = seam_error(tile, stride)
        print(f"seam error, tiny network, tiles {tile}/{stride}, astronaut: " + json.dumps(errors))
        return 0
    sizes = _parse_sizes(args.sizes or DEFAULT_SIZES[args.network])
    baseline_max = args.baseline_max_pixels
    if baseline_max is None:  # the untiled tiny network is quadratic in attention: keep it feasible on a CPU
        baseline_max = 256 * 256 if args.network == "tiny" else 10**9
    print(f"network={args.network} device={args.device} tile={tile}/{stride} color_fix={args.color_fix} io={args.io}")
    header = f"{'size':>11} {'mode':>8} {'time s':>8} {'peak MB':>9} {'extra MB':>9} {'× img':>6} {'ratio':>6}"
    print(header + ("  device MB" if args.device.startswith("cuda") else ""))
    common = {"network": args.network, "color_fix": args.color_fix, "device": args.device, "io": args.io}
    measured = []
    for size in sizes:
        rows = []
        if tile:
            rows.append(("tiled", measure(size, tile=tile, stride=stride, **common)))
        if size[0] * size[1] <= baseline_max:
            rows.append(("untiled", measure(size, tile=0, stride=0, **common)))
        untiled = dict(rows).get("untiled")
        for mode, result in rows:
            ratio = (
                f"{result['extra_mb'] / untiled['extra_mb']:6.2f}" if untiled and untiled["extra_mb"] > 0 else "     -"
            )
            line = (
                f"{size[0]:>5}x{size[1]:<5} {mode:>8} {result['seconds']:8.2f} {result['peak_mb']:9.0f} "
                f"{result['extra_mb']:9.0f} {result['extra_images']:6.2f} {ratio}"
            )
            if "device_peak_mb" in result:
                line += f"  {result['device_peak_mb']:9.0f}"
            print(line, flush=True)
            ratio_value = result["extra_mb"] / untiled["extra_mb"] if untiled and untiled["extra_mb"] > 0 else None
            measured.append({"width": size[0], "height": size[1], "mode": mode, "ratio_to_untiled": ratio_value,
                             **result})  # fmt: skip
    print("extra = peak RSS − RSS before the image; × img = extra / (W·H·3·4 bytes); ratio = extra / untiled extra")
    name = chosen_results_name("inference" if args.results is None else args.results)
    if name:
        settings = {"network": args.network, "tile": tile, "stride": stride, "color_fix": args.color_fix,
                    "device": args.device, "io": args.io}  # fmt: skip
        print(f"wrote {_write_memory_results(name, measured, settings)}")
    return 0


def _write_memory_results(name: str, rows: list[dict], settings: dict) -> Path:
    from magicbokeh.utils.results import Table, write_results

    columns = ["image", "mode", "time (s)", "peak RSS (MB)", "extra (MB)", "extra (× image)", "extra / untiled"]
    device = str(settings["device"]).startswith("cuda")
    if device:
        columns.append("device peak (MB)")
    table_rows = []
    for row in rows:
        cells = [f"{row['width']}×{row['height']}", row["mode"], row["seconds"], row["peak_mb"], row["extra_mb"],
                 row["extra_images"], row["ratio_to_untiled"]]  # fmt: skip
        table_rows.append(cells + ([row.get("device_peak_mb")] if device else []))
    table = Table(columns, table_rows, ["", "", ".2f", ".0f", ".0f", ".2f", ".2f"] + ([".0f"] if device else []))
    return write_results(
        name,
        {"settings": settings, "rows": rows},
        title=f"Tiled inference: peak memory and time vs image size ({settings['network']} network, "
        f"{settings['device']})",
        tables={"memory": table},
        notes=(
            "Each row is one pipeline call in a fresh process; extra = peak resident memory minus the process's "
            "peak before the image existed; × image = extra / one float32 RGB image of the output size. A pipeline "
            "bounded by its tile keeps × image constant as the image grows; the untiled baseline is measured in the "
            "same invocation where it fits."
        ),
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(run_child(json.loads(sys.argv[2]))))
    else:
        sys.exit(main(sys.argv[1:]))
