"""`python scripts/benchmark.py renderer`: speed of the classical renderers, their agreement with the brute-force
reference, the cost of synthetic training samples, and the README picture.

1. A 1536×1024 render of Middlebury's motorcycle (scikit-image's ``data.stereo_motorcycle()``, ground-truth
   disparity, upscaled) at ``blur_px`` 32, per method: wall-clock and process CPU seconds, megapixels/s.
2. The brute-force per-pixel scatter (:mod:`magicbokeh.optics.reference`) on a central crop at the same blur, timed
   in the same run: speed ratio (seconds per megapixel, reference / fast) and the fast scatter's error on that crop.
3. Synthetic data cost on one thread: ``SyntheticSceneGenerator`` + ``render_scene`` at 256² and 512².
4. ``docs/images/renderer_grid.png``: AIF | disparity | bokeh at three K | polygon aperture with highlight boost;
   ``docs/images/optics_synthetic.png``: synthetic scenes with their layered ground truth beside single-image renders.

CPU seconds are printed beside wall-clock because the machine may be shared: CPU time / threads is what an idle
machine would show. The figures also go to ``results/renderer.json`` (``--results NAME`` / ``none``), with the
settings of the run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from magicbokeh.data.middlebury import load_stereo_motorcycle, motorcycle_focus
from magicbokeh.data.synthetic import SyntheticSceneGenerator, render_scene
from magicbokeh.optics.aperture import ApertureSpec
from magicbokeh.optics.coc import blur_px_for_K
from magicbokeh.optics.reference import render_scatter_reference
from magicbokeh.optics.render import DEFAULT_NUM_LAYERS, RENDER_METHODS, HighlightBoost, render_bokeh
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.files import atomic_path
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results

logger = get_logger(__name__)

GRID_PATH = Path("docs/images/renderer_grid.png")


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _with_threads(threads: int, fn):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def benchmark_full_frame(
    height: int, width: int, blur_px: float, num_layers: int, repeats: int, thread_counts: list[int]
) -> dict:
    """Best-of-``repeats`` full-frame render per method and thread count."""
    image, disparity = load_stereo_motorcycle((height, width))
    focus = motorcycle_focus(disparity)
    megapixels = height * width / 1e6
    results = {}
    for method in RENDER_METHODS:
        for threads in thread_counts:
            best = None
            for _ in range(repeats):
                _, wall, cpu = _with_threads(
                    threads,
                    lambda method=method: _timed(
                        lambda: render_bokeh(image, disparity, focus, blur_px, method=method, num_layers=num_layers)
                    ),
                )
                best = (wall, cpu) if best is None or wall < best[0] else best
            results[(method, threads)] = {"wall_s": best[0], "cpu_s": best[1]}
            print(
                f"  {method:8s} {width}×{height} blur_px {blur_px:g}, {threads} thread(s): {best[0]:.2f} s wall, "
                f"{best[1]:.2f} s CPU → {megapixels / best[0]:.3f} MP/s"
            )
    return results


def benchmark_reference(height: int, width: int, blur_px: float, crop: int, num_layers: int, full: dict) -> dict:
    """Brute force on a crop, one thread (it is a Python loop); ratios against the one-thread full-frame renders."""
    image, disparity = load_stereo_motorcycle((height, width))
    focus = motorcycle_focus(disparity)
    # A crop across the motorcycle's outline, so it holds both in-focus and strongly blurred pixels.
    top, left = int(0.30 * height), int(0.55 * width)
    image_crop = image[..., top : top + crop, left : left + crop]
    disparity_crop = disparity[..., top : top + crop, left : left + crop]
    reference, wall, _ = _with_threads(
        1, lambda: _timed(lambda: render_scatter_reference(image_crop[0], disparity_crop[0], focus, blur_px))
    )
    fast = render_bokeh(image_crop, disparity_crop, focus, blur_px, method="scatter", num_layers=num_layers)[0]
    exact = render_bokeh(
        image_crop, disparity_crop, focus, blur_px, method="scatter", num_layers=256, downsample=False
    )[0]
    reference_s_per_mp = wall / (crop * crop / 1e6)
    print(f"  brute-force scatter on a {crop}×{crop} crop, 1 thread: {wall:.2f} s → {reference_s_per_mp:.1f} s/MP")
    for (method, threads), numbers in full.items():
        if threads != 1:
            continue
        fast_s_per_mp = numbers["wall_s"] / (height * width / 1e6)
        print(f"  speed ratio {method:8s} (1 thread) vs brute force, s/MP: {reference_s_per_mp / fast_s_per_mp:.0f}×")
    error = (fast - reference).abs()
    exact_error = (exact - reference).abs()
    print(
        f"  fast scatter vs brute force on the crop: max |Δ| {error.max():.4f}, mean |Δ| {error.mean():.5f} "
        f"(256 slices, full resolution: max {exact_error.max():.4f}, mean {exact_error.mean():.5f})"
    )
    return {
        "crop": crop,
        "reference_s_per_megapixel": reference_s_per_mp,
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "max_abs_error_256_slices": float(exact_error.max()),
        "mean_abs_error_256_slices": float(exact_error.mean()),
    }


def benchmark_synthetic(sizes: tuple[int, ...], scenes: int, max_coc_px: float) -> dict[int, dict[str, float]]:
    """One thread, like a DataLoader worker; per size, mean seconds per sample."""
    return _with_threads(1, lambda: _benchmark_synthetic(sizes, scenes, max_coc_px))


def _benchmark_synthetic(sizes: tuple[int, ...], scenes: int, max_coc_px: float) -> dict[int, dict[str, float]]:
    costs = {}
    for size in sizes:
        generator_of_scenes = SyntheticSceneGenerator(size, size)
        generate_cpu = render_cpu = generate_wall = render_wall = 0.0
        for index in range(scenes):
            generator = torch.Generator().manual_seed(index)
            scene, wall, cpu = _timed(lambda g=generator, make=generator_of_scenes: make(g))
            generate_wall, generate_cpu = generate_wall + wall, generate_cpu + cpu
            K = 32.0 * (index + 1) / scenes
            blur = blur_px_for_K(K, max_coc_px * size / 512)
            focus = scene.meta["subject_disparity"]
            _, wall, cpu = _timed(lambda scene=scene, focus=focus, blur=blur: render_scene(scene, focus, blur))
            render_wall, render_cpu = render_wall + wall, render_cpu + cpu
        print(
            f"  synthetic {size}×{size} (1 thread, mean of {scenes}, K up to 32): generate "
            f"{generate_cpu / scenes:.3f} s CPU + render {render_cpu / scenes:.3f} s CPU = "
            f"{(generate_cpu + render_cpu) / scenes:.3f} s CPU per sample "
            f"(wall {(generate_wall + render_wall) / scenes:.3f} s)"
        )
        costs[size] = {
            "generate_cpu_s": generate_cpu / scenes,
            "render_cpu_s": render_cpu / scenes,
            "wall_s": (generate_wall + render_wall) / scenes,
        }
    return costs


def write_grid(path: Path, max_coc_px: float = 24.0) -> Path:
    """AIF | disparity | bokeh at K = 8, 16, 32 | hexagonal aperture with highlight boost, on the motorcycle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, disparity = load_stereo_motorcycle()
    focus = motorcycle_focus(disparity)
    panels = [("all-in-focus input", image[0]), ("ground-truth disparity (1 = near)", disparity[0])]
    for K in (8, 16, 32):
        bokeh = render_bokeh(image, disparity, focus, blur_px_for_K(K, max_coc_px))
        panels.append((f"layered, K = {K}", bokeh[0]))
    hexagon = render_bokeh(
        image, disparity, focus, blur_px_for_K(32, max_coc_px), aperture=ApertureSpec("polygon", 6, 90.0),
        highlight=HighlightBoost(),
    )  # fmt: skip
    panels.append(("6-blade aperture + highlights, K = 32", hexagon[0]))
    figure, axes = plt.subplots(2, 3, figsize=(15, 6.9))
    for axis, (title, picture) in zip(axes.flat, panels):
        if picture.shape[0] == 1:
            axis.imshow(picture[0].numpy(), cmap="magma", vmin=0.0, vmax=1.0)
        else:
            axis.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
        axis.set_title(title, fontsize=11)
        axis.axis("off")
    figure.suptitle(
        f"Middlebury motorcycle, focus on the fuel tank (d_f = {focus:.2f}), max_coc_px = {max_coc_px:g}", fontsize=12
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)
    return path


