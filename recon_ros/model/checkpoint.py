"""Loading Spann3R and DUSt3R checkpoints strictly, safely and with clear errors.

``spann3r.pth`` is a dict whose ``'model'`` entry is the network's state dict (the training saver
may add ``args`` (an argparse Namespace), ``optimizer``, ...). It is read with
``weights_only=True`` and ``argparse.Namespace`` allow-listed; unpickling arbitrary objects is
only possible through the explicit ``allow_unsafe`` flag, which logs a warning.
"""
from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from recon_ros.errors import CheckpointError
from recon_ros.model.config import ArchConfig, ModelConfig, arch_by_name
from recon_ros.model.network import Spann3RNet, build_model

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
SAFE_GLOBALS = [argparse.Namespace]
_SHOW = 5


def read_checkpoint(path: PathLike, allow_unsafe: bool = False) -> Any:
    """Deserialise a torch checkpoint on the CPU; CheckpointError if missing, unreadable or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure to read the file is reported the same way
        text = str(exc)
        unsafe = isinstance(exc, pickle.UnpicklingError) and ("Unsupported global" in text
                                                              or "not an allowed global" in text)
        if not unsafe:
            raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a torch checkpoint "
                                  f"({type(exc).__name__}: {_first_line(exc)})") from None
        if not allow_unsafe:
            raise CheckpointError(
                f"checkpoint {path} contains objects outside the safe allow-list ({_first_line(exc)}); "
                "if you trust the file, load it with allow_unsafe=True") from None
    log.warning("loading %s with weights_only=False: arbitrary code in the file can run; "
                "only do this for files you trust", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file here
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    for line in text:
        if "Unsupported global" in line:
            return line[:300]
    return text[0][:300] if text else type(exc).__name__


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state dict of a checkpoint object: ``obj['model']`` or ``obj`` itself."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (expected a dict with a 'model' entry)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:_SHOW]}")
    return dict(obj)


def compare_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor],
                       ignore_unexpected: tuple = ()) -> List[str]:
    """Human-readable problems between ``model``'s state dict and ``sd`` (empty list: they match)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want and k not in ignore_unexpected]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {want[k]}"
              for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:_SHOW]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:_SHOW]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:_SHOW]}")
    return problems


def load_state_dict_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """Strict load with a CheckpointError naming the first missing/unexpected/mismatched keys."""
    problems = compare_state_dict(module, sd)
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    want = module.state_dict()
    bad_dtype = [k for k, v in sd.items() if v.is_floating_point() != want[k].is_floating_point()]
    if bad_dtype:
        raise CheckpointError(f"{source}: tensors of the wrong kind (integer vs floating point) "
                              f"{bad_dtype[:_SHOW]}")
    module.load_state_dict(sd, strict=True, assign=assign)


def load_dust3r_weights(model: Spann3RNet, path: PathLike, allow_unsafe: bool = False,
                        assign: bool = False) -> None:
    """Load a DUSt3R checkpoint (keys without the ``dust3r.`` prefix) into ``model.dust3r``."""
    sd = extract_state_dict(read_checkpoint(path, allow_unsafe), str(path))
    if all(k.startswith("dust3r.") for k in sd):
        sd = {k[len("dust3r."):]: v for k, v in sd.items()}
    load_state_dict_strict(model.dust3r, sd, f"DUSt3R checkpoint {path}", assign=assign)


def load_spann3r_weights(model: Spann3RNet, path: PathLike, dust3r_path: Optional[PathLike] = None,
                         allow_unsafe: bool = False, assign: bool = False) -> None:
    """Optionally load the DUSt3R trunk, then ``spann3r.pth`` strictly over the whole network."""
    if dust3r_path:
        load_dust3r_weights(model, dust3r_path, allow_unsafe, assign=assign)
    sd = extract_state_dict(read_checkpoint(path, allow_unsafe), str(path))
    load_state_dict_strict(model, sd, f"Spann3R checkpoint {path}", assign=assign)


def load_model(cfg: ModelConfig, arch: Optional[ArchConfig] = None, allow_unsafe: bool = False) -> Spann3RNet:
    """Build the network from ``cfg`` and load its weights (CPU; the stream moves it to the device).

    The module is built on the meta device and the checkpoint tensors are assigned to it, so the
    weights are held in memory once.
    """
    if not cfg.checkpoint:
        raise CheckpointError("no Spann3R checkpoint given (set model.checkpoint to spann3r.pth)")
    model = build_model(arch or arch_by_name(cfg.size), device="meta")
    load_spann3r_weights(model, cfg.checkpoint, cfg.dust3r_checkpoint or None, allow_unsafe, assign=True)
    return model.eval()
