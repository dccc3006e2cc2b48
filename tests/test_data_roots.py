"""Where a relative data_root points: a recipe file's own folder (through ``base:`` too),
``$METAFIT_DATA`` for the shipped recipes, the current directory on the command line; and
errors that show the full path and the rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from metafit.config.recipe import load_recipe
from metafit.data.splits import load_split


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder of its own, with METAFIT_DATA unset."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("METAFIT_DATA", raising=False)
    return cwd


def test_a_recipe_files_data_root_is_taken_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "proj" / "recipes").mkdir(parents=True)
    recipe = tmp_path / "proj" / "recipes" / "mine.yaml"
    recipe.write_text("dataset: image_folder\ndata_root: ../data/images\n")
    got = load_recipe(recipe).data_root
    assert got is not None and Path(got) == tmp_path / "proj" / "recipes" / "../data/images"
    assert Path(got).resolve() == (tmp_path / "proj" / "data" / "images").resolve()
    relative = Path("..") / "proj" / "recipes" / "mine.yaml"  # the path given may be relative
    assert Path(load_recipe(tmp_path / "cwd" / relative).data_root or "").is_absolute()
    for fixed in ("/abs/images", "~/images"):
        recipe.write_text(f"dataset: image_folder\ndata_root: {fixed}\n")
        assert load_recipe(recipe).data_root == fixed


def test_through_base_each_data_root_follows_the_file_that_sets_it(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text("dataset: image_folder\ndata_root: imgs\n")
    (tmp_path / "team").mkdir()
    child = tmp_path / "team" / "child.yaml"
    child.write_text("base: ../shared/base.yaml\nways: 3\n")
    assert load_recipe(child).data_root == str(tmp_path / "shared" / "imgs")
    child.write_text("base: ../shared/base.yaml\ndata_root: mine\n")
    assert load_recipe(child).data_root == str(tmp_path / "team" / "mine")
    overridden = load_recipe(child, ["data_root=from/cli"])  # the current directory
    assert overridden.data_root == str(tmp_path / "cwd" / "from" / "cli")


def test_shipped_recipes_read_metafit_data(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = str(tmp_path / "cwd" / "omniglot")  # unset: the current directory
    assert load_recipe("omniglot_5w1s_maml").data_root == cwd
    monkeypatch.setenv("METAFIT_DATA", str(tmp_path / "data"))
    assert load_recipe("omniglot_5w1s_maml").data_root == str(tmp_path / "data" / "omniglot")
    assert load_recipe("banking77_protonet").data_root == str(tmp_path / "data" / "banking77")
    monkeypatch.setenv("METAFIT_DATA", "rel")  # relative to the current directory
    assert load_recipe("_banking77").data_root == str(tmp_path / "cwd" / "rel" / "banking77")
    user = tmp_path / "u.yaml"  # a user's recipe over a shipped one: the shipped rule
    user.write_text("base: omniglot_5w1s_maml\n")
    assert load_recipe(user).data_root == str(tmp_path / "cwd" / "rel" / "omniglot")


def test_a_missing_data_root_is_shown_in_full_with_the_rules(tmp_path: Path) -> None:
    recipe = load_recipe("omniglot_5w1s_maml")
    with pytest.raises(FileNotFoundError) as e:
        load_split(recipe, "train")
    msg = str(e.value)
    assert f"data_root {tmp_path / 'cwd' / 'omniglot'} (written as 'omniglot' in the " \
           "shipped recipe _omniglot, $METAFIT_DATA not set) does not exist" in msg
    cli = load_recipe("omniglot_5w1s_maml", ["data_root=nowhere/omni"])
    with pytest.raises(FileNotFoundError, match="written as 'nowhere/omni' on the command line"):
        load_split(cli, "train")
    user = tmp_path / "mine.yaml"
    user.write_text("base: omniglot_5w1s_maml\ndata_root: imgs/\n")
    with pytest.raises(FileNotFoundError) as e:
        load_split(load_recipe(user), "train")
    assert f"data_root {tmp_path / 'imgs'} (written as 'imgs/' in {user})" in str(e.value)
    home = load_recipe("omniglot_5w1s_maml", ["data_root=~/no/such/dir"])
    with pytest.raises(FileNotFoundError) as e:
        load_split(home, "train")
    assert f"data_root {Path.home() / 'no/such/dir'} ('~/no/such/dir') does not" in str(e.value)
    assert "$METAFIT_DATA" in msg and "recipe file that sets it" in msg
