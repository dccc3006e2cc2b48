"""What a report says besides its curves: confusion counts, the caveats of short runs,
text episodes with their sentences, and the pages (``report.md``, ``index.html``)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from metafit.data.splits import load_split
from metafit.runs.caveats import MIN_EPISODES, MIN_ITERATIONS, short_run_caveats
from metafit.runs.directory import RunDir
from metafit.runs.report import report_runs
from metafit.runs.report_page import ReportPage, Section, Table, to_html, to_markdown
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe
from text_fixtures import sentences, shared_model_dir, write_csv


def _run_dir(path: Path, algorithm: str, iteration: int) -> RunDir:
    """A run directory with a recipe and a status, as a finished run leaves them."""
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.write_config(classification_recipe(path / "data", algorithm, inner_steps=5))
    run.set_status("complete", iteration=iteration)
    return run


def test_short_runs_and_few_episodes_are_named(tmp_path: Path) -> None:
    runs = {"maml": _run_dir(tmp_path / "a", "maml", 6),
            "protonet": _run_dir(tmp_path / "b", "protonet", MIN_ITERATIONS)}
    lines = short_run_caveats(runs, episodes=MIN_EPISODES - 1)
    assert len(lines) == 2
    assert f"fewer than {MIN_ITERATIONS} iterations: maml (6)." in lines[0]
    assert "protonet" not in lines[0]  # long enough
    assert f"only {MIN_EPISODES - 1} evaluation episodes" in lines[1]
    assert short_run_caveats(runs, episodes=MIN_EPISODES)[1:] == []
    probe = {"probe": _run_dir(tmp_path / "c", "linear_probe", 0)}
    assert short_run_caveats(probe, episodes=100) == []  # nothing to meta-train


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_html_page_is_self_contained_and_escapes_data(tmp_path: Path) -> None:
    page = ReportPage("report", warnings=["too <short>"], sections=[Section(
        "run", "a | b", figures=[("a.png", "caption")],
        tables=[Table(["sentence", "result"], [["<script>x</script> | y", "wrong"]],
                      ["wrong"])])])
    html = to_html(page)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'class="warning"' in html and "too &lt;short&gt;" in html
    parser = _Links()
    parser.feed(html)
    assert parser.links == ["a.png", "a.png"]
    assert not parser.tags & {"script", "link", "iframe"}
    md = to_markdown(page)
    assert "| &lt;script&gt;x&lt;/script&gt; \\| y | wrong |" in md
    assert md.startswith("# report\n\n> **Warning:** too &lt;short&gt;")


def test_markdown_cells_carry_no_links_or_images_from_the_data() -> None:
    page = ReportPage("report", sections=[Section("run", tables=[Table(
        ["sentence", "intent"],
        [["see [click me](https://evil.example/phish)", "![px](https://evil.example/p.png)"],
         ["`code` and a \\ backslash", "plain"]])])])
    md = to_markdown(page)
    assert "\\[click me\\](https://evil.example/phish)" in md
    assert "!\\[px\\](https://evil.example/p.png)" in md
    assert "\\`code\\` and a \\\\ backslash" in md
    assert not re.search(r"(?<!\\)\]\(", md) and "![" not in md  # no live link or image


def test_report_of_a_text_run_lists_every_sentence(tmp_path: Path) -> None:
    rows = [(f"<b>{text}</b>", label) for text, label in sentences(10, 8, seed=1)]
    csv = write_csv(tmp_path / "intents.csv", rows)
    from metafit.config.schema import make_recipe

    recipe = make_recipe(dict(
        name="tiny_text", dataset="text_csv", model="text", data_root=str(csv),
        text_model=str(shared_model_dir()), max_length=16, ways=3, shots=1, queries=2,
        test_queries=3, algorithm="protonet", adapt="top", adapt_layers=1, inner_steps=0,
        meta_batch=1, iterations=2, val_every=2, val_episodes=2, class_split=[4, 3, 3],
        seed=0))
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    files = report_runs([tmp_path / "run"], episodes=3)
    out = tmp_path / "run" / "report"
    assert {f.name for f in files} >= {"episode_protonet.png", "confusion_protonet.png",
                                       "index.html"}
    md = (out / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "| query |" in ln]
    assert len(table) == 3 * 3  # every query of the first episode: 3 ways x 3 queries
    assert all(ln.split(" | ")[0][2:] in {f"intent_{c}" for c in range(10)} for ln in table)
    assert "{" not in md and "Warning" in md
    html = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(html)
    for link in parser.links:  # every figure the page lists exists beside it
        assert (out / link).is_file() and "/" not in link
    assert set(parser.links) >= {f.name for f in files if f.suffix == ".png"}
    confusion = json.loads((out / "confusion_protonet.json").read_text())
    test_intents = sorted(load_split(recipe, "test").classes)  # type: ignore[union-attr]
    assert confusion["classes"] == test_intents  # 3 episodes drew all 3 test intents
    assert "<b>" not in html and "&lt;b&gt;" in html  # the data's markup stays text
    assert "no inner steps" in md
