"""Scoring episodes against the paper: the score tables (impala_tf/data/, sources in its
README), human-normalised scores, the summaries, the paper's figures for the same tasks and
the table `evaluate` prints.

Human-normalised score of a game or level = 100 * (score - random) / (human - random).
Atari-57 is summarised by the median and mean over games; DMLab-30 by the mean over levels
of the score capped at 100 ("mean capped").
"""

import csv
import dataclasses
import functools
import importlib.resources
import pathlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


DATA_DIR = pathlib.Path(str(importlib.resources.files("impala_tf") / "data"))


def _rows(name: str) -> List[Dict[str, str]]:
    with open(DATA_DIR / name, newline="") as f:
        return list(csv.DictReader(f))


@dataclasses.dataclass(frozen=True)
class Reference:
    random: float
    human: float


@dataclasses.dataclass(frozen=True)
class DmLab30Level:
    """A DMLab-30 level: its name, the level trained on and tested on, and its references."""

    level: str
    train_level: str
    test_level: str
    human: float
    random: float


@functools.lru_cache(maxsize=None)
def atari_references() -> Dict[str, Reference]:
    """Game (ALE ROM name) -> random and human scores (dqn_zoo)."""
    return {
        r["game"]: Reference(float(r["random"]), float(r["human"]))
        for r in _rows("atari57_scores.csv")
    }


@functools.lru_cache(maxsize=None)
def dmlab30_levels() -> List[DmLab30Level]:
    """The 30 DMLab-30 levels in the reference order."""
    return [
        DmLab30Level(r["level"], r["train_level"], r["test_level"],
                     float(r["human_score"]), float(r["random_score"]))
        for r in _rows("dmlab30_levels.csv")
    ]


def dmlab30_references() -> Dict[str, Reference]:
    """Level -> random and human scores; train and test names both map to their level's."""
    refs = {}
    for lvl in dmlab30_levels():
        for name in {lvl.level, lvl.train_level, lvl.test_level}:
            refs[name] = Reference(lvl.random, lvl.human)
    return refs


@functools.lru_cache(maxsize=None)
def paper_atari_scores() -> Dict[str, Dict[str, float]]:
    """Game -> the paper's Table C.1 scores: impala_shallow_experts, impala_deep_experts,
    impala_deep_multitask."""
    return {
        r["game"]: {k: float(v) for k, v in r.items() if k != "game"}
        for r in _rows("impala_paper_atari.csv")
    }


@functools.lru_cache(maxsize=None)
def paper_dmlab30_scores() -> Dict[str, Dict[str, object]]:
    """Level -> the paper's Table B.1 row: experts, impala, and the human/random it printed
    (`reference_level` names the level those human/random scores belong to)."""
    return {
        r["level"]: {
            "experts": float(r["experts"]),
            "impala": float(r["impala"]),
            "human": float(r["human"]),
            "random": float(r["random"]),
            "reference_level": r["level_matching_human_random"],
        }
        for r in _rows("impala_paper_dmlab30.csv")
    }


def human_normalized(score: float, reference: Reference) -> float:
    """100 * (score - random) / (human - random)."""
    return 100.0 * (score - reference.random) / (reference.human - reference.random)


def atari_summary(scores: Mapping[str, float]) -> Dict[str, float]:
    """Median and mean human-normalised score (%) over the given games."""
    refs = atari_references()
    unknown = sorted(set(scores) - set(refs))
    if unknown:
        raise ValueError(f"No human/random reference for Atari games {unknown}.")
    normalized = np.array([human_normalized(s, refs[g]) for g, s in scores.items()])
    return {"median": float(np.median(normalized)), "mean": float(np.mean(normalized))}


def dmlab30_mean_capped(scores: Mapping[str, float]) -> float:
    """Mean over levels of the human-normalised score (%) capped at 100."""
    refs = dmlab30_references()
    unknown = sorted(set(scores) - set(refs))
    if unknown:
        raise ValueError(f"No human/random reference for DMLab levels {unknown}.")
    return float(np.mean([min(100.0, human_normalized(s, refs[lvl])) for lvl, s in scores.items()]))


@dataclasses.dataclass
class ScoreRow:
    """One game or level: mean unclipped return, its human-normalised score (None without a
    reference) and the paper's figure where one exists."""

    name: str
    episodes: int
    mean_return: float
    std_return: float
    mean_frames: float
    human_normalized: Optional[float]
    paper: Optional[float]


