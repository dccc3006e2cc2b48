"""Masked-token augmentation of text meta-training episodes (recipe ``text_mask``): what
is masked, that only training episodes are, and that a resumed run draws the same masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metafit.config.recipe import RecipeError, load_recipe
from metafit.data.text_csv import TextCSV
from metafit.episodes import Episodes
from metafit.models.tokenizer import TokenMasker, load_tokenizer
from metafit.runs.directory import RunDir
from metafit.training.trainer import Trainer
from test_trainer import interrupt_at
from text_fixtures import sentences, shared_model_dir, write_csv


def token_ids(tmp_path: Path) -> torch.Tensor:
    path = write_csv(tmp_path / "intents.csv", sentences(6, 5))
    return TextCSV(path).tokenize(shared_model_dir(), max_length=16).tokens  # [30, 16]


def test_the_masker_replaces_word_pieces_only_with_the_mask_token(tmp_path: Path) -> None:
    ids = token_ids(tmp_path)
    tok = load_tokenizer(shared_model_dir())
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert special.any() and (~special).any()
    masker = TokenMasker(shared_model_dir(), 0.4)
    out = masker(ids, torch.Generator().manual_seed(0))
    changed = out != ids
    assert masker.mask_id == tok.mask_token_id
    assert (out[changed] == tok.mask_token_id).all()
    assert not (changed & special).any()  # padding, [CLS] and [SEP] stay
    share = float(changed.sum() / (~special).sum())
    assert 0.3 < share < 0.5, share
    again = masker(ids, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # the generator decides
    assert not torch.equal(masker(ids, torch.Generator().manual_seed(1)), out)
    assert torch.equal(TokenMasker(shared_model_dir(), 0.0)(ids), ids)
    with pytest.raises(ValueError, match=r"in \[0, 1\), not 1.0"):
        TokenMasker(shared_model_dir(), 1.0)


def text_recipe(tmp_path: Path, **extra):  # type: ignore[no-untyped-def]
    data = write_csv(tmp_path / "intents.csv", sentences(10, 8))
    return load_recipe("_banking77", {
        "data_root": str(data), "text_model": str(shared_model_dir()), "max_length": 16,
        "algorithm": "protonet", "ways": 3, "shots": 2, "queries": 2, "meta_batch": 2,
        "iterations": 6, "val_every": 3, "val_episodes": 4, "test_episodes": 6,
        "test_queries": 2, "class_split": [4, 3, 3], "checkpoint_every": 2, "log_every": 1,
        "seed": 5, **extra})


def test_only_training_episodes_are_masked(tmp_path: Path) -> None:
    recipe = text_recipe(tmp_path, text_mask=0.3)
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    mask_id = load_tokenizer(shared_model_dir()).mask_token_id
    seen: list[Episodes] = []
    original = trainer.algo.meta_gradients

    def spy(episodes: Episodes):  # type: ignore[no-untyped-def]
        seen.append(episodes)
        return original(episodes)

    trainer.algo.meta_gradients = spy  # type: ignore[method-assign]
    trainer.fit()
    assert len(seen) == 6
    for episodes in seen:
        assert (episodes.support_x == mask_id).any() and (episodes.query_x == mask_id).any()
    val = trainer.val_sampler.fixed(4)
    assert not (val.support_x == mask_id).any() and not (val.query_x == mask_id).any()
    plain = Trainer(text_recipe(tmp_path), tmp_path / "plain_run", progress=False)
    assert trainer.train_sampler.transform is not None
    assert plain.train_sampler.transform is None
    assert not (plain._sample().support_x == mask_id).any()


def test_a_resumed_run_draws_the_same_masks(tmp_path: Path) -> None:
    recipe = text_recipe(tmp_path, text_mask=0.3)
    Trainer(recipe, tmp_path / "full", progress=False).fit()
    trainer = Trainer(recipe, tmp_path / "broken", progress=False)
    interrupt_at(trainer, 6)  # the last checkpoint is at 4
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    Trainer(recipe, tmp_path / "broken", progress=False).fit()
    full = RunDir(tmp_path / "full").read_metrics()
    resumed = RunDir(tmp_path / "broken").read_metrics()
    steps = [r for r in full if "loss" in r]
    again = [r for r in resumed if "loss" in r]
    assert [r["iteration"] for r in steps] == [r["iteration"] for r in again] == list(range(1, 7))
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in steps], rel=1e-6)


def test_text_mask_is_refused_outside_text_models() -> None:
    with pytest.raises(RecipeError, match="text_mask is for text models"):
        load_recipe("omniglot_5w1s_protonet", {"text_mask": 0.1})
    with pytest.raises(RecipeError, match="text_mask"):
        load_recipe("_banking77", {"text_mask": 1.5})
