"""Which shipped recipe to use for a kind of task, read from one file: ``_recommended.yaml``
among the shipped recipes.

For each kind of task (``characters``: one-shot classification of handwritten characters
of new alphabets) the file names the *candidates* (each one or more ``metafit train``
stages: a shipped recipe and ``key=value`` overrides) and the one *recommended*, with the
measurement behind the choice (``evidence``) and the training budget it was measured at.
``metafit recipes recommend`` prints it; ``benchmarks/character_recipes.py`` trains and
scores the candidates side by side. After such a comparison, the choice is changed in
that file alone (``recommended`` and ``evidence``).

A candidate of several stages runs them in order, each later stage warm-started from the
run of the stage before (its ``init_from``), with the training budget shared between
them as ``budget_shares`` says (Meta-Baseline, Chen et al. 2021: a classifier on all
training classes, then a cosine ProtoNet from its body).

A candidate of ``members: K`` (one stage) trains its stage ``K`` times, with seeds
``0..K-1``, and merges the runs into their ensemble (``metafit ensemble``,
:mod:`metafit.runs.ensemble`). The members train ``parallel`` at a time (default
:data:`PARALLEL`, the cores of the machine the budgets were measured on), one thread each,
in ``ceil(K / parallel)`` waves that share the budget: two members each train for the
whole budget, six for a third of it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from metafit.config.ensemble import MAX_MEMBERS, merge_problem
from metafit.config.files import RecipeError, read_yaml_mapping
from metafit.config.recipe import list_recipes, load_recipe, parse_overrides
from metafit.config.schema import Recipe

__all__ = ["Candidate", "PARALLEL", "Recommendation", "RECOMMENDATIONS_FILE",
           "recommendations"]

#: The file of the shipped recipes that holds the recommendations.
RECOMMENDATIONS_FILE = "_recommended.yaml"

#: What a candidate's name may hold: it names folders in the printed shell commands.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

#: Members trained side by side by default: the 2 cores the budgets were measured on.
PARALLEL = 2


@dataclass(frozen=True)
class Candidate:
    """One way to train for a task: ``stages`` of ``(recipe, overrides)`` run in order,
    the training budget shared between them as ``budget_shares`` (summing to 1)."""

    name: str
    stages: tuple[tuple[str, tuple[str, ...]], ...]
    budget_shares: tuple[float, ...]
    members: int = 1
    parallel: int = PARALLEL

    @property
    def waves(self) -> int:
        """How many rounds of at most ``parallel`` members side by side train them all."""
        return math.ceil(self.members / self.parallel)

    def member_budget(self, budget_seconds: float) -> float:
        """Each member's training time when all of them share ``budget_seconds`` of wall
        time: the budget over :attr:`waves` (the whole budget for one member)."""
        return budget_seconds / self.waves

    def member_dirs(self, root: str = "runs") -> list[str]:
        """The run directory of each member under ``root`` (``members > 1``)."""
        return [f"{root}/{self.name}/seed{i}" for i in range(self.members)]

    def stage_overrides(self, budget_seconds: float | None = None,
                        run_dirs: list[str] | None = None) -> list[list[str]]:
        """Each stage's overrides: its own, then ``time_budget`` (its share of
        ``budget_seconds``, when given) and ``init_from`` (the previous stage's run
        directory in ``run_dirs``, when given; else the stage's recipe names it)."""
        out = []
        for i, (_, overrides) in enumerate(self.stages):
            extra = list(overrides)
            if budget_seconds is not None:
                seconds = round(budget_seconds * self.budget_shares[i], 1)
                extra.append(f"time_budget={seconds:g}")
            if run_dirs is not None and i > 0:
                extra.append(f"init_from={run_dirs[i - 1]}")
            out.append(extra)
        return out

    def recipes(self, budget_seconds: float | None = None, run_dirs: list[str] | None = None,
                extra: list[str] | None = None) -> list[Recipe]:
        """Each stage's recipe with :meth:`stage_overrides` and then ``extra``."""
        return [load_recipe(recipe, [*overrides, *(extra or [])])
                for (recipe, _), overrides in zip(
                    self.stages, self.stage_overrides(budget_seconds, run_dirs), strict=True)]

    def commands(self, budget_seconds: float | None = None) -> list[str]:
        """The ``metafit train`` command of each stage (each in its default run
        directory, ``runs/RECIPE``, which a later stage's recipe names as ``init_from``);
        for ``members > 1``, one per member (``seed=i threads=1``, ``--out
        runs/NAME/seed{i}``, :meth:`member_budget` each), in waves of ``parallel``
        started together and waited for, as measured, then the ``metafit ensemble`` that
        merges their last checkpoints (as measured) into ``runs/NAME/ensemble``, refusing
        a member that did not finish (a bare ``wait`` does not report one)."""
        if self.members > 1 and budget_seconds is not None:
            budget_seconds = self.member_budget(budget_seconds)
        trains = [" ".join(["metafit train", recipe, *overrides])
                  for (recipe, _), overrides in zip(
                      self.stages, self.stage_overrides(budget_seconds), strict=True)]
        if self.members == 1:
            return trains
        dirs = self.member_dirs()
        out: list[str] = []
        for i, d in enumerate(dirs):
            out.append(f"{trains[0]} seed={i} threads=1 --out {d} &")
            if (i + 1) % self.parallel == 0 or i + 1 == len(dirs):
                out.append("wait")
        return [*out, f"metafit ensemble {' '.join(dirs)} --out runs/{self.name}/ensemble "
                "--checkpoint last --finished-only"]


@dataclass(frozen=True)
class Recommendation:
    """The recipe recommended for one kind of task, and its candidates."""

    task: str
    description: str
    recommended: str
    evidence: str
    budget_minutes: float | None
    candidates: dict[str, Candidate]

    @property
    def best(self) -> Candidate:
        """The recommended candidate."""
        return self.candidates[self.recommended]

    def commands(self) -> list[str]:
        """The recommended candidate's commands, at the budget it was measured at."""
        budget = None if self.budget_minutes is None else 60.0 * self.budget_minutes
        return self.best.commands(budget)


def _path() -> Path:
    return Path(str(resources.files("metafit") / "recipes" / RECOMMENDATIONS_FILE))


def recommendations(path: str | Path | None = None) -> dict[str, Recommendation]:
    """The recommendations by task, read from ``path`` (default: the shipped
    ``_recommended.yaml``) and checked: every stage names a shipped recipe with valid
    overrides, ``recommended`` names a candidate, the budget shares are positive and sum
    to 1.

    Raises:
        RecipeError: the file breaks one of these rules (naming the task and candidate).
    """
    file = Path(path) if path is not None else _path()
    raw = read_yaml_mapping(file, "recommendations", str(file))
    return {str(task): _recommendation(str(task), entry, file) for task, entry in raw.items()}


def _recommendation(task: str, entry: Any, file: Path) -> Recommendation:
    where = f"{file}, task '{task}'"
    if not isinstance(entry, dict) or not isinstance(entry.get("candidates"), dict):
        raise RecipeError(f"{where}: a task needs a mapping with 'candidates'")
    unknown = set(entry) - {"description", "recommended", "evidence", "budget_minutes",
                            "candidates"}
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(unknown)}")
    candidates = {str(name): _candidate(str(name), value, where)
                  for name, value in entry["candidates"].items()}
    recommended = str(entry.get("recommended"))
    if recommended not in candidates:
        raise RecipeError(f"{where}: recommended '{recommended}' is not one of its "
                          f"candidates ({', '.join(candidates)})")
    budget = entry.get("budget_minutes")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise RecipeError(f"{where}: budget_minutes must be a positive number, got {budget!r}")
    return Recommendation(task, str(entry.get("description", "")), recommended,
                          str(entry.get("evidence", "")),
                          None if budget is None else float(budget), candidates)