def write_synthetic_gallery(path: Path, rows: int = 3, size: int = 256, max_coc_px: float = 16.0) -> Path:
    """Synthetic scenes: AIF | disparity | subject mask | layered ground truth | single-image renderers.

    The last two columns render the same AIF + disparity as a photo would be rendered: they cannot see the content
    hidden behind the objects, which the layered ground truth uses for partial occlusion.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generator_of_scenes = SyntheticSceneGenerator(size, size)
    titles = ["all-in-focus", "disparity", "subject mask", "ground truth (layers)", "render_bokeh layered", "scatter"]
    figure, axes = plt.subplots(rows, len(titles), figsize=(2.6 * len(titles), 2.7 * rows), squeeze=False)
    for row in range(rows):
        scene = generator_of_scenes(torch.Generator().manual_seed(100 + row))
        # Focus alternately on the background and on the subject, at K = 32.
        focus = scene.meta["subject_disparity"] if row % 2 == 0 else float(scene.layer_disparity[0].median())
        blur = blur_px_for_K(32, max_coc_px)
        photo = (scene.image[None], scene.disparity[None], focus, blur)
        pictures = [
            scene.image,
            scene.disparity,
            scene.subject_mask.float(),
            render_scene(scene, focus, blur),
            render_bokeh(*photo, method="layered")[0],
            render_bokeh(*photo, method="scatter")[0],
        ]
        for column, (axis, picture) in enumerate(zip(axes[row], pictures)):
            if picture.shape[0] == 1:
                axis.imshow(picture[0].numpy(), cmap="magma" if column == 1 else "gray", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
            axis.set_title(titles[column] if row == 0 else "", fontsize=10)
            axis.axis("off")
    figure.suptitle(f"Synthetic layered scenes, {size}×{size}, K = 32, max_coc_px = {max_coc_px:g}", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)
    return path


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="scripts/benchmark.py renderer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--blur-px", type=float, default=32.0)
    parser.add_argument("--num-layers", type=int, default=DEFAULT_NUM_LAYERS)
    parser.add_argument("--crop", type=int, default=48, help="side of the crop the brute-force reference renders")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--synthetic-scenes", type=int, default=5)
    parser.add_argument("--grid", type=Path, default=GRID_PATH, help="README picture (the gallery goes beside it)")
    parser.add_argument("--no-grid", action="store_true", help="skip both pictures")
    add_results_option(parser, "renderer")
    args = parser.parse_args(argv)

    thread_counts = sorted({1, torch.get_num_threads()})
    print("Full frame:")
    full = benchmark_full_frame(args.height, args.width, args.blur_px, args.num_layers, args.repeats, thread_counts)
    print("Brute-force reference (same run):")
    reference = benchmark_reference(args.height, args.width, args.blur_px, args.crop, args.num_layers, full)
    print("Synthetic training samples:")
    synthetic = benchmark_synthetic((256, 512), args.synthetic_scenes, max_coc_px=24.0)
    if not args.no_grid:
        print(f"Wrote {_with_threads(1, lambda: write_grid(args.grid))}")
        gallery = args.grid.with_name("optics_synthetic.png")
        print(f"Wrote {_with_threads(1, lambda: write_synthetic_gallery(gallery))}")
    name = chosen_results_name(args.results)
    if name:
        print(f"Wrote {write_renderer_results(name, args, full, reference, synthetic)}")
    return 0


def write_renderer_results(
    name: str, args: argparse.Namespace, full: dict, reference: dict, synthetic: dict[int, dict[str, float]]
) -> Path:
    """The three measurements as tables: full-frame speed, agreement with the brute force, synthetic sample cost."""
    megapixels = args.height * args.width / 1e6
    full_rows = []
    for (method, threads), numbers in full.items():
        # The brute force runs on one thread: only one-thread renders are compared with it.
        s_per_mp = numbers["wall_s"] / megapixels
        speedup = reference["reference_s_per_megapixel"] / s_per_mp if threads == 1 else None
        full_rows.append([method, threads, numbers["wall_s"], numbers["cpu_s"], 1 / s_per_mp, speedup])
    reference_row = [
        reference["crop"],
        reference["reference_s_per_megapixel"],
        reference["max_abs_error"],
        reference["mean_abs_error"],
        reference["max_abs_error_256_slices"],
        reference["mean_abs_error_256_slices"],
    ]
    synthetic_rows = [
        [size, c["generate_cpu_s"], c["render_cpu_s"], c["generate_cpu_s"] + c["render_cpu_s"], c["wall_s"]]
        for size, c in synthetic.items()
    ]
    tables = {
        "full_frame": Table(
            ["method", "threads", "wall (s)", "CPU (s)", "MP/s", "× brute force"],
            full_rows,
            ["", "d", ".2f", ".2f", ".3f", ".0f"],
        ),
        "reference": Table(
            ["crop (px)", "brute force (s/MP)", "max abs Δ", "mean abs Δ", "max abs Δ (256)", "mean abs Δ (256)"],
            [reference_row],
            ["d", ".1f", ".4f", ".5f", ".4f", ".5f"],
        ),
        "synthetic": Table(
            ["size (px)", "generate, CPU (s)", "render, CPU (s)", "total, CPU (s)", "wall (s)"],
            synthetic_rows,
            ["d", ".3f", ".3f", ".3f", ".3f"],
        ),
    }
    settings = {
        "height": args.height,
        "width": args.width,
        "blur_px": args.blur_px,
        "num_layers": args.num_layers,
        "crop": args.crop,
        "repeats": args.repeats,
        "synthetic_scenes": args.synthetic_scenes,
    }
    figures = {
        "settings": settings,
        "full_frame": [{"method": method, "threads": threads, **values} for (method, threads), values in full.items()],
        "reference": reference,
        "synthetic": {str(size): costs for size, costs in synthetic.items()},
    }
    title = (
        f"classical renderers: {args.width}×{args.height} motorcycle at blur_px {args.blur_px:g}, brute-force "
        "agreement on a crop, synthetic sample cost"
    )
    return write_results(name, figures, title=title, tables=tables)
