"""Set-up step: place MATLAB's NIQE pristine-image parameters where the NIQE metric looks for them.

The parameters ship as ``basicsr/metrics/niqe_pris_params.npz`` inside the ``basicsr==1.4.2`` source distribution
on PyPI (Apache-2.0). pip (the ordinary registry client) fetches the sdist without building or installing it; this
module extracts that one file. Idempotent: nothing is fetched when a valid file is already in place.

    python -m magicbokeh.evaluation.assets [--dest DIR]     # default: <venv>/share/magicbokeh
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from magicbokeh.errors import MissingWeightsError
from magicbokeh.evaluation.metrics import NIQE_PARAMS_FILE
from magicbokeh.utils.cli import exit_on_user_error
from magicbokeh.utils.files import atomic_write_bytes
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

BASICSR_SDIST = "basicsr==1.4.2"
MEMBER_SUFFIX = "basicsr/metrics/niqe_pris_params.npz"
EXPECTED_SHAPES = {"mu_pris_param": (1, 36), "cov_pris_param": (36, 36)}


def default_dest() -> Path:
    return Path(sys.prefix) / "share" / "magicbokeh"


def is_valid_params(path: Path) -> bool:
    """True when ``path`` is an npz holding NIQE's 36-feature mean and covariance."""
    try:
        with np.load(path) as params:
            return all(params[key].shape == shape for key, shape in EXPECTED_SHAPES.items())
    except (OSError, KeyError, ValueError):
        return False


def extract_from_sdist(sdist: Path) -> bytes:
    """Return the bytes of the NIQE parameter file inside a basicsr sdist (.tar.gz)."""
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(MEMBER_SUFFIX):
                handle = archive.extractfile(member)
                if handle is not None:
                    return handle.read()
    raise MissingWeightsError(f"'{sdist}' does not contain {MEMBER_SUFFIX}")


def fetch_sdist(folder: Path) -> Path:
    """Download the basicsr sdist with pip, without building it (its build needs CUDA tooling we do not have)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        BASICSR_SDIST,
        "-d",
        str(folder),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    archives = sorted(folder.glob("basicsr-*.tar.gz"))
    if not archives:
        raise MissingWeightsError(
            f"could not download the {BASICSR_SDIST} sdist with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}. Copy {MEMBER_SUFFIX} from it by hand to the destination folder."
        )
    return archives[0]


def install_niqe_params(dest: Path, sdist: Path | None = None) -> Path:
    """Ensure ``dest/niqe_pris_params.npz`` exists and is valid; fetch it from the sdist otherwise."""
    target = dest / NIQE_PARAMS_FILE
    if target.is_file() and is_valid_params(target):
        logger.info("NIQE parameters already in place: %s", target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        archive = sdist if sdist is not None else fetch_sdist(Path(tmp))
        data = extract_from_sdist(archive)
        atomic_write_bytes(target, data)
        target.chmod(0o644)
    if not is_valid_params(target):
        target.unlink()
        raise MissingWeightsError(f"the file extracted from {BASICSR_SDIST} is not a valid NIQE parameter file")
    logger.info("NIQE parameters written to %s", target)
    return target


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=default_dest(), help="folder to place niqe_pris_params.npz in")
    parser.add_argument("--sdist", type=Path, default=None, help="use an already downloaded basicsr sdist")
    args = parser.parse_args(argv)
    print(install_niqe_params(args.dest, args.sdist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
