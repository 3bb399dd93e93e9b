"""Throughput benchmark: each stage of the data path alone, the whole system, and the bound.

    python -m impala_tf.tools.benchmark --gin_file=atari/pong_shallow.gin [--seconds 20]
        [--json FILE] [--stages env,actor,learner,vtrace,transport,end_to_end] [--scaling]

Every stage runs in its own process, with the thread settings it has in training, for
`--seconds` after a warm-up, and reports frames/s (a frame is an emulator frame: 4 per agent
step with action repeat 4) and the CPU it used (core-seconds per frame, from getrusage):

  env         the K environments of one actor, random actions (Atari: also with ALE's
              vector interface at 1 and 2 threads; the cheapest counts);
  forward     the agent's step alone at the actors' batch K: the raw forward pass (inputs
              already tensors, nothing sampled or converted; graph and XLA, the cheaper);
  actor       one actor's loop (environments, batched inference, unroll encoding), no learner;
  learner     the learner's update loop on synthetic batches, per strategy (default; mirrored
              over 2 logical CPU devices);
  vtrace      `from_importance_weights` alone, T=20 and T=100, B=32, eager / tf.function / XLA
              (microseconds per call);
  transport   the codec alone, then unrolls through the gRPC service on loopback (unrolls/s,
              MB/s; sender and receiver share this one process);
  end_to_end  `python -m impala_tf.train` with its actor processes, once per inference
              mode (`--inference`: actor, central) (frames/s over the measured window,
              policy lag, queue fill, CPU cores used and memory held by each process);
  ingest      (only with --stages=ingest) --ingest_actors light actor streams into one
              learner whose step does nothing: actors served, frames/s, the learner's CPU
              and the wire's bytes per frame (`impala_tf/tools/ingest.py`);
  loop        (only with --stages=loop) the learner loop's own cost per update at B=32,
              T=20 (everything but the update: `impala_tf/tools/loop_cost.py`), publishing
              parameters from the loop and from the publisher thread, in one process.

The bound is the frames/s this machine could reach if its cores did nothing but step the
environments, run the actors' inference and learn, each at its cost per frame in our
stages: cores / (env + inference + learning core-seconds per frame), inference being the
actor stage less the env stage. The physical limit puts the raw work in its place: the
environments at their best ALE thread count, the raw forward pass and the learner's step,
cores / (env + forward + learning). End-to-end is reported as a fraction of both, with each
actor process's resident memory. `--scaling` adds end-to-end runs with 1, 2, 4 and 8 actor
processes (`--scaling_actors`), with the learner on 1 and on 2 (mirrored) logical devices
(`--scaling_devices`). Nothing is asserted:
the figures are this machine's, today.

This module is the command: it runs each stage in a child process and prints the table. The
stages are in `stages` (in-process), `end_to_end`, `ingest` and `loop_cost`; the bound, the
physical limit and the table in `report`.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict

from absl import app, flags

from impala_tf import command_line, gin_utils, quiet
from impala_tf.tools import stages
from impala_tf.tools.end_to_end import child_environ, end_to_end
from impala_tf.tools.meters import cores
from impala_tf.tools.report import bound, physical_limit, print_table

FLAGS = flags.FLAGS
DEFAULT_STAGES = ("env", "forward", "actor", "learner", "vtrace", "transport", "end_to_end")
ALE_THREADS = (1, 2)  # besides ALE's default, for the env stage on Atari
STAGES = DEFAULT_STAGES + ("ingest", "loop")  # on request (--stages=ingest,loop)


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_multi_string("gin_file", ["atari/pong_shallow.gin"], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_float("seconds", 20.0, "Measured time per stage (after its warm-up).")
    flags.DEFINE_string("stages", ",".join(DEFAULT_STAGES), "Comma-separated stages to run "
                        f"(of {', '.join(STAGES)}).")
    flags.DEFINE_integer("ingest_actors", 16, "ingest: actor streams into one learner.")
    flags.DEFINE_bool("ingest_packed", True, "ingest: send stacked frames packed, each "
                      "frame once (--noingest_packed: whole stacks, the earlier wire format).")
    flags.DEFINE_bool("gpu", False, "Let the learner use the GPUs (the learner and "
                      "end_to_end stages); actors and the other stages never do.")
    flags.DEFINE_bool("scaling", False, "Also end-to-end with --scaling_actors actor "
                      "processes x --scaling_devices learner devices.")
    flags.DEFINE_list("scaling_actors", ["1", "2", "4", "8"], "--scaling: actor processes.")
    flags.DEFINE_list("scaling_devices", ["1", "2"], "--scaling: the learner's logical "
                      "devices (2: mirrored over 2 logical CPU devices).")
    flags.DEFINE_list("inference", ["actor", "central"], "end_to_end: the inference modes "
                      "to run (Launcher.inference); --scaling uses the first.")
    flags.DEFINE_string("json", None, "Write all figures to this file.")
    # Internal: run one stage in this process and write its figures to --stage_out.
    flags.DEFINE_string("stage", None, "(internal) the stage this process runs.")
    flags.DEFINE_string("stage_out", None, "(internal) where that stage writes its JSON.")
    flags.DEFINE_string("strategy", "default", "(internal) learner stage: default|mirrored.")
    flags.DEFINE_integer("num_actors", None, "(internal) end_to_end: actor processes.")


# -- the parent: runs each stage in a child process and prints the table ------------------
def _run_stage(stage: str, extra=()) -> Dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    command = [sys.executable, "-m", "impala_tf.tools.benchmark", f"--stage={stage}",
               f"--stage_out={out}", f"--seconds={FLAGS.seconds}", *extra]
    command += [f"--gin_file={g}" for g in FLAGS.gin_file]
    command += [f"--gin_bindings={b}" for b in FLAGS.gin_bindings]
    env = child_environ(gpu=FLAGS.gpu and stage == "learner")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        if result.returncode != 0:
            raise RuntimeError(f"stage {stage} failed:\n{result.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def _is_atari() -> bool:
    """Whether the parsed config's environments are single-game Atari (ALE's threads)."""
    from impala_tf.envs.factory import make_environment
    return gin_utils.configured_value(make_environment, "kind") == "atari"


def run_all() -> Dict:
    stages = [s for s in FLAGS.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise app.UsageError(f"Unknown stages {unknown}; expected some of {list(STAGES)}.")
    results = {"date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": f"{platform.node()}, {cores()} cores, {platform.machine()}",
               "command": " ".join(["python -m impala_tf.tools.benchmark"] + sys.argv[1:]),
               "seconds": FLAGS.seconds, "stages": {}}
    s = results["stages"]
    for stage in stages:
        print(f"running {stage} ...", flush=True)
        if stage == "learner":
            s["learner"] = [_run_stage("learner", [f"--strategy={k}"])
                            for k in ("default", "mirrored")]
        elif stage == "end_to_end":
            s["end_to_end"] = [end_to_end(FLAGS.seconds, FLAGS.gin_file, FLAGS.gin_bindings,
                                          inference=mode, gpu=FLAGS.gpu)
                                  for mode in FLAGS.inference]
        elif stage == "env":
            s["env"] = _run_stage("env")
            if _is_atari():
                s["env_by_ale_threads"] = {"default": s["env"]}
                for threads in ALE_THREADS:
                    s["env_by_ale_threads"][str(threads)] = _run_stage(
                        "env", [f"--gin_bindings=AtariBatchedEnv.num_threads = {threads}"])
        elif stage == "ingest":
            s["ingest"] = _run_stage("ingest", [f"--ingest_actors={FLAGS.ingest_actors}",
                                                f"--ingest_packed={FLAGS.ingest_packed}"])
            results["ingest"] = s["ingest"]  # also at the top level of --json
        else:
            s[stage] = _run_stage(stage)
    if all(k in s for k in ("env", "actor", "learner")):
        results["bound"] = bound(s["env"], s["actor"], s["learner"][0], cores())
    if all(k in s for k in ("env", "forward", "learner")):
        results["physical_limit"] = physical_limit(
            s.get("env_by_ale_threads", {"default": s["env"]}), s["forward"], s["learner"][0],
            cores())
    if FLAGS.scaling:
        print("running end-to-end scaling ...", flush=True)
        s.setdefault("end_to_end", [])
        for mirrored in (int(d) == 2 for d in FLAGS.scaling_devices):
            for n in (int(a) for a in FLAGS.scaling_actors):
                print(f"  {n} actors, learner on {2 if mirrored else 1} device(s)", flush=True)
                try:
                    s["end_to_end"].append(end_to_end(FLAGS.seconds, FLAGS.gin_file,
                                                      FLAGS.gin_bindings, num_actors=n,
                                                      mirrored=mirrored,
                                                      inference=FLAGS.inference[0],
                                                      gpu=FLAGS.gpu))
                except RuntimeError as error:  # one failed run does not lose the others
                    print(f"  failed: {str(error)[-500:]}", flush=True)
                    s["end_to_end"].append({"num_actors": n, "learner_devices": 1 + mirrored,
                                            "error": str(error)[-2000:]})
    return results


def main(argv) -> None:
    del argv
    from impala_tf import config
    if FLAGS.stage:  # a child: one stage
        quiet.import_tensorflow()
        if FLAGS.stage == "learner" and FLAGS.strategy == "mirrored":
            from impala_tf.distribute import configure_devices
            configure_devices(2)
        config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
        if FLAGS.stage == "learner":
            figures = stages.stage_learner(FLAGS.seconds, FLAGS.strategy)
        elif FLAGS.stage == "ingest":
            from impala_tf.tools.ingest import stage_ingest
            figures = stage_ingest(FLAGS.seconds, FLAGS.ingest_actors, FLAGS.gin_file,
                                   FLAGS.gin_bindings, pack=FLAGS.ingest_packed)
        else:
            figures = getattr(stages, f"stage_{FLAGS.stage}")(FLAGS.seconds)
        with open(FLAGS.stage_out, "w") as f:
            json.dump(figures, f)
        return
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)  # fail early on a bad config
    if set(FLAGS.scaling_devices) - {"1", "2"}:
        raise app.UsageError(f"--scaling_devices takes 1 and 2, not {FLAGS.scaling_devices}")
    if not FLAGS.inference or set(FLAGS.inference) - {"actor", "central"}:
        raise app.UsageError(f"--inference takes actor and central, not {FLAGS.inference}")
    results = run_all()
    print_table(results)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nfigures written to {FLAGS.json}")


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    command_line.run(main, __doc__, define_flags, "impala_tf.tools.benchmark")


if __name__ == "__main__":
    cli()
