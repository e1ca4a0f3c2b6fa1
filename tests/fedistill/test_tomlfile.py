import pytest

from fedistill.errors import ConfigError
from fedistill.tomlfile import load_toml


def test_load_toml_reads_a_document_and_refuses_bad_files_in_one_line(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('title = "x"\n[budget]\nipc = 10\n')
    assert load_toml(good) == {"title": "x", "budget": {"ipc": 10}}
    with pytest.raises(ConfigError, match="config file not found"):
        load_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("ipc = [1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(binary)
