"""Score tables (impala_tf/data/, sources in its README) and human-normalised scores.

Human-normalised score of a game or level = 100 * (score - random) / (human - random).
Atari-57 is summarised by the median and mean over games; DMLab-30 by the mean over levels
of the score capped at 100 ("mean capped").
"""

import csv
import dataclasses
import functools
import importlib.resources
import pathlib
from typing import Dict, List, Mapping

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
