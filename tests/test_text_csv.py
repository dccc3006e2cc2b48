"""TextCSV: parsing quoted fields, grouping by class, errors with line numbers, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metafit.data.base import ClassDataset
from metafit.data.errors import DatasetError
from metafit.data.sampler import EpisodeSampler
from metafit.data.text_csv import TextCSV

GOOD = (
    "text,category\n"  # line 1
    "I am still waiting on my card?,card_arrival\n"  # 2
    '"Hello, I lost\nmy card",lost_card\n'  # 3-4
    '"She said ""hi"", then left",greeting\n'  # 5
    "  padded text  ,  card_arrival \n"  # 6
    "\n"  # 7 (blank, skipped)
    "another lost one,lost_card\n"  # 8
    "hi there,greeting\n"  # 9
    "when will it come,card_arrival\n"  # 10
)


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_parse_group_and_protocol(tmp_path: Path) -> None:
    ds = TextCSV(write(tmp_path, GOOD))
    assert isinstance(ds, ClassDataset)
    assert ds.classes == ["card_arrival", "greeting", "lost_card"]  # sorted
    assert len(ds) == 7
    assert ds.counts.tolist() == [3, 2, 2] and ds.offsets.tolist() == [0, 3, 5]
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 2, 2]
    # grouped, file order kept within a class; whitespace stripped; quotes undone
    assert ds.examples(0) == ["I am still waiting on my card?", "padded text", "when will it come"]
    assert ds.examples(1) == ['She said "hi", then left', "hi there"]
    assert ds.examples(2) == ["Hello, I lost\nmy card", "another lost one"]
    assert ds.labels == ["card_arrival"] * 3 + ["greeting"] * 2 + ["lost_card"] * 2
    assert ds.lines == [2, 6, 10, 5, 9, 3, 8]  # the line each record starts on
    for i, text in enumerate(ds.texts):
        assert ds.labels[i] == ds.classes[int(ds.targets[i])]
        assert text in ds.examples(int(ds.targets[i]))
    index = torch.tensor([[4, 0], [6, 1]])
    out = ds.gather(index)
    assert out.dtype == torch.long and torch.equal(out, index)
    with pytest.raises(IndexError):
        ds.gather(torch.tensor([7]))


def test_given_classes_order_and_other_columns(tmp_path: Path) -> None:
    ds = TextCSV(write(tmp_path, GOOD), classes=["lost_card", "greeting", "card_arrival", "unused"])
    assert ds.classes == ["lost_card", "greeting", "card_arrival", "unused"]
    assert ds.counts.tolist() == [2, 2, 3, 0]
    assert ds.examples(0)[0] == "Hello, I lost\nmy card"
    csv2 = write(tmp_path, "label,id,sentence\nb,1,second\na,2,first\n", "cols.csv")
    ds2 = TextCSV(csv2, text_column="sentence", label_column="label")
    assert ds2.classes == ["a", "b"] and ds2.texts == ["first", "second"]


def test_bom_is_ignored(tmp_path: Path) -> None:
    ds = TextCSV(write(tmp_path, b"\xef\xbb\xbftext,category\nhello,a\n"))
    assert ds.texts == ["hello"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.csv"):
        TextCSV(tmp_path / "nope.csv")


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "sentence,label\nhi,a\n")
    with pytest.raises(DatasetError, match=r"line 1.*'text'.*\['sentence', 'label'\]") as e:
        TextCSV(path)
    assert str(path) in str(e.value)


def test_empty_texts_and_labels_name_every_line(tmp_path: Path) -> None:
    content = 'text,category\nok,a\n   ,a\nfine,\n"",b\nlast\n'
    with pytest.raises(DatasetError) as e:
        TextCSV(write(tmp_path, content))
    msg = str(e.value)
    assert "data.csv" in msg
    assert "empty 'text' on line(s) 3, 5" in msg
    assert "'category' on line(s) 4, 6" in msg  # line 6 has no second field at all


def test_many_bad_lines_are_summarised(tmp_path: Path) -> None:
    content = "text,category\n" + "".join(f",c{i}\n" for i in range(25))
    with pytest.raises(DatasetError, match=r"line\(s\) 2, 3, .*11, \.\.\. \(25 lines in all\)"):
        TextCSV(write(tmp_path, content))


def test_label_not_in_given_classes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"\['lost_card'\] not in the given classes.*3, 8"):
        TextCSV(write(tmp_path, GOOD), classes=["card_arrival", "greeting"])
    with pytest.raises(ValueError, match="more than once"):
        TextCSV(write(tmp_path, GOOD), classes=["a", "a"])


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    raw = b'text,category\n"two\nlines",a\n' + b"caf\xe9 latin-1,b\n"
    with pytest.raises(DatasetError, match=r"data.csv, line 4: not valid UTF-8"):
        TextCSV(write(tmp_path, raw))


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="empty"):
        TextCSV(write(tmp_path, ""))
    with pytest.raises(DatasetError, match="no data rows"):
        TextCSV(write(tmp_path, "text,category\n"))


def test_subset(tmp_path: Path) -> None:
    ds = TextCSV(write(tmp_path, GOOD)).subset([2, 0])
    assert ds.classes == ["lost_card", "card_arrival"]
    assert ds.counts.tolist() == [2, 3] and ds.offsets.tolist() == [0, 2]
    assert ds.texts[:2] == ["Hello, I lost\nmy card", "another lost one"]
    assert ds.targets.tolist() == [0, 0, 1, 1, 1]


def test_episode_sampler_gives_valid_index_episodes(tmp_path: Path) -> None:
    ds = TextCSV(write(tmp_path, GOOD))
    eps = EpisodeSampler(ds, ways=3, shots=1, queries=1, seed=0).sample(20)
    assert eps.support_x.shape == (20, 3) and eps.query_x.shape == (20, 3)
    assert eps.support_x.dtype == torch.long and eps.classes is not None
    for t in range(20):
        s, q = eps.support_x[t], eps.query_x[t]
        assert set(s.tolist()).isdisjoint(q.tolist())  # support and query differ
        # each index's true class is the class behind its episode label
        assert torch.equal(ds.targets[s], eps.classes[t][eps.support_y[t]])
        assert torch.equal(ds.targets[q], eps.classes[t][eps.query_y[t]])
        assert sorted(eps.support_y[t].tolist()) == [0, 1, 2]


BANKING77 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"


@pytest.mark.skipif(not (BANKING77 / "train.csv").is_file(), reason="../shared/data not present")
def test_real_banking77_counts() -> None:
    train = TextCSV(BANKING77 / "train.csv")
    assert len(train.classes) == 77 and len(train) == 10003
    assert len(TextCSV(BANKING77 / "test.csv")) == 3080