def score_rows(
    episodes: Sequence, kind: str, paper_column: Optional[str] = None
) -> List[ScoreRow]:
    """Groups episodes (`envs.base.EpisodeStats`: return, frames, level) by level and scores
    them. `kind` is `atari`, `dmlab` or other;
    `paper_column` picks the paper's column (Atari: impala_shallow_experts,
    impala_deep_experts, impala_deep_multitask; DMLab: experts, impala)."""
    by_level: Dict[str, list] = {}
    for episode in episodes:
        by_level.setdefault(episode.level, []).append(episode)
    refs = {"atari": atari_references, "dmlab": dmlab30_references}.get(kind)
    refs = refs() if refs else {}
    paper = {}
    if kind == "atari":
        paper = paper_atari_scores()
    elif kind == "dmlab":
        paper = paper_dmlab30_scores()
    rows = []
    for name, group in sorted(by_level.items()):
        returns = np.array([e.episode_return for e in group])
        ref = refs.get(name)
        paper_row = paper.get(name)
        rows.append(ScoreRow(
            name=name,
            episodes=len(group),
            mean_return=float(returns.mean()),
            std_return=float(returns.std()),
            mean_frames=float(np.mean([e.episode_frames for e in group])),
            human_normalized=human_normalized(returns.mean(), ref) if ref else None,
            paper=float(paper_row[paper_column]) if paper_row and paper_column else None,
        ))
    return rows


def summary(rows: Sequence[ScoreRow], kind: str) -> Dict[str, float]:
    """Atari: median and mean human-normalised score; DMLab-30: mean capped at 100."""
    return _summarise([r.human_normalized for r in rows if r.human_normalized is not None],
                      kind)


def _summarise(normalized: Sequence[float], kind: str) -> Dict[str, float]:
    if not normalized:
        return {}
    if kind == "dmlab":
        return {"mean_capped": float(np.mean([min(100.0, x) for x in normalized]))}
    return {"median": float(np.median(normalized)), "mean": float(np.mean(normalized))}


def paper_summary(rows: Sequence[ScoreRow], kind: str) -> Dict[str, float]:
    """`summary` of the paper's per-task figures (the rows' `paper`) over the same tasks:
    what the paper's agent scored on the games or levels evaluated here. DMLab levels are
    normalised by the human and random scores the paper printed beside its figures, which
    reproduces Table 3 (44.5% experts, 49.4% IMPALA deep PBT over the 30)."""
    if any(r.paper is None or r.human_normalized is None for r in rows):
        return {}  # a task without a paper figure: no like-for-like
    if kind == "dmlab":  # the human and random scores Table B.1 printed beside each figure
        refs = {name: Reference(row["random"], row["human"])
                for name, row in paper_dmlab30_scores().items()}
    else:
        refs = atari_references()
    return _summarise([human_normalized(r.paper, refs[r.name]) for r in rows], kind)


def format_table(rows: Sequence[ScoreRow], summary_values: Dict[str, float],
                 paper_values: Optional[Dict[str, float]] = None, paper_label: str = "") -> str:
    """The scores as a text table for the terminal; `paper_values` (`paper_summary`) are
    printed beside the summary, named by `paper_label`."""
    lines = [f"{'game/level':40s} {'episodes':>8s} {'mean':>10s} {'std':>9s} "
             f"{'human %':>8s} {'paper':>10s}"]
    for r in rows:
        hns = f"{r.human_normalized:8.1f}" if r.human_normalized is not None else f"{'-':>8s}"
        paper = f"{r.paper:10.1f}" if r.paper is not None else f"{'-':>10s}"
        lines.append(f"{r.name:40s} {r.episodes:8d} {r.mean_return:10.2f} {r.std_return:9.2f} "
                     f"{hns} {paper}")
    paper_values = paper_values or {}
    for key, value in summary_values.items():
        line = f"human-normalised {key}: {value:.1f}%"
        if key in paper_values:
            line += (f" (the paper's {paper_label} on these {len(rows)}: "
                     f"{paper_values[key]:.1f}%)")
        lines.append(line)
    return "\n".join(lines)


def paper_column(kind: str, multitask: bool, torso: str) -> Tuple[Optional[str], str]:
    """(the paper's per-task column to print beside ours, its name in words); the column is
    None for an environment the paper did not run (Catch, your own)."""
    if kind == "atari_multitask":
        return "impala_deep_multitask", "IMPALA deep multi-task (Table C.1)"
    if kind == "atari":
        if torso == "deep":
            return "impala_deep_experts", "IMPALA deep experts (Table C.1)"
        return "impala_shallow_experts", "IMPALA shallow experts (Table C.1)"
    if kind != "dmlab":
        return None, f"none (the paper did not run {kind!r})"
    if multitask:  # Table B.1's IMPALA column is the PBT agent (49.4% in Table 3)
        return "impala", "IMPALA deep, PBT, DMLab-30 (Table B.1)"
    return "experts", "IMPALA deep experts (Table B.1)"
