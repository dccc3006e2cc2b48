"""Vocabulary trimming (``metafit compress --trim-vocabulary``): the token table keeps the
rows of the tokens the given texts and the support set use, outputs on such texts are
unchanged, other tokens read as ``[UNK]``, the trimmed model round-trips through its
directory, a forged token map is refused, and it combines with distillation and int8."""

from __future__ import annotations

import json

import pytest
import torch

from deploy_fixtures import text_recipe
from metafit.algorithms.from_recipe import build_algorithm
from metafit.cli.main import main
from metafit.deploy import AdaptedModel, Adapter, InputError, ModelDirError
from metafit.deploy.compress import quantize
from metafit.deploy.materialise import check_vocabulary_spec
from metafit.deploy.quantize import vocabulary_table
from metafit.deploy.vocabulary import trim_vocabulary
from text_fixtures import sentences, write_csv

#: The teacher's 3 intents are classes 0-2 of the fixture; class 3's words are never seen.
SEEN = [t for t, _ in sentences(3, 10, seed=7)]
UNSEEN_WORD = "alpha3"


@pytest.fixture(scope="module")
def model() -> AdaptedModel:
    """A linear probe on the tiny 2-layer BERT, adapted to 3 intents."""
    recipe = text_recipe("linear_probe", eval_inner_steps=30)
    rows = sentences(3, 4, seed=1)
    return Adapter(recipe, build_algorithm(recipe)).adapt([t for t, _ in rows],
                                                          [label for _, label in rows])


def test_trimmed_model_keeps_outputs_on_seen_texts_and_reads_others_as_unk(model) -> None:
    trimmed, report = trim_vocabulary(model, SEEN)
    table = trimmed.module.body.encoder.get_input_embeddings()
    tokenizer = model.preprocessor.load()
    assert report["tokenizer"] == len(tokenizer) == 69
    assert table.num_embeddings == report["kept"] < 69  # class 3-11 words dropped
    assert trimmed.arch["vocabulary"] == {"kept": report["kept"], "tokenizer": 69}
    assert report["parameters"]["after"] < report["parameters"]["before"]
    x = model.preprocess(SEEN)
    assert torch.equal(trimmed.logits(x), model.logits(x))  # every token kept: exact
    unk = tokenizer.unk_token_id
    odd = model.preprocess([f"please {UNSEEN_WORD} my card"])
    as_unk = odd.clone()
    as_unk[odd == tokenizer.convert_tokens_to_ids(UNSEEN_WORD)] = unk
    assert not torch.equal(odd, as_unk)
    assert torch.equal(trimmed.logits(odd), model.logits(as_unk))
    assert not torch.allclose(model.logits(odd), model.logits(as_unk))  # it did change
    # the estimate: class words are shared by many texts, so few held-out tokens are new
    assert report["held_out_texts"] == 3 and 0.0 <= report["unseen_token_share"] < 0.2


def test_support_tokens_and_special_tokens_are_always_kept(model) -> None:
    trimmed, report = trim_vocabulary(model, ["please"])
    tokenizer = model.preprocessor.load()
    token_map = trimmed.module.body.token_map
    kept = set(torch.nonzero(token_map != token_map[tokenizer.unk_token_id]).flatten().tolist())
    kept.add(tokenizer.unk_token_id)
    support_ids = set(model.support[0].unique().tolist())
    assert support_ids <= kept and set(tokenizer.all_special_ids) <= kept
    assert report["kept"] == len(kept)
    x = model.support[0]
    assert torch.equal(trimmed.logits(x), model.logits(x))  # the support set is unchanged


def test_trimmed_model_round_trips_and_quantizes_its_own_token_table(model,
                                                                     tmp_path) -> None:
    trimmed, report = trim_vocabulary(model, SEEN)
    trimmed.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "encoder" / "config.json").read_text())
    assert config["vocab_size"] == report["kept"]
    loaded = AdaptedModel.load(tmp_path / "m")
    assert loaded.compression["vocabulary"]["kept"] == report["kept"]
    assert torch.equal(loaded.predict_proba(SEEN[:4]), trimmed.predict_proba(SEEN[:4]))
    # the trimmed table (fewer rows than the 64 positions) is still the one int8 takes
    assert report["kept"] * 16 < 64 * 16
    assert vocabulary_table(loaded.module) == "body.encoder.embeddings.word_embeddings"
    small = quantize(loaded, embeddings=True)
    small.save(tmp_path / "q")
    again = AdaptedModel.load(tmp_path / "q")
    assert torch.equal(again.predict_proba(SEEN[:4]), small.predict_proba(SEEN[:4]))


def test_a_forged_token_map_or_vocabulary_is_refused(model, tmp_path) -> None:
    trimmed, report = trim_vocabulary(model, SEEN)
    trimmed.module.body.token_map[5] = report["kept"] + 1000  # past the table's rows
    trimmed.save(tmp_path / "m")
    with pytest.raises(ModelDirError, match="token map points outside"):
        AdaptedModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match="vocab_size is 40"):
        check_vocabulary_spec({"kept": 41, "tokenizer": 69}, 40)
    with pytest.raises(ValueError, match="must be integers"):
        check_vocabulary_spec({"kept": True, "tokenizer": 69}, 1)
    with pytest.raises(ValueError, match="1 <= kept <= tokenizer"):
        check_vocabulary_spec({"kept": 40, "tokenizer": 10**9}, 40)


def test_refusals(model) -> None:
    trimmed, _ = trim_vocabulary(model, SEEN)
    with pytest.raises(ValueError, match="trimmed already"):
        trim_vocabulary(trimmed, SEEN)
    with pytest.raises(ValueError, match="trim the vocabulary first"):
        trim_vocabulary(quantize(model), SEEN)
    with pytest.raises(InputError, match="needs texts"):
        trim_vocabulary(model, [])


def test_compress_cli_trims_after_distilling_and_reports(model, tmp_path, capsys) -> None:
    model.save(tmp_path / "teacher")
    table = write_csv(tmp_path / "texts.csv", sentences(3, 10, seed=7))
    out = tmp_path / "small"
    assert main(["compress", str(tmp_path / "teacher"), "--distill", "layers:1",
                 "--trim-vocabulary", "--unlabelled", str(table), "--distill-steps", "3",
                 "-o", str(out), "--quantize", "int8", "--quantize-embeddings",
                 "--threads", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["vocabulary"]["texts"] == 30 and figures["distill"]["steps"] == 3
    assert figures["after"]["bytes"] < figures["before"]["bytes"]
    loaded = AdaptedModel.load(out)
    assert loaded.arch["vocabulary"]["kept"] == figures["vocabulary"]["kept"]
    assert len(loaded.module.body.encoder.encoder.layer) == 1
    assert loaded.predict(SEEN[:1])[0]["label"] in model.label_names
    assert main(["compress", str(tmp_path / "teacher"), "--trim-vocabulary", "--unlabelled",
                 str(table), "-o", str(tmp_path / "t")]) == 0
    text = capsys.readouterr().out
    assert "token table trimmed to" in text and "would read as [UNK]" in text
    assert main(["compress", str(tmp_path / "teacher"), "--trim-vocabulary",
                 "-o", str(tmp_path / "u")]) == 2
    assert "--trim-vocabulary needs --unlabelled" in capsys.readouterr().err
