"""YAML configs and --set overrides into dataclasses."""

from dataclasses import dataclass, field

import pytest

from train.config_io import load_config


@dataclass
class Optim:
    learning_rate: float = 3e-4
    warmup: int = 10
    decay: float | None = None


@dataclass
class Experiment:
    name: str = "x"
    layers: tuple[int, ...] = (1, 2)
    optim: Optim = field(default_factory=Optim)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\noptim:\n  warmup: 5\n  learning_rate: 1e-3\n")
    cfg = load_config(Experiment, path, ["optim.warmup=7", "layers=[3, 4]"])
    assert cfg.name == "run"
    assert cfg.optim.warmup == 7
    assert cfg.optim.learning_rate == pytest.approx(1e-3)
    assert cfg.layers == (3, 4)


def test_exponent_without_dot_parses():
    cfg = load_config(Experiment, None, ["optim.learning_rate=1e-4", "optim.decay=2e-1"])
    assert cfg.optim.learning_rate == pytest.approx(1e-4)
    assert cfg.optim.decay == pytest.approx(0.2)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown keys \['optimz'\].*valid keys"):
        load_config(Experiment, None, ["optimz.warmup=1"])


def test_wrong_type_names_field():
    with pytest.raises(ValueError, match="config.optim.warmup: expected int"):
        load_config(Experiment, None, ["optim.warmup=abc"])
    with pytest.raises(ValueError, match="optim.learning_rate: expected a number"):
        load_config(Experiment, None, ["optim.learning_rate=fast"])


def test_override_needs_equals_sign():
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(Experiment, None, ["optim.warmup"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(Experiment, tmp_path / "nope.yaml")
