"""Device selection, trunk autocast and TF32 flags from a :class:`RuntimeConfig`.

On CPU everything runs in float32. On CUDA the trunk (encoder, decoders, key heads, value
encoder) may run under bf16/fp16 autocast; the DPT heads and the memory always run in float32.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch

from recon_ros.errors import UserInputError
from recon_ros.model.config import RuntimeConfig

log = logging.getLogger(__name__)

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    device: torch.device
    autocast_dtype: Optional[torch.dtype]  # None: plain float32
    tf32: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> ContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without CUDA is a UserInputError."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise UserInputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return dev


def set_tf32(enabled: bool) -> None:
    """Allow or forbid TF32 for CUDA matmuls and cuDNN convolutions (process-wide torch flags)."""
    mode = "tf32" if enabled else "ieee"
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:  # older torch
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def resolve_precision(cfg: RuntimeConfig) -> Precision:
    dev = resolve_device(cfg.device)
    if cfg.precision not in _DTYPES:
        raise UserInputError(f"unknown precision {cfg.precision!r}; use one of {sorted(_DTYPES)}")
    dtype = _DTYPES[cfg.precision]
    if dev.type == "cpu" and dtype is not None:
        log.warning("precision %s requested on CPU; running in fp32", cfg.precision)
        dtype = None
    if dev.type == "cuda":
        set_tf32(cfg.tf32)
    return Precision(dev, dtype, bool(cfg.tf32) and dev.type == "cuda")
