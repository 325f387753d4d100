import pytest

from orizuru.config import ConfigError, load_config, save_config
from orizuru.train.config import PretrainConfig


def test_overrides_and_types(tmp_path):
    cfg = load_config(PretrainConfig, overrides=["train.lr=1e-3", "model.dim=128", "run.dir=runs/x", "data.dirs=['a','b']"])
    assert cfg.train.lr == 1e-3 and cfg.model.dim == 128 and cfg.run.dir == "runs/x"
    assert cfg.model.ffn_dim == 384 and cfg.model.head_dim == 32  # derived at load time
    path = tmp_path / "c.toml"
    save_config(cfg, path)
    again = load_config(PretrainConfig, path)
    assert again == cfg


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1e-3", "train.lrr"),
        ("model.dim=abc", "model.dim"),
        ("model.tie_embeddings=1", "model.tie_embeddings"),
        ("model.n_heads=5", "model.n_heads"),
        ("model.n_kv_heads=3", "model.n_kv_heads"),
        ("train.seq_len=4096", "train.seq_len"),
        ("data.weights=[1.0]", "data.weights"),
        ("train.dtype='fp8'", "train.dtype"),
        ("nosection.x=1", "nosection"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(PretrainConfig, overrides=[override])


def test_bad_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\ndim = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(PretrainConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "missing.toml")
