"""Regenerate the pictures of ``docs/report.md`` from real tiny runs (about 10 minutes on two
CPU cores, most of it the text run's report).

    PYTHONPATH=src python tools/report_images.py --data ../shared/data --work /tmp/report-images

Trains, into ``--work``: MAML and ProtoNet on Omniglot (100 iterations each, long enough
not to be flagged), ProtoNet on BANKING77 with all-MiniLM-L6-v2 (20 iterations: flagged
as too short on purpose), the tiny quickstart and a 3-trial tuning study; reports them
with ``metafit report`` and copies the figures the page shows into ``--out``, scaled to
at most ``--width`` pixels and reduced to 256 colours (each well under 200 KB).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image

from metafit.cli.main import main

#: docs image name -> (report directory under --work, figure file)
PICTURES = {
    "training.png": ("omniglot", "training.png"),
    "adaptation.png": ("omniglot", "adaptation.png"),
    "confusion_omniglot.png": ("omniglot", "confusion_maml.png"),
    "episode_omniglot.png": ("omniglot", "episode_maml.png"),
    "adaptation_no_steps.png": ("text", "adaptation.png"),
    "confusion_text.png": ("text", "confusion_protonet.png"),
    "episode_text.png": ("text", "episode_protonet.png"),
    "results_quickstart.png": ("quickstart/report", "results.png"),
    "tuning_caveat.png": ("tune/report", "intermediate_values.png"),
}


def _run(*args: str) -> None:
    code = main(list(args))
    if code != 0:
        raise SystemExit(f"metafit {' '.join(args)} failed ({code})")


def train_and_report(data: Path, work: Path) -> None:
    """The runs and reports the pictures come from."""
    omniglot = f"data_root={data / 'omniglot'}"
    short = ["iterations=100", "val_every=25", "val_episodes=50", "checkpoint_every=50",
             "log_every=5"]
    _run("train", "omniglot_5w1s_maml", omniglot, "meta_batch=4", *short, "--out",
         str(work / "maml"), "--no-progress")
    _run("train", "omniglot_5w1s_protonet", omniglot, *short, "--out", str(work / "protonet"),
         "--no-progress")
    _run("report", str(work / "maml"), str(work / "protonet"), "--episodes", "100", "--out",
         str(work / "omniglot"))
    _run("train", "banking77_protonet", f"data_root={data / 'banking77'}", "iterations=20",
         "val_every=10", "val_episodes=10", "checkpoint_every=10", "log_every=2",
         "meta_batch=2", "--out", str(work / "text-run"), "--no-progress")
    _run("report", str(work / "text-run"), "--episodes", "30", "--out", str(work / "text"))
    _run("quickstart", "--size", "tiny", "--out", str(work / "quickstart"), "--no-progress")
    _run("tune", "sinusoid_maml_tune", "val_every=5", "val_episodes=50", "--storage",
         f"sqlite:///{work / 'tune.db'}", "--out", str(work / "tune"), "--trials", "3",
         "--trial-iterations", "20", "--report")


def shrink(source: Path, target: Path, width: int) -> int:
    """Copy a PNG at most ``width`` pixels wide, in 256 colours; returns its bytes."""
    with Image.open(source) as opened:
        im = opened.convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target.stat().st_size


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="holds omniglot/, banking77/")
    parser.add_argument("--work", type=Path, required=True, help="runs and reports go here")
    parser.add_argument("--out", type=Path, default=Path("docs/images/report"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--skip-training", action="store_true",
                        help="only copy the figures of reports already in --work")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.skip_training:
        train_and_report(args.data.resolve(), args.work.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (report, figure) in PICTURES.items():
        size = shrink(args.work / report / figure, args.out / name, args.width)
        logging.info("%s: %d KB", args.out / name, size // 1024)


if __name__ == "__main__":
    main_()
