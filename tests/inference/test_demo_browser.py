"""The demo in a real browser: ``scripts/demo.py`` in a subprocess, driven by headless Chromium (Debian's package).

What a user does — open the page, click on a near object, then on the far background, drag K to 0, upload a
non-image, a photo with no depth, its disparity map — and what they see, read back from the images the page shows.
Every request the page makes is recorded: none may leave the local server.

Screenshots of each step are written to the test's tmp folder (printed; ``pytest -s`` shows the path).
``--demo-screenshot docs/images/demo.png`` also writes the README's screenshot.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magicbokeh.data.io import tensor_to_uint8_array
from magicbokeh.data.middlebury import load_stereo_motorcycle
from magicbokeh.data.transforms import upsample
from magicbokeh.utils.serving import free_port, stop_process, wait_until_serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a server and a browser start: ~1 min on 2 busy cores

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Playwright adds --headless itself; the rest keep Chromium from phoning home (updates, sync, field trials) and
# from needing a GPU or a sandbox-capable kernel (CI containers run as root).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INPUT_PIXEL_CAP = 100_000  # the motorcycle (741×500) is a sample; uploads above this are refused
WINDOW = 31  # side of the square where sharpness is measured (pixels)


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: the server and the browser
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python scripts/demo.py`` on a free port with no weights at all (the depth weights point nowhere, relative to
    the repository, so the page reads as on a fresh clone)."""
    folder = tmp_path_factory.mktemp("demo_server")
    port = free_port()
    command = [
        sys.executable, str(ROOT / "scripts" / "demo.py"), f"server.port={port}", "ui.scale=1", "ui.K=16",
        f"limits.max_input_pixels={INPUT_PIXEL_CAP}", "depth_model.weights=weights/absent/da-depth",
        f"output={folder / 'out'}", f"hydra.run.dir={folder / 'run'}",
    ]  # fmt: skip
    env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / "gradio"), HF_HUB_OFFLINE="1")
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        if not wait_until_serving(url, process, timeout_s=300):
            state = "did not answer" if process.poll() is None else f"exited with {process.returncode}"
            pytest.fail(f"the demo {state} on {url}:\n{log_path.read_text()[-3000:]}")
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def browser_page(tmp_path):
    """A fresh headless Chromium profile; yields ``(page, urls)``, ``urls`` being every request the page made."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1150},
        )
        urls: list[str] = []
        context.on("request", lambda request: urls.append(request.url))
        page = context.new_page()
        page.on("websocket", lambda socket: urls.append(socket.url))
        page.set_default_timeout(180_000)  # a render on 2 busy cores can take a while
        try:
            yield page, urls
        finally:
            context.close()


# --------------------------------------------------------------------------------------------------------------------
# Helpers: what the page shows
# --------------------------------------------------------------------------------------------------------------------
def wait_for_answer(page, previous: str) -> str:
    """The status line once it holds a new finished answer (a render or an ``error:`` line)."""
    page.wait_for_function(
        """previous => {
            const text = document.querySelector('#status')?.innerText.trim() ?? '';
            return text !== previous && (text.includes('rendered in') || text.startsWith('error:')
                                         || text.includes('refocus sweep:'));
        }""",
        arg=previous,
    )
    return page.inner_text("#status").strip()


def shown_image(page, element_id: str, previous_src: str | None = None) -> tuple[np.ndarray, str]:
    """The picture ``#element_id`` shows, fetched from the server as the page fetched it (``H×W×3`` uint8)."""
    locator = page.locator(f"#{element_id} img").first
    page.wait_for_function(
        """([id, previous]) => {
            const img = document.querySelector(`#${id} img`);
            return img && img.complete && img.naturalWidth > 0 && img.src !== previous;
        }""",
        arg=[element_id, previous_src],
    )
    src = locator.get_attribute("src")
    response = page.request.get(src)
    assert response.ok, src
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")), src


def click_image_pixel(page, element_id: str, x: int, y: int) -> None:
    """Click on pixel (x, y) of the picture ``#element_id`` shows scaled to fit (Gradio's own mapping)."""
    image = page.locator(f"#{element_id} img").first
    natural_width, natural_height = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    box = image.bounding_box()
    scale = min(box["width"] / natural_width, box["height"] / natural_height, 1.0)
    left = (box["width"] - natural_width * scale) / 2
    top = (box["height"] - natural_height * scale) / 2
    image.click(position={"x": left + (x + 0.5) * scale, "y": top + (y + 0.5) * scale})


def clicked_point(status: str, aimed_at: tuple[int, int]) -> tuple[int, int]:
    """The focus point the server received, read from the status line; within a pixel of the one aimed at (the
    browser rounds mouse positions to CSS pixels, and the picture is shown scaled)."""
    match = re.search(r"focus point \((\d+), (\d+)\)", status)
    assert match, status
    point = (int(match[1]), int(match[2]))
    assert max(abs(point[0] - aimed_at[0]), abs(point[1] - aimed_at[1])) <= 1, (point, aimed_at)
    return point


