"""The smoke's test sets are data no setting was chosen on: a base seed no config uses, a photo nothing else reads."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from magicbokeh.utils.config import CONFIG_DIR, compose_config

REPO = CONFIG_DIR.parent
SAMPLES = REPO / "data" / "samples"
TEST_NODES = ("test_bokeh", "test_sr")
# Code derives further seeds from a run's seed (stream seed + 1 for the stand-in VAE's streams, + 2 for its pool):
# a test seed must stay clear of those too.
DERIVED_OFFSETS = range(0, 3)


@functools.cache
def _all_configs() -> tuple[tuple[str, dict], ...]:
    """Every composable root config and experiment, resolved, without Hydra's own node and the test nodes."""
    found = []
    composed = [("train", []), ("eval", []), ("render", []), ("depth", [])]
    for path in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        root = "depth" if path.stem.startswith("depth_") else "train"
        composed.append((root, [f"experiment={path.stem}"]))
    for root, overrides in composed:
        container = OmegaConf.to_container(compose_config(root, overrides), resolve=False)
        container.pop("hydra", None)
        for node in TEST_NODES:
            container.get("data", {}).pop(node, None)
        found.append((" ".join([root, *overrides]), OmegaConf.to_container(OmegaConf.create(container), resolve=True)))
    return tuple(found)


def _walk(value, key=""):
    if isinstance(value, dict):
        for child_key, child in value.items():
            yield from _walk(child, str(child_key))
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child, key)
    else:
        yield key, value


def _seeds(container) -> set[int]:
    return {value for key, value in _walk(container) if "seed" in key and isinstance(value, int)}


def _paths(container) -> set[str]:
    return {value for _, value in _walk(container) if isinstance(value, str) and "samples" in value}


def _smoke_test_nodes():
    cfg = compose_config("train", ["experiment=smoke"])
    return {node: OmegaConf.to_container(cfg.data[node], resolve=True) for node in TEST_NODES}


def test_test_set_seeds_are_used_by_no_config():
    test_seeds = {node["seed"] for node in _smoke_test_nodes().values()}
    for name, container in _all_configs():
        used = {seed + offset for seed in _seeds(container) for offset in DERIVED_OFFSETS}
        assert not test_seeds & used, f"{name} uses the test seed(s) {sorted(test_seeds & used)}"


def test_the_test_photo_is_read_by_nothing_else():
    test_root = Path(_smoke_test_nodes()["test_sr"]["root"])
    assert test_root.resolve() == (SAMPLES / "test").resolve()
    for name, container in _all_configs():
        readers = [path for path in _paths(container) if Path(path).resolve().is_relative_to(test_root.resolve())]
        assert not readers, f"{name} reads the test photo folder: {readers}"
    # ... and no other sample folder holds a copy of it.
    digest = {hashlib.sha256(path.read_bytes()).hexdigest() for path in (SAMPLES / "test").iterdir()}
    others = [p for p in SAMPLES.rglob("*") if p.is_file() and p.parent != SAMPLES / "test"]
    assert not digest & {hashlib.sha256(p.read_bytes()).hexdigest() for p in others}


@pytest.mark.parametrize("node", TEST_NODES)
def test_test_sets_mirror_the_validation_sets_but_for_seed_and_photo(node):
    cfg = OmegaConf.to_container(compose_config("train", ["experiment=smoke"]).data, resolve=True)
    test, validation = cfg[node], cfg[node.replace("test_", "val_")]
    differing = {key for key in test.keys() | validation.keys() if test.get(key) != validation.get(key)}
    assert differing == ({"seed"} if node == "test_bokeh" else {"seed", "root"})
