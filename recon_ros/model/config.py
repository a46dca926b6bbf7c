"""Configurations of the Spann3R network: architecture sizes and run-time settings.

``ArchConfig`` holds the layer sizes (the full published model, or the tiny test model of the
parity fixtures); it is not a user parameter. ``MemoryConfig``, ``RuntimeConfig`` and
``ModelConfig`` are schema groups (see :mod:`recon_ros.config`) that the application
configuration nests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from recon_ros.config import group, param
from recon_ros.errors import UserInputError


@dataclass(frozen=True)
class ArchConfig:
    """Layer sizes of Spann3R (DUSt3R trunk + spatial-memory additions)."""

    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    norm_eps: float = 1e-6
    dpt_layer_dims: Tuple[int, int, int, int] = (96, 192, 384, 768)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    head_channels: int = 4  # xyz + confidence
    value_depth: int = 6
    value_num_heads: int = 16
    mem_norm_eps: float = 1e-5  # norm_q / norm_k / norm_v use the LayerNorm default

    def __post_init__(self) -> None:
        for dim, heads, what in ((self.enc_embed_dim, self.enc_num_heads, "encoder"),
                                 (self.dec_embed_dim, self.dec_num_heads, "decoder"),
                                 (self.enc_embed_dim, self.value_num_heads, "value encoder")):
            if dim % heads != 0:
                raise UserInputError(f"{what}: width {dim} is not divisible by {heads} heads")
            if (dim // heads) % 4 != 0:
                raise UserInputError(
                    f"{what}: head width {dim // heads} must be a multiple of 4 for 2-D RoPE")
        if len(self.dpt_layer_dims) != 4:
            raise UserInputError("dpt_layer_dims must have 4 entries")

    @property
    def dpt_hooks(self) -> Tuple[int, int, int, int]:
        """Decoder-list entries read by the DPT heads: [0, d*2//4, d*3//4, d]."""
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    @property
    def dpt_token_dims(self) -> Tuple[int, int, int, int]:
        return (self.enc_embed_dim, self.dec_embed_dim, self.dec_embed_dim, self.dec_embed_dim)

    @property
    def key_hidden_dim(self) -> int:
        return self.enc_embed_dim + self.dec_embed_dim


def full_arch() -> ArchConfig:
    """The released Spann3R model (ViT-L encoder, ViT-B decoders, DPT heads)."""
    return ArchConfig()


def tiny_arch() -> ArchConfig:
    """The tiny configuration of the parity fixtures (same wiring, small widths)."""
    return ArchConfig(enc_embed_dim=64, enc_depth=3, enc_num_heads=4,
                      dec_embed_dim=32, dec_depth=6, dec_num_heads=2,
                      dpt_layer_dims=(16, 24, 32, 48), dpt_feature_dim=16, dpt_last_dim=8,
                      value_depth=2, value_num_heads=4)


def arch_from_dict(cfg: Mapping[str, Any]) -> ArchConfig:
    """Architecture from a fixture/summary style dict ``{'dust3r': {...}, 'dpt': {...}, 'memory': {...}}``."""
    try:
        d = cfg["dust3r"]
        dpt = cfg["dpt"]
        mem = cfg.get("memory", {})
        pos = str(d.get("pos_embed", "RoPE100"))
        if not pos.startswith("RoPE"):
            raise UserInputError(f"only RoPE position embeddings are supported, got {pos!r}")
        if d.get("head_type", "dpt") != "dpt":
            raise UserInputError(f"only DPT heads are supported, got {d.get('head_type')!r}")
        if mem.get("use_feat", False) or mem.get("mem_pos_enc", False):
            raise UserInputError("use_feat / mem_pos_enc variants are not supported")
        return ArchConfig(
            enc_embed_dim=int(d["enc_embed_dim"]), enc_depth=int(d["enc_depth"]),
            enc_num_heads=int(d["enc_num_heads"]), dec_embed_dim=int(d["dec_embed_dim"]),
            dec_depth=int(d["dec_depth"]), dec_num_heads=int(d["dec_num_heads"]),
            mlp_ratio=float(d.get("mlp_ratio", 4.0)), rope_base=float(pos[4:] or 100.0),
            dpt_layer_dims=tuple(int(x) for x in dpt["layer_dims"]),
            dpt_feature_dim=int(dpt["feature_dim"]), dpt_last_dim=int(dpt["last_dim"]),
            value_depth=int(mem.get("value_depth", 6)),
            value_num_heads=int(mem.get("value_heads", 16)))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"malformed architecture description: {exc!r}") from None


