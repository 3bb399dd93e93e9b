"""Evaluation episodes under the paper's protocol, and the scores table.

`run_episodes` plays rounds in which every one of the K environments starts afresh and only
its first finished episode counts (taking the first N episodes to finish would favour short
ones). Atari is evaluated on whole games with up to 30 no-op starts, the 108,000-frame cap
and the unclipped score; DMLab on the test levels with the reference mixer seed
(`make_environment(mode='eval')` sets both up).
"""

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from impala_tf import gin_utils, scores
from impala_tf.networks import build_agent
from impala_tf.learning import checkpoints
from impala_tf.envs import dmlab as dmlab_env
from impala_tf.envs.atari_multitask import AtariMultiTaskEnv, configured_games
from impala_tf.envs.base import BatchedEnv, EpisodeStats
from impala_tf.envs.factory import make_environment
from impala_tf.acting.policy import BatchedPolicy
from impala_tf.specs import num_tasks, tensor_specs


def run_episodes(policy: BatchedPolicy, env: BatchedEnv, num_episodes: int) -> List[EpisodeStats]:
    """Plays until `num_episodes` episodes finished, one per environment per round."""
    results: List[EpisodeStats] = []
    k = env.num_envs
    while len(results) < num_episodes:
        timestep = env.reset()
        env.pop_finished_episodes()
        state = policy.initial_state(k)
        prev_actions = np.zeros(k, np.int32)
        done = np.zeros(k, bool)
        while not done.all():
            step, state = policy(prev_actions, timestep, state)
            timestep = env.step(step.actions)
            prev_actions = step.actions
            for episode in env.pop_finished_episodes():
                if not done[episode.env_index]:
                    done[episode.env_index] = True
                    results.append(episode)
    return results[:num_episodes]


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
    episodes: Sequence[EpisodeStats], kind: str, paper_column: Optional[str] = None
) -> List[ScoreRow]:
    """Groups episodes by level and scores them. `kind` is `atari`, `dmlab` or other;
    `paper_column` picks the paper's column (Atari: impala_shallow_experts,
    impala_deep_experts, impala_deep_multitask; DMLab: experts, impala)."""
    by_level: Dict[str, List[EpisodeStats]] = {}
    for episode in episodes:
        by_level.setdefault(episode.level, []).append(episode)
    refs = {"atari": scores.atari_references, "dmlab": scores.dmlab30_references}.get(kind)
    refs = refs() if refs else {}
    paper = {}
    if kind == "atari":
        paper = scores.paper_atari_scores()
    elif kind == "dmlab":
        paper = scores.paper_dmlab30_scores()
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
            human_normalized=scores.human_normalized(returns.mean(), ref) if ref else None,
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
        refs = {name: scores.Reference(row["random"], row["human"])
                for name, row in scores.paper_dmlab30_scores().items()}
    else:
        refs = scores.atari_references()
    return _summarise([scores.human_normalized(r.paper, refs[r.name]) for r in rows], kind)


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


def evaluation_environments(num_envs: int, seed: int):
    """(environment makers, kind, multitask) for the configured experiment: one maker per
    task, each building `num_envs` environments of it in evaluation mode (DMLab-30: its 30
    distinct test levels; multi-task Atari: each game), else one of the configured game or
    level. Makers, so that one task's environments exist at a time."""
    kind = gin_utils.bound_value("make_environment.kind", "atari")
    dmlab30 = kind == "dmlab" and gin_utils.bound_value("make_dmlab.dmlab30", False)
    if dmlab30:  # dmlab30=False: each batch its own level, not the actor's assignment
        makers = [functools.partial(dmlab_env.make_dmlab, num_envs, seed=seed, level=level,
                                    mode="test", dmlab30=False)
                  for level in dmlab_env.dmlab30_level_names("test")]
    elif kind == "atari_multitask":  # the task ids stay those of the configured game list
        games = configured_games()
        makers = [functools.partial(AtariMultiTaskEnv, num_envs, games=games, seed=seed,
                                    env_games=[game] * num_envs, mode="eval")
                  for game in games]
    else:
        makers = [functools.partial(make_environment, num_envs, seed=seed, mode="eval")]
    return makers, kind, dmlab30 or kind == "atari_multitask"


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


def evaluate_checkpoint(checkpoint_path: str, num_episodes: int, num_envs: int, greedy: bool,
                        seed: int):
    """Returns (rows, summary, kind, paper summary over the same tasks, its label) for the
    configured experiment."""
    makers, kind, multitask = evaluation_environments(num_envs, seed)
    episodes, agent, policy = [], None, None
    for make in makers:
        env = make()
        if agent is None:
            spec = env.observation_spec()
            agent = build_agent(tensor_specs(spec), env.action_spec().num_values,
                                         num_tasks(spec))
            checkpoints.restore_agent(agent, checkpoint_path)
            policy = BatchedPolicy(agent, greedy=greedy, seed=seed)
        episodes += run_episodes(policy, env, num_episodes)
        env.close()
    column, label = paper_column(kind, multitask, agent.torso_name)
    scored_as = "atari" if kind == "atari_multitask" else kind
    rows = score_rows(episodes, scored_as, column)
    return (rows, summary(rows, scored_as), kind,
            paper_summary(rows, scored_as), label)