def _candidate(name: str, value: Any, where: str) -> Candidate:
    where = f"{where}, candidate '{name}'"
    if not NAME.fullmatch(name):
        raise RecipeError(f"{where}: a candidate's name is a folder name in the printed "
                          "commands: letters, digits, '_', '.' and '-' only")
    if not isinstance(value, dict) or not value.get("stages"):
        raise RecipeError(f"{where}: needs 'stages', a list of 'RECIPE key=value ...'")
    stages = []
    for stage in value["stages"]:
        recipe, *overrides = str(stage).split()
        if recipe not in list_recipes():
            raise RecipeError(f"{where}: '{recipe}' is not a shipped recipe")
        parse_overrides(overrides)  # every key known
        load_recipe(recipe, overrides)  # and every value valid
        stages.append((recipe, tuple(overrides)))
    shares = value.get("budget_shares", [1.0 / len(stages)] * len(stages))
    if (not isinstance(shares, list) or len(shares) != len(stages)
            or not all(isinstance(s, (int, float)) and s > 0 for s in shares)
            or not math.isclose(sum(shares), 1.0, abs_tol=1e-6)):
        raise RecipeError(f"{where}: budget_shares must be {len(stages)} positive numbers "
                          f"summing to 1, got {shares!r}")
    members = value.get("members", 1)
    if (not isinstance(members, int) or isinstance(members, bool)
            or not 1 <= members <= MAX_MEMBERS):
        raise RecipeError(f"{where}: members must be an integer from 1 to {MAX_MEMBERS}, "
                          f"got {members!r}")
    if members > 1 and len(stages) > 1:
        raise RecipeError(f"{where}: members ({members}) are for one-stage candidates")
    if members > 1:
        recipe, overrides = stages[0]
        problem = merge_problem(load_recipe(recipe, list(overrides)))
        if problem:
            raise RecipeError(f"{where}: its members cannot merge: {problem}")
    if "parallel" in value and members == 1:
        raise RecipeError(f"{where}: parallel is for candidates of members > 1")
    parallel = value.get("parallel", min(PARALLEL, members))
    if (not isinstance(parallel, int) or isinstance(parallel, bool)
            or not 1 <= parallel <= members):
        raise RecipeError(f"{where}: parallel must be an integer from 1 to the members "
                          f"({members}), got {parallel!r}")
    unknown = set(value) - {"stages", "budget_shares", "members", "parallel"}
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(unknown)}")
    return Candidate(name, tuple(stages), tuple(float(s) for s in shares), members, parallel)