ARCHS = {"full": full_arch, "tiny": tiny_arch}


def arch_by_name(name: str) -> ArchConfig:
    if name not in ARCHS:
        raise UserInputError(f"unknown model size {name!r}; use one of {sorted(ARCHS)}")
    return ARCHS[name]()


@dataclass
class MemoryConfig:
    """Spatial memory of Spann3R."""

    long_mem_size: int = param(4000, "long-term memory budget in tokens (also the prune size)", min=1)
    work_mem_size: int = param(5, "working memory size in frames", min=1)
    attn_thresh: float = param(5e-4, "memory-read attention weights below this are zeroed", min=0.0, max=1.0)
    sim_thresh: float = param(0.95, "skip inserting a frame whose key is more similar than this "
                              "to a working-memory frame", min=-1.0, max=1.0)


RUNTIME_MODES = ("eager", "static", "graph", "compile")


@dataclass
class RuntimeConfig:
    """Device, numeric precision and execution mode of the network."""

    device: str = param("auto", "torch device: auto (CUDA when present), cpu, cuda or cuda:N")
    precision: str = param("fp32", "trunk precision on CUDA (the DPT heads always run in fp32)",
                           choices=("fp32", "bf16", "fp16"))
    tf32: bool = param(True, "allow TF32 matmuls/convolutions on CUDA (as the reference does)")
    mode: str = param("eager", "how a pair step runs: eager (growing memory bank, the reference "
                      "layout), static (fixed-capacity bank, no host synchronisation), graph (static "
                      "replayed as CUDA graphs; static without CUDA) or compile (static through "
                      "torch.compile; static if compiling fails)",
                      choices=RUNTIME_MODES)
    graph_warmup: int = param(2, "graph mode: eager steps with a memory read before the CUDA graphs "
                              "are captured", min=1)
    preprocess: str = param("pil", "raw-frame crop/resize: pil (Lanczos, the reference's exact "
                            "input) or torch (antialiased bicubic on the model's device; pointmaps "
                            "differ slightly, see docs/model.md)", choices=("pil", "torch"))


@dataclass
class ModelConfig:
    """The Spann3R network."""

    checkpoint: str = param("", "path of spann3r.pth (required for reconstruction)")
    dust3r_checkpoint: str = param("", "optional DUSt3R ViT-L checkpoint loaded into the trunk first")
    size: str = param("full", "architecture size", choices=("full", "tiny"))
    image_size: int = param(224, "model input size in pixels (square, multiple of 16)", min=16)
    memory: MemoryConfig = group(MemoryConfig)
    runtime: RuntimeConfig = group(RuntimeConfig)


def memory_from_dict(d: Optional[Mapping[str, Any]]) -> MemoryConfig:
    """MemoryConfig from a plain dict (unknown keys that do not change behaviour are ignored)."""
    d = dict(d or {})
    top_k = d.pop("top_k", None)
    mc = MemoryConfig(**{k: d[k] for k in ("long_mem_size", "work_mem_size", "attn_thresh", "sim_thresh")
                         if k in d})
    if top_k is not None and int(top_k) != mc.long_mem_size:
        raise UserInputError(f"top_k ({top_k}) must equal long_mem_size ({mc.long_mem_size})")
    return mc


__all__ = ["ArchConfig", "full_arch", "tiny_arch", "arch_from_dict", "arch_by_name",
           "MemoryConfig", "RuntimeConfig", "RUNTIME_MODES", "ModelConfig", "memory_from_dict"]