def laplacian_variance(image: np.ndarray, x: int, y: int, half: int = WINDOW // 2) -> float:
    """Variance of the Laplacian in the window centred on (x, y): high where the picture is sharp."""
    gray = torch.from_numpy(image.astype(np.float32) / 255.0).mean(-1)[None, None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    window = gray[..., y - half - 1 : y + half + 2, x - half - 1 : x + half + 2]
    return float(F.conv2d(window, kernel).var())


def near_and_far_points(margin: int = 24) -> tuple[tuple[int, int], tuple[int, int]]:
    """Click targets on the motorcycle: textured, depth-flat windows with the largest and smallest disparity.

    Textured (Laplacian variance above the median window's) so blur is measurable; depth-flat (disparity spread
    < 0.02) so the whole window lies on the clicked surface.
    """
    image, disparity = load_stereo_motorcycle()
    gray = image.mean(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    laplacian = F.conv2d(gray, kernel, padding=1)
    stride = 8

    def local(values, fn):
        return F.avg_pool2d(fn(values), WINDOW, stride=stride)[0, 0]

    texture = local(laplacian, lambda v: v**2) - local(laplacian, lambda v: v) ** 2
    mean_disparity = local(disparity, lambda v: v)
    spread = (local(disparity, lambda v: v**2) - mean_disparity**2).clamp_min(0).sqrt()
    rows, cols = torch.meshgrid(torch.arange(texture.shape[0]), torch.arange(texture.shape[1]), indexing="ij")
    centre_x, centre_y = cols * stride + WINDOW // 2, rows * stride + WINDOW // 2
    height, width = disparity.shape[-2:]
    inside = (centre_x >= margin) & (centre_x < width - margin) & (centre_y >= margin) & (centre_y < height - margin)
    candidates = (texture > texture.median()) & (spread < 0.02) & inside
    values = torch.where(candidates, mean_disparity, torch.nan)
    near = int(torch.nan_to_num(values, nan=-1.0).argmax())
    far = int(torch.nan_to_num(values, nan=2.0).argmin())
    as_point = lambda index: (int(centre_x.flatten()[index]), int(centre_y.flatten()[index]))  # noqa: E731
    return as_point(near), as_point(far)


def assert_only_local_requests(urls: list[str], server_url: str) -> None:
    server = urlparse(server_url)
    outside = [
        url for url in urls
        if urlparse(url).scheme not in ("data", "blob")
        and (urlparse(url).hostname, urlparse(url).port) != (server.hostname, server.port)
    ]  # fmt: skip
    assert urls and not outside, f"the page requested outside {server_url}: {outside[:10]}"


def screenshot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------
def test_click_to_focus_moves_the_sharp_region_and_K_zero_is_the_upsampled_input(
    server, browser_page, tmp_path, request
):
    page, urls = browser_page
    shots = tmp_path / "screenshots"
    shots.mkdir()
    near, far = near_and_far_points()
    image, disparity = load_stereo_motorcycle()
    assert disparity[0, 0, near[1], near[0]] - disparity[0, 0, far[1], far[0]] > 0.5  # really near vs really far

    page.goto(server)
    status = wait_for_answer(page, "")  # the default sample renders on load, with automatic focus
    assert status.startswith("motorcycle") and "×1 → 741×500" in status, status
    _, src = shown_image(page, "result")
    screenshot(page, shots, "01_loaded")

    click_image_pixel(page, "input-image", *near)
    status = wait_for_answer(page, status)
    near = clicked_point(status, near)
    near_focused, src = shown_image(page, "result", src)
    screenshot(page, shots, "02_focus_near")
    if request.config.getoption("--demo-screenshot"):
        readme_shot = Path(request.config.getoption("--demo-screenshot"))
        readme_shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(readme_shot))  # the viewport: controls and results, as a user first sees them

    click_image_pixel(page, "input-image", *far)
    status = wait_for_answer(page, status)
    far = clicked_point(status, far)
    far_focused, src = shown_image(page, "result", src)
    screenshot(page, shots, "03_focus_far")

    # The sharp region moved: the clicked surface keeps the input's detail, the other one loses nearly all of it.
    # (The classical renderer keeps pixels on the focal plane exact; at K = 16 the other surface, |Δd| > 0.5 away,
    # is blurred by a ≥ 6 px circle of confusion.)
    source = tensor_to_uint8_array(image)
    for focused, other, point_in, point_out in ((near_focused, far_focused, near, far), (far_focused, near_focused,
                                                                                          far, near)):  # fmt: skip
        sharp_in_focus = laplacian_variance(focused, *point_in)
        assert sharp_in_focus > 0.8 * laplacian_variance(source, *point_in)
        assert laplacian_variance(other, *point_in) < 0.1 * sharp_in_focus
        assert laplacian_variance(focused, *point_out) < 0.1 * laplacian_variance(source, *point_out)

    # K → 0 by dragging the slider's thumb past its left end, then ×2: the output is the bicubic-upsampled input.
    slider = page.locator("#k-slider input[type=range]")
    box = slider.bounding_box()
    thumb_x = box["x"] + box["width"] * 16 / 32
    page.mouse.move(thumb_x, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] - 30, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    status = wait_for_answer(page, status)
    assert "K = 0" in status, status
    page.locator("#scale label", has_text="2").click()
    status = wait_for_answer(page, status)
    assert "K = 0" in status and "×2 → 1482×1000" in status, status
    sharp_everywhere, src = shown_image(page, "result", src)
    screenshot(page, shots, "04_K0_x2")
    expected = tensor_to_uint8_array(upsample(image, 2.0))
    difference = np.abs(sharp_everywhere.astype(int) - expected.astype(int))
    # K = 0 makes every circle of confusion zero: the renderer's only arithmetic is the gamma round trip
    # (x^2.2)^(1/2.2), exact to ~1e-7, so the 8-bit PNG the page shows differs from the 8-bit upsampled input by
    # at most one level, and only where a value sits on a rounding boundary.
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (difference.max(), (difference > 0).mean())
    assert np.abs(near_focused.astype(int) - source.astype(int)).max() > 50  # K = 16 did change the picture

    assert_only_local_requests(urls, server)
    print(f"\nscreenshots: {shots}")


def test_bad_inputs_show_an_error_in_the_page_and_the_app_keeps_serving(server, browser_page, tmp_path):
    page, urls = browser_page
    shots = tmp_path / "screenshots"
    shots.mkdir()
    synthetic = ROOT / "data" / "samples" / "synthetic"
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not a photo\n")
    too_large = tmp_path / "large.png"
    Image.new("RGB", (400, 300)).save(too_large)  # 120 000 pixels > the server's cap of 100 000
    wrong_size = tmp_path / "wrong_size.npy"
    np.save(wrong_size, np.full((10, 10), 0.5, dtype=np.float32))

    page.goto(server)
    status = wait_for_answer(page, "")
    _, src = shown_image(page, "result")
    photo_input = page.locator("#photo-upload input[type=file]")
    disparity_input = page.locator("#disparity-upload input[type=file]")

    # A non-image upload: an error line in the page, the previous picture stays.
    photo_input.set_input_files(str(not_an_image))
    status = wait_for_answer(page, status)
    assert status.startswith("error:") and "'notes.txt' is not a readable image" in status, status
    assert page.locator("#status").is_visible()
    screenshot(page, shots, "01_not_an_image")

    # ... and the next render works.
    click_image_pixel(page, "input-image", 300, 200)
    status = wait_for_answer(page, status)
    clicked_point(status, (300, 200))
    assert "rendered in" in status, status
    _, src = shown_image(page, "result", src)

    # A photo beyond the pixel cap is refused from its header.
    photo_input.set_input_files(str(too_large))
    status = wait_for_answer(page, status)
    assert status.startswith("error:") and "above this demo's cap" in status, status

    # A photo with no disparity and no depth weights: the message names the missing file and the config key.
    photo_input.set_input_files(str(synthetic / "image" / "000000.png"))
    status = wait_for_answer(page, status)
    assert status.startswith("error:") and "depth_model.weights" in status, status
    screenshot(page, shots, "02_no_depth")

    # A disparity map of the wrong size, then the right one: rendered.
    disparity_input.set_input_files(str(wrong_size))
    status = wait_for_answer(page, status)
    assert status.startswith("error:") and "upload a map of the photo's size" in status, status
    disparity_input.set_input_files(str(synthetic / "disparity" / "000000.npy"))
    status = wait_for_answer(page, status)
    assert status.startswith("000000.png") and "uploaded (000000.npy)" in status, status
    result, src = shown_image(page, "result", src)
    assert result.shape == (128, 128, 3)

    # The refocus sweep: an animated GIF with one frame per focus plane, played forwards then back.
    page.locator("#sweep").click()
    status = wait_for_answer(page, status)
    assert "refocus sweep: 8 frames" in status, status
    gif_src = page.locator("#sweep-gif img").first.get_attribute("src")
    with Image.open(io.BytesIO(page.request.get(gif_src).body())) as gif:
        assert gif.format == "GIF" and gif.n_frames == 8 + 6
    screenshot(page, shots, "03_sweep")

    assert_only_local_requests(urls, server)
    print(f"\nscreenshots: {shots}")
