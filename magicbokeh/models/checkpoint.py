"""Import of the official MagicBokeh release checkpoint (``lora.pkl``) into our checkpoint format.

The release stores one ``torch.save`` pickle holding::

    rank_unet, unet_lora_encoder_modules, unet_lora_decoder_modules, state_dict_unet   (peft adapters
        "default_encoder" on down blocks + conv_in, "default_decoder" on up blocks + conv_out; conv_in weights)
    rank_vae, vae_lora_encoder_modules, state_dict_vae                                   (adapter "default_encoder")
    controlnet              a whole pickled ControlNet object (class models.controlnet.ControlNetModel)
    state_dict_attn         the bokeh-LoRA rank
    processor_state_dict    "<processor name>.to_{q,k,v,out}_lora.{0,1}.weight" (A = .0, B = .1)

This is the one place in the code base that unpickles anything beyond ``weights_only`` loading, because the
ControlNet is stored as an object. The unpickler below never imports or runs the release's classes: tensors are
rebuilt through torch's own weights-only allow-list, module classes from the release, diffusers and torch.nn
become inert records of their attributes (from which the parameters are read), and any other global is refused.

Run ``python -m magicbokeh.models.checkpoint lora.pkl --sd21 /path/to/sd21 --out checkpoints/official`` to convert.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch._weights_only_unpickler import _get_allowed_globals

from magicbokeh.errors import ConfigError, MissingWeightsError
from magicbokeh.models.lora import UNET_ADAPTER, VAE_ADAPTER
from magicbokeh.models.model import MagicBokehModel, parameter_group
from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

OFFICIAL_SOURCE = "https://huggingface.co/LinxiaoShi/Magicbokeh (lora.pkl)"
OFFICIAL_KEYS = (
    "rank_unet",
    "unet_lora_encoder_modules",
    "unet_lora_decoder_modules",
    "state_dict_unet",
    "rank_vae",
    "vae_lora_encoder_modules",
    "state_dict_vae",
    "controlnet",
    "state_dict_attn",
    "processor_state_dict",
)
OFFICIAL_LORA_ALPHA = 8.0
"""The release's LoraConfig left lora_alpha unset, so peft's default (8) applied to the UNet and VAE adapters."""
OFFICIAL_BOKEH_ALPHA = 1.0
"""The release builds its FAMA processors with lora_alpha = 1.0."""

# Modules whose classes may appear inside the pickled ControlNet; each becomes an inert attribute record.
_MODULE_PREFIXES = ("models.", "diffusers.", "torch.nn.modules.", "peft.")


class _PickledObject(dict):
    """Stand-in for a class from the release's pickle: keeps the unpickled attributes, runs none of its code.

    A dict subclass so that dict-like classes (diffusers' FrozenDict config) unpickle too.
    """

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()


class _RestrictedUnpickler(pickle.Unpickler):
    """Maps only the expected globals: torch's weights-only set (tensors, storages, OrderedDict, dtypes…) to the
    real objects, module classes under :data:`_MODULE_PREFIXES` to inert stand-ins; refuses everything else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _get_allowed_globals()
        self._stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # torch.save writes protocol 2, which names builtins the Python 2 way (``__builtin__.set``).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self._allowed:
            return self._allowed[qualified]
        if module.startswith(_MODULE_PREFIXES) and name.isidentifier():
            if qualified not in self._stand_ins:
                self._stand_ins[qualified] = type(name, (_PickledObject,), {"qualified_name": qualified})
            return self._stand_ins[qualified]
        raise pickle.UnpicklingError(f"refusing to unpickle '{qualified}': not part of the official checkpoint format")


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load`` (it needs ``Unpickler`` and ``load``)."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle a release checkpoint with the restricted unpickler and check its keys."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"missing official checkpoint '{path}' (obtain lora.pkl from {OFFICIAL_SOURCE}); never downloaded here"
        )
    try:
        document = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except pickle.UnpicklingError as error:
        raise ConfigError(f"{path} is not an official MagicBokeh checkpoint: {error}") from error
    missing = [key for key in OFFICIAL_KEYS if not isinstance(document, dict) or key not in document]
    if missing:
        raise ConfigError(f"{path} is not an official MagicBokeh checkpoint: missing {missing}")
    return document


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The persistent parameters and buffers of an unpickled module record, like ``nn.Module.state_dict``."""
    attributes = obj.__dict__
    if "_parameters" not in attributes or "_modules" not in attributes:
        raise ConfigError(f"expected a pickled torch module, got {getattr(obj, 'qualified_name', type(obj))}")
    state = {f"{prefix}{n}": p.detach() for n, p in attributes["_parameters"].items() if p is not None}
    transient = attributes.get("_non_persistent_buffers_set", set())
    state.update(
        {f"{prefix}{n}": b for n, b in attributes.get("_buffers", {}).items() if b is not None and n not in transient}
    )
    for name, child in attributes["_modules"].items():
        if child is not None:
            state.update(module_state_dict(child, f"{prefix}{name}."))
    return state


def _rename_adapter(key: str, official: tuple[str, ...], ours: str) -> str:
    for adapter in official:
        key = key.replace(f".{adapter}.", f".{ours}.")
    return key


def official_to_state_dict(document: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our parameter names (``MagicBokehModel.state_dict``) for every tensor of a release checkpoint."""
    state = {
        f"unet.{_rename_adapter(k, ('default_encoder', 'default_decoder'), UNET_ADAPTER)}": v
        for k, v in document["state_dict_unet"].items()
    }
    state.update(
        {
            f"vae.{_rename_adapter(k, ('default_encoder',), VAE_ADAPTER)}": v
            for k, v in document["state_dict_vae"].items()
        }
    )
    state.update({f"unet.{k}": v for k, v in document["processor_state_dict"].items()})
    state.update({f"controlnet.{k}": v for k, v in module_state_dict(document["controlnet"]).items()})
    return state


