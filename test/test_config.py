import argparse
from dataclasses import dataclass

import pytest
import yaml

from recon_ros import config as C
from recon_ros.errors import UserInputError


@dataclass
class _Map:
    """Fused map."""
    voxel_size_m: float = C.param(0.02, "voxel edge", min=0.001, max=1.0, dynamic=True)
    mode: str = C.param("fast", "how", choices=("fast", "exact"))


@dataclass
class _Cfg:
    device: str = C.param("cpu", "torch device")
    every_n: int = C.param(1, "process every n-th frame", min=1)
    publish: bool = C.param(True, "publish")
    map: _Map = C.group(_Map)


def test_iter_params_and_specs():
    names = [s.name for s in C.iter_params(_Cfg)]
    assert names == ["device", "every_n", "publish", "map.voxel_size_m", "map.mode"]
    spec = C.spec_of(_Cfg, "map.voxel_size_m")
    assert spec.dynamic and spec.min == 0.001 and spec.type is float


def test_yaml_round_trip_plain_and_ros(tmp_path):
    cfg = _Cfg()
    C.set_value(cfg, "map.voxel_size_m", 0.05)
    for ros in (False, True):
        text = C.dump_yaml(cfg, ros=ros)
        assert "# voxel edge (range [0.001, 1.0]) [changeable at run time]" in text
        p = tmp_path / f"c{ros}.yaml"
        p.write_text(text)
        loaded = C.load_yaml(_Cfg, p)
        assert loaded == cfg
    assert "ros__parameters" in yaml.safe_load(C.dump_yaml(cfg, ros=True))["/**"]


def test_validation_errors_name_the_parameter():
    with pytest.raises(UserInputError, match="map.voxel_size_m.*below"):
        C.from_dict(_Cfg, {"map": {"voxel_size_m": 0.0}})
    with pytest.raises(UserInputError, match="did you mean 'map.voxel_size_m'"):
        C.from_dict(_Cfg, {"map": {"voxel_size": 0.1}})
    with pytest.raises(UserInputError, match="one of: fast, exact"):
        C.from_dict(_Cfg, {"map": {"mode": "slow"}})
    with pytest.raises(UserInputError, match="expected int"):
        C.from_dict(_Cfg, {"every_n": 1.5})
    with pytest.raises(UserInputError, match="expected bool"):
        C.from_dict(_Cfg, {"publish": "maybe"})


def test_cli_flags_override_defaults():
    parser = argparse.ArgumentParser()
    C.add_cli_args(parser, _Cfg)
    args = parser.parse_args(["--map.voxel_size_m", "0.1", "--publish", "false"])
    cfg = C.apply_cli_args(_Cfg(), args)
    assert cfg.map.voxel_size_m == 0.1 and cfg.publish is False and cfg.every_n == 1
