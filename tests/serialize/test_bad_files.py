"""What fxquant.save refuses to write and fxquant.load refuses to read: each a clear
SaveLoadError / FormatError, and never a half-loaded model or a half-written folder."""

from __future__ import annotations

import importlib
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from saved_models import MLP, Shifted

import fxquant
from fxquant import FormatError, SaveLoadError
from fxquant.serialize import MANIFEST_FILE, WEIGHTS_FILE
from fxquant.serialize.tensors import file_sha256


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An MLP quantized whole (static, so activation ranges are recorded too) and saved."""
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    q = fxquant.quantize(MLP().eval(), (x,), calibration=[(torch.randn(8, 16),)],
                         config=fxquant.QuantConfig(mode="static"))
    folder = fxquant.save(q, tmp_path_factory.mktemp("saved") / "mlp")
    return folder, q, x


@pytest.fixture
def copy(saved, tmp_path):
    """A private copy of the saved folder, to damage."""
    return shutil.copytree(saved[0], tmp_path / "copy")


def _manifest(folder):
    return json.loads((folder / MANIFEST_FILE).read_text())


def _rewrite_weights(folder, change):
    """Apply ``change`` to the tensors and rewrite the file with a matching manifest (size and
    hash), as a tool that edits files consistently would."""
    path = folder / WEIGHTS_FILE
    tensors = change(load_file(str(path)))
    save_file(tensors, str(path))
    manifest = _manifest(folder)
    manifest["weights"].update(size_bytes=path.stat().st_size, sha256=file_sha256(path))
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_good_copy_loads(copy, saved):
    assert torch.equal(fxquant.load(copy, model=MLP())(saved[2]), saved[1](saved[2]))


def test_truncated_weights_file(copy):
    path = copy / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"truncated"):
        fxquant.load(copy, model=MLP())


def test_changed_bytes_fail_the_hash(copy):
    path = copy / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"SHA-256"):
        fxquant.load(copy, model=MLP())


def test_damaged_header_without_the_hash_check(copy):
    path = copy / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[8:12] = b"\x00\x00\x00\x00"  # the JSON header's first bytes
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"not a complete safetensors file"):
        fxquant.load(copy, model=MLP(), verify=False)


def test_format_version_from_the_future(copy):
    manifest = _manifest(copy)
    manifest["format_version"] = 99
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"format version 99.*Upgrade fxquant"):
        fxquant.load(copy, model=MLP())


def test_manifest_that_is_not_json(copy):
    (copy / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(FormatError, match=r"cannot be read as JSON"):
        fxquant.load(copy, model=MLP())


def test_config_field_from_a_newer_fxquant_is_refused(copy):
    manifest = _manifest(copy)
    manifest["config"]["some_future_option"] = 1
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"QuantConfig cannot be read"):
        fxquant.load(copy, model=MLP())


def test_skeleton_of_other_sizes_names_the_layer(saved):
    want = r"layer fc1\).*float model gives torch.int8 \[32, 24\]"
    with pytest.raises(SaveLoadError, match=want):
        fxquant.load(saved[0], model=MLP(width=24))


def test_skeleton_of_another_class(saved):
    with pytest.raises(SaveLoadError, match=r"quantized MLP.*is a Sequential"):
        fxquant.load(saved[0], model=torch.nn.Sequential(torch.nn.Linear(16, 8)))


def test_missing_tensor_names_it_and_its_layer(copy):
    _rewrite_weights(copy, lambda t: {k: v for k, v in t.items() if k != "fxq.fc2_w_scale"})
    with pytest.raises(FormatError, match=r"lacks 1 tensor.*'fxq.fc2_w_scale' \(layer fc2\)"):
        fxquant.load(copy, model=MLP())


def test_unexpected_tensor(copy):
    _rewrite_weights(copy, lambda t: {**t, "fxq.fc3_w_int8": torch.zeros(2, 2, dtype=torch.int8)})
    with pytest.raises(FormatError, match=r"1 tensor.*no place for.*fxq.fc3_w_int8"):
        fxquant.load(copy, model=MLP())


def test_a_replay_that_builds_another_graph_is_refused(copy):
    # What a later fxquant whose passes changed would meet.
    manifest = _manifest(copy)
    manifest["replay"][""]["converted_sha256"] = "0" * 64
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"rebuilds to another graph.*saved with fxquant"):
        fxquant.load(copy, model=MLP())


def test_folder_of_pickles_is_refused_unopened(tmp_path, monkeypatch):
    torch.save(MLP().state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"a": 1}))

    def opened(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", opened)
    monkeypatch.setattr(pickle, "load", opened)
    monkeypatch.setattr(pickle, "loads", opened)
    with pytest.raises(FormatError, match=r"only pickle files.*never unpickles"):
        fxquant.load(tmp_path, model=MLP())


def test_not_a_folder_and_not_a_save(tmp_path):
    with pytest.raises(SaveLoadError, match=r"not a folder"):
        fxquant.load(tmp_path / "nothing")
    with pytest.raises(FormatError, match=r"no fxquant.json"):
        fxquant.load(tmp_path)


def test_failed_load_leaves_the_skeleton_as_it_was(saved):
    skeleton = MLP(width=24)
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    params = [id(p) for p in skeleton.parameters()]
    with pytest.raises(SaveLoadError):
        fxquant.load(saved[0], model=skeleton)
    assert [id(p) for p in skeleton.parameters()] == params
    assert all(torch.equal(before[k], v) for k, v in skeleton.state_dict().items())


def test_a_failed_save_leaves_the_previous_one_whole(copy, saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    save_module = importlib.import_module("fxquant.serialize.save")  # not the function

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save_module, "write_tensors", broken)
    with pytest.raises(OSError, match=r"disk full"):
        fxquant.save(saved[1], copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert [p.name for p in copy.parent.iterdir()] == ["copy"]  # no temporary folder left


def test_save_replaces_its_own_folder_only(saved, tmp_path):
    fxquant.save(saved[1], tmp_path / "again")
    fxquant.save(saved[1], tmp_path / "again")  # an earlier save is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SaveLoadError, match=r"not an fxquant save"):
        fxquant.save(saved[1], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_save_refuses_models_it_cannot_rebuild():
    x = torch.randn(2, 16)
    with pytest.raises(SaveLoadError, match=r"did not quantize"):
        fxquant.save(MLP(), "unused")
    observed = fxquant.prepare(MLP().eval(), (x,))
    with pytest.raises(SaveLoadError, match=r"observed model"):
        fxquant.save(observed, "unused")
    exported = fxquant.quantize(MLP().eval(), (x,), config=fxquant.QuantConfig(capture="export"))
    with pytest.raises(SaveLoadError, match=r"captured with torch.export.*capture='regions'"):
        fxquant.save(exported, "unused")


def test_meta_skeleton_without_its_non_persistent_buffer(tmp_path):
    x = torch.randn(3, 16)
    model = Shifted().eval()
    q = fxquant.quantize(model, (x,), config=fxquant.QuantConfig(capture="regions"))
    fxquant.save(q, tmp_path / "shifted")
    assert torch.equal(fxquant.load(tmp_path / "shifted", model=Shifted())(x), q(x))
    skeleton = Shifted().to("meta")  # parameters and buffers on meta
    with pytest.raises(SaveLoadError, match=r"shift.*build the float model .* on the CPU"):
        fxquant.load(tmp_path / "shifted", model=skeleton)