def _official_build_arguments(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "unet_lora_rank": int(document["rank_unet"]),
        "unet_lora_alpha": OFFICIAL_LORA_ALPHA,
        "vae_lora_rank": int(document["rank_vae"]),
        "vae_lora_alpha": OFFICIAL_LORA_ALPHA,
        # The release's FAMA: up-block attn1, two regions split at defocus 0.1 (the backend is ours to choose).
        "fama": {
            "layers": "up",
            "mask": "hard",
            "threshold": 0.1,
            "rank": int(document["state_dict_attn"]),
            "alpha": OFFICIAL_BOKEH_ALPHA,
        },
        "prune_mid_block": True,
        "drop_cross_attention": True,
    }


def _mismatched_settings(config: dict[str, Any], arguments: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (ours, official)}`` for every build setting of ``arguments`` the model's ``config`` differs in
    (``fama`` compared key by key, as ``fama.<key>``)."""
    mismatched = {}
    for key, official in arguments.items():
        if isinstance(official, dict):
            mismatched.update({f"{key}.{k}": (config[key][k], v) for k, v in official.items() if config[key][k] != v})
        elif config[key] != official:
            mismatched[key] = (config[key], official)
    return mismatched


def import_official_checkpoint(
    pkl_path: str | os.PathLike,
    *,
    sd21_path: str | os.PathLike | None = None,
    model: MagicBokehModel | None = None,
    output_dir: str | os.PathLike | None = None,
) -> MagicBokehModel:
    """Load the release's ``lora.pkl`` into a MagicBokehModel (and save it in our format if ``output_dir``).

    Either ``sd21_path`` (the SD2.1-base folder; the model is built with the checkpoint's ranks) or an existing
    ``model`` whose configuration matches the checkpoint (ranks, alphas, surgery) receives the weights.
    """
    document = read_official_checkpoint(pkl_path)
    arguments = _official_build_arguments(document)
    if model is None:
        if sd21_path is None:
            raise ConfigError("import_official_checkpoint needs sd21_path (the base model) or a built model")
        from magicbokeh.models.build import build_model

        model = build_model(sd21_path, name="official", **arguments)
    else:
        mismatched = _mismatched_settings(model.config, arguments)
        if mismatched:
            raise ConfigError(f"model configuration differs from the checkpoint (ours, official): {mismatched}")
    tensors = official_to_state_dict(document)
    expected = {name for name in model.state_dict() if parameter_group(name) is not None}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ConfigError(
            f"official checkpoint does not map onto the model: {len(missing)} weights missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(tensors, strict=False)
    logger.info("imported official checkpoint %s (%d tensors)", pkl_path, len(tensors))
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert the official MagicBokeh lora.pkl into our checkpoint format.")
    parser.add_argument("pkl", help="path to the release's lora.pkl")
    parser.add_argument("--sd21", required=True, help="local stable-diffusion-2-1-base folder (paths.sd21)")
    parser.add_argument("--out", required=True, help="output checkpoint folder (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    set_offline_defaults()
    import_official_checkpoint(args.pkl, sd21_path=args.sd21, output_dir=args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
