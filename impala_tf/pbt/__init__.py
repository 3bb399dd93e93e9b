"""Population-based training of impala_tf runs on Ray Tune (IMPALA, Appendix F).

  rule        the paper's exploit/explore rule, without any engine;
  score       a member's score since its last step (mean return, mean capped human-normalised);
  population  how a population runs (gin: `Population`), importable without Ray;
  member      one member: a whole training run as a Tune function trainable;
  scheduler   the rule in place of Ray PBT's decisions;
  driver      runs the population; `python -m impala_tf.pbt` is its command line;
  plot        the population's figure.

Only `member`, `scheduler` and `driver` import Ray; training without PBT never does.
"""
