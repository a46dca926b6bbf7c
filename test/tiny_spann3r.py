"""The tiny Spann3R model of the parity fixtures, for tests of the step modes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

from recon_ros.model.checkpoint import extract_state_dict, load_state_dict_strict, read_checkpoint
from recon_ros.model.config import arch_from_dict
from recon_ros.model.network import Spann3RNet, build_model


def load_tiny_model(fixture_dir: Path) -> Tuple[Spann3RNet, dict]:
    """(model with the fixture weights, the fixture summary)."""
    summary = json.loads((fixture_dir / "summary.json").read_text())
    model = build_model(arch_from_dict(summary["config"]))
    load_state_dict_strict(model, extract_state_dict(read_checkpoint(fixture_dir / "tiny_state_dict.pt")),
                           "tiny fixture state dict")
    return model, summary
