"""`ember tokenizer train`, `ember data prepare`, `ember train gpt|bert` through the real CLI entry point."""

import sysconfig
from pathlib import Path

import pytest

from ember.cli.main import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _run(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def test_tokenizer_data_train_register_export(ember_home, tmp_path, capsys):
    files = [STDLIB / "textwrap.py", STDLIB / "shlex.py", STDLIB / "fnmatch.py"]
    assert _run("tokenizer", "train", *files, "--type", "bpe", "--vocab-size", "400", "--name", "py-bpe") == 0
    assert "py-bpe:1" in capsys.readouterr().out
    data = tmp_path / "data"
    assert _run("data", "prepare", *files, "--tokenizer", "py-bpe", "--out", data) == 0
    assert (data / "manifest.json").is_file() and (data / "train.bin").stat().st_size > 0
    capsys.readouterr()
    code = _run("train", "gpt", "--config", CONFIGS / "gpt-tiny.yaml", f"data={data}", "tokenizer=py-bpe",
                f"out={tmp_path / 'run'}", "max_steps=3", "seq_len=32", "batch_size=4", "hidden_size=32",
                "intermediate_size=64", "eval_every=0", "checkpoint_every=0", "name=cli-gpt", "progress=false")
    assert code == 0
    assert "cli-gpt:1" in capsys.readouterr().out
    from ember.store import registry

    v = registry.resolve("cli-gpt")
    assert v.metadata["lineage"]["tokenizer"] == "py-bpe:1"
    assert _run("models", "export", "cli-gpt", tmp_path / "export") == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert (tmp_path / "export" / "tokenizer.json").is_file()

    # a vocabulary that does not match the tokenizer fails before training, naming the key
    capsys.readouterr()
    code = _run("train", "gpt", "--config", CONFIGS / "gpt-tiny.yaml", f"data={data}", "tokenizer=py-bpe",
                f"out={tmp_path / 'run2'}", "vocab_size=5000")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "vocab_size" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("verb,config,override,key", [
    ("gpt", "gpt-tiny.yaml", "bogus_key=1", "bogus_key"),
    ("gpt", "gpt-tiny.yaml", "max_steps=abc", "max_steps"),
    ("bert", "bert-tiny.yaml", "lr=fast", "lr"),
    ("bert", "bert-tiny.yaml", "mlm_prob=[1, 2]", "mlm_prob"),
])
def test_bad_config_is_one_line_naming_the_key(ember_home, capsys, verb, config, override, key):
    code = _run("train", verb, "--config", CONFIGS / config, override)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and f"'{key}'" in err
