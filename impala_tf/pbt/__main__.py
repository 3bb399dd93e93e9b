"""Population-based training of impala_tf runs on Ray Tune (IMPALA, Appendix F):

    python -m impala_tf.pbt --gin_file=pbt/catch_pbt.gin --logdir=/tmp/population
    python -m impala_tf.pbt --gin_file=dmlab/dmlab30_pbt_deep.gin --logdir=DIR --address=auto

Runs `EvolutionRule.population_size` members, each a whole training run (its learner and actor
processes) as a Ray Tune trial, evolved by the paper's rule (`impala_tf.pbt.rule`): every
number is a gin setting (`EvolutionRule.*`, `Population.*`). Without `--address` it starts a
Ray runtime on this machine; `--address=auto` (or HOST:6379) joins a Ray cluster (KubeRay,
`ray up`). Run the same command again to resume the population. Needs Ray Tune:
`pip install impala_tf[pbt]`. docs/pbt.md has the rule, the commands and a measured run.
"""

import sys

from absl import app, flags

from impala_tf import command_line, config, quiet

FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files (a PBT file: pbt/).")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_string("logdir", None, "The population's directory (Tune's experiment, and "
                        "each member's run).")
    flags.DEFINE_string("address", None, "A Ray cluster to join ('auto', HOST:6379); "
                        "default: a Ray runtime on this machine.")


def main(argv) -> None:
    del argv
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        sys.exit("impala_tf: population-based training needs Ray Tune: "
                 "pip install 'impala_tf[pbt]' (or `make install`).")
    if not FLAGS.logdir:
        raise app.UsageError("--logdir is required.")
    quiet.import_tensorflow()
    from impala_tf.pbt.driver import run_population
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
    results = run_population(FLAGS.logdir, FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.address)
    failed = [result for result in results if result.error is not None]
    if failed:
        first = str(failed[0].error).strip().splitlines()[-1][:300]
        sys.exit(f"impala_tf: {len(failed)} of {len(results)} members failed (the first: "
                 f"{first}); their errors are in {failed[0].path}/error.txt")
    best = results.get_best_result(metric="score", mode="max")
    print(f"best member: {best.path} (score {best.metrics.get('score')})", flush=True)


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    command_line.run(main, __doc__, define_flags, "impala_tf.pbt")


if __name__ == "__main__":
    cli()
