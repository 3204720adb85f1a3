"""The ``fxquant`` command line end to end on a tiny GPT-2 folder (save_pretrained layout, with a
word-level tokenizer built here: nothing is downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fxquant
from fxquant.cli import main

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["[UNK]", "[PAD]", *(f"w{i}" for i in range(100)), "the", "a", "of", "to", "and", "in",
         "is", "it", "that", "was", "for", "on", "are", "with", "as"]
TEXTS = ["the w1 w2 of w3 and w4", "w5 w6 and the w7 w8 w9 is", "a w10 w11 w12 to w13 w14",
         "it was w20 w21 on the w22", "w30 w31 w32 w33 are w34 as w35"]


def _tokenizer():
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(WORDS),
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "gpt2")
    _tokenizer().save_pretrained(root / "gpt2")
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("fxquant: error: ")
    return err[0]


def test_help_reads_as_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert all(word in out for word in ("quantize", "inspect", "compare", "examples:"))
    assert "``" not in out and ":class:" not in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"fxquant {fxquant.__version__} (torch ")


def test_quantize_inspect_compare(folders, capsys):
    out = folders / "gpt2-int8"
    assert main(["quantize", str(folders / "gpt2"), "--out", str(out), "--mode", "static",
                 "--calibration", str(folders / "texts.txt"), "--onnx", "-q"]) == 0
    assert {"fxquant.json", "model.safetensors", "config.json", "tokenizer.json",
            "model.onnx"} <= {p.name for p in out.iterdir()}
    qmodel = fxquant.load(out)
    assert type(qmodel).__name__ == "GPT2LMHeadModel"
    assert fxquant.record_of(qmodel).config.mode == "static"
    capsys.readouterr()

    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    for text in ("GPT2LMHeadModel", "transformer.h.1.mlp.c_fc", "w8 per_channel, static",
                 "tied (one tensor)", "int8"):
        assert text in table, text
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["class_name"] == "GPT2LMHeadModel"
    assert main(["inspect", str(out / "model.onnx")]) == 0
    assert "input_ids" in capsys.readouterr().out

    assert main(["compare", str(folders / "gpt2"), str(out), "--texts",
                 str(folders / "texts.txt"), "--rounds", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    int8, fp32 = result["models"]["int8"], result["models"]["fp32"]
    assert result["inputs"]["count"] == len(TEXTS)
    assert int8["size_bytes"] < fp32["size_bytes"] / 2
    assert int8["logits_cosine"] > 0.99 and int8["top1_agreement"] >= 0.8
    assert main(["compare", str(folders / "gpt2"), str(out), "--rounds", "2"]) == 0
    assert "Int8 (fxquant)" in capsys.readouterr().out


def test_static_mode_needs_calibration_texts(folders, capsys):
    assert main(["quantize", str(folders / "gpt2"), "--out", str(folders / "never"),
                 "--mode", "static", "-q"]) == 2
    assert "--calibration" in _error_line(capsys)
    assert not (folders / "never").exists()


def test_failed_onnx_export_is_reported_and_the_save_kept(folders, capsys, monkeypatch):
    import fxquant.onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("no symbolic for some op\nsecond line")

    monkeypatch.setattr(fxquant.onnx_export, "export_onnx", broken)
    out = folders / "gpt2-no-onnx"
    assert main(["quantize", str(folders / "gpt2"), "--out", str(out), "--onnx", "-q"]) == 2
    line = _error_line(capsys)
    assert "saved in" in line and "ONNX export failed: RuntimeError: no symbolic" in line
    fxquant.load(out)


def test_missing_folder_unknown_architecture_and_pickles(folders, tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in _error_line(capsys)

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "no_such_model",
                                                 "architectures": ["NoSuchModel"]}))
    (odd / "model.safetensors").write_bytes(b"")
    assert main(["quantize", str(odd), "--out", str(tmp_path / "o")]) == 2
    assert "unknown architecture" in _error_line(capsys)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folders / "gpt2" / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    assert main(["quantize", str(pickled), "--out", str(tmp_path / "o")]) == 2
    assert "pytorch_model.bin" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_the_installed_command_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fxquant.cli", "inspect", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fxquant: error: {tmp_path} is not an fxquant save: it has no fxquant.json. Save a "
        "quantized model with fxquant.save first."]
