"""The paper's rule (`rule.EvolutionRule`) as a Ray Tune scheduler.

It keeps Ray's `PopulationBasedTraining` machinery (pausing a member, handing it a checkpoint
and a new config, restarting it) and replaces its decisions:

- when: a member evolves when `EvolutionRule.ready` says so (its own frames past the burn-in,
  `episodes_since_step` past the rule's count), instead of Ray's one time unit for both;
- copy: it is compared with one other member drawn at random and copies it only when that
  member's score is more than the margin higher, instead of Ray's bottom quantile copying
  its top quantile;
- explore: copied or not, its hyperparameters are multiplied by 1.2, 1/1.2 or 1, instead of
  Ray's exploring after a copy only.

Every member reports a checkpoint with each result (`member.train_member`), so any member can
be a donor, and a member that does not copy restarts from its own newest checkpoint with its
explored hyperparameters. Each step is logged and written into the member's config
(`last_step`), which the member records in its logdir when it restarts.
"""

import logging
import os
import shutil
from typing import Dict, Optional, Tuple

import numpy as np
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from impala_tf.pbt.rule import EvolutionRule


class PaperPopulationBasedTraining(PopulationBasedTraining):
    """Ray's PBT with the paper's rule (module docstring). `seed` seeds the rule's draws."""

    def __init__(self, rule: EvolutionRule, seed: Optional[int] = None):
        self.rule = rule
        self._rng = np.random.default_rng(seed)
        self.steps = []  # (member, donor or None, factors), in order
        self._copies: Dict[str, str] = {}  # member -> the checkpoint copy it restarts from
        super().__init__(
            time_attr="env_frames", metric="score", mode="max",
            perturbation_interval=1,  # gated by the rule in on_trial_result
            burn_in_period=rule.burn_in_frames,
            # Ray's bookkeeping (tags, logs) lists the evolved keys; its sampling is not used.
            hyperparam_mutations={"hyperparameters": {
                name: (lambda: 1.0) for name in rule.hyperparameters}},
            quantile_fraction=0.5, require_attrs=True, synch=False,
            log_config=False)  # Ray's policy log cannot clone a member into itself

    def on_trial_result(self, tune_controller, trial: Trial, result: Dict) -> str:
        if not self.rule.ready(result.get("env_frames", 0),
                               result.get("episodes_since_step", 0)):
            # Keep Ray's view of its score current, for the others' comparisons.
            if "score" in result:
                self._save_trial_state(self._trial_state[trial], result["env_frames"],
                                       result, trial)
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial: Trial, tune_controller, upper_quantile,
                               lower_quantile) -> None:
        """The paper's step for `trial`, which just reached it."""
        scores = {t.trial_id: s.last_score for t, s in self._trial_state.items()
                  if s.last_score is not None and not t.is_finished()}
        by_id = {t.trial_id: t for t in self._trial_state}
        if len(scores) < 2:
            return  # nobody to compare with yet
        other, copies = self.rule.donor(trial.trial_id, scores, self._rng)
        donor = by_id[other] if copies else trial
        if donor is trial:
            # Its own newest checkpoint: the one saved with the result just reported, in its
            # run's checkpoint folder. (Tune registers that result's checkpoint only after
            # this decision, so `trial.checkpoint` is the previous report's.) The member
            # waits in `tune.report` meanwhile, so the folder does not change under the copy.
            checkpoint = Checkpoint.from_directory(
                self._trial_state[trial].last_result["checkpoint_dir"])
        else:  # the donor's newest reported checkpoint
            checkpoint = donor.checkpoint
        if checkpoint is None:
            logging.info("[pbt] %s has no checkpoint yet; %s keeps going", donor, trial)
            return
        self._trial_state[donor].last_checkpoint = self._keep(checkpoint, trial)
        self._exploit(tune_controller, trial, donor)

    def _keep(self, checkpoint: Checkpoint, trial: Trial) -> Checkpoint:
        """A copy of `checkpoint` that `trial` restarts from: the donor goes on reporting,
        and Tune deletes its older checkpoints (`CheckpointConfig.num_to_keep`), maybe before
        `trial` has restored this one. The copy sits beside the original (the same storage,
        shared by every node); `trial`'s previous copy goes."""
        previous = self._copies.get(trial.trial_id)
        destination = os.path.join(os.path.dirname(checkpoint.path),
                                   f"pbt_copy_for_{trial.trial_id}_{len(self.steps)}")
        checkpoint.to_directory(destination)
        self._copies[trial.trial_id] = destination
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return Checkpoint.from_directory(destination)

    def _get_new_config(self, trial: Trial, trial_to_clone: Trial) -> Tuple[Dict, Dict]:
        """The donor's config (or its own) with the rule's exploration, and the step noted."""
        config = dict(trial_to_clone.config)
        hyperparameters, factors = self.rule.explore(config["hyperparameters"], self._rng)
        donor = trial_to_clone.trial_id if trial_to_clone is not trial else None
        config["hyperparameters"] = hyperparameters
        config["last_step"] = {"donor": donor, "factors": factors,
                               "from_hyperparameters": trial_to_clone.config["hyperparameters"],
                               "score": self._trial_state[trial].last_score,
                               "donor_score": self._trial_state[trial_to_clone].last_score,
                               "at_frames": self._trial_state[trial].last_train_time}
        self.steps.append((trial.trial_id, donor, factors))
        state, donor_state = self._trial_state[trial], self._trial_state[trial_to_clone]
        what = (f"copies {donor} (score {donor_state.last_score:.3f})" if donor
                else "keeps its weights")
        print(f"pbt: member {trial.trial_id} (score {state.last_score:.3f}, "
              f"{state.last_train_time:,.0f} frames) {what}; "
              + ", ".join(f"{name.split('.')[-1]} x{factor:.4g}"
                          for name, factor in factors.items()), flush=True)
        return config, {"hyperparameters": {name: f"* {factor:g}"
                                            for name, factor in factors.items()}}
