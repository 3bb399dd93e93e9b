"""Reproduces one row of the results table (docs/pong.md, "All runs") with one command.

    python experiments/reproduce_results.py ROW [--logdir_root=logs/results] [--no_eval]
    python experiments/reproduce_results.py --list

Trains the row's experiment (`python -m impala_tf.train`, learner plus actor processes on this
machine) up to the row's frame budget, evaluates the final checkpoint under the paper's
protocol (`python -m impala_tf.evaluate`), and prints the row: frames, wall time, frames/s,
mean return over the last 100 training episodes. `python -m impala_tf.plot` draws the curves.
A run interrupted part way resumes from its checkpoint when the command is run again.
"""

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# row -> (gin file, extra gin bindings, frame budget, Atari game for the paper's score)
ROWS = {
    "catch": ("catch.gin", [], 3e5, None),
    # The paper's hyperparameters (Table G.1), unchanged.
    "pong_paper": ("atari/pong_shallow.gin", [], 1e7, "pong"),
    # ... with each stacked frame centred on its screen mean, the one difference: the paper's
    # setting keeps its dense layer (97% alive at 10M frames) but sees Pong through 1-2 of
    # its 16 conv1 channels from about 5.7M frames on (torso_health), as Pong's flat
    # background turns a first-layer filter on everywhere or nowhere.
    "pong_paper_centred": ("atari/pong_shallow.gin", ["frames.centre = True"], 1.2e7, "pong"),
    # Diagnosis runs: RMSProp's epsilon (inside the square root, TF1 style) and batch size.
    "pong_b8_eps1e-5": ("atari/pong_shallow.gin",
                        ["RunConfig.batch_size = 8", "make_optimizer.epsilon = 1e-5"], 1e7,
                        "pong"),
    "pong_eps1e-4": ("atari/pong_shallow.gin", ["make_optimizer.epsilon = 1e-4"], 1e7, "pong"),
    # ... with each stacked frame centred on its screen mean, the one difference from the row
    # above: at epsilon 1e-4 (inside the root) the paper's RMSProp steps lr/sqrt(1e-4) = 0.06
    # per unit gradient where the mean square is below epsilon, the step PyTorch's form at the
    # peers' epsilon 0.01 takes (TorchBeast, Cleanba), and the shallow torso died uncentred.
    "pong_eps1e-4_centred": ("atari/pong_shallow.gin",
                             ["make_optimizer.epsilon = 1e-4", "frames.centre = True",
                              "Learner.seed = 1"], 1.2e7, "pong"),
    # A2C's well-tested Pong recipe run through this learner: T=5, B=16, mean loss, clip 0.5,
    # lr 7e-4, RMSProp epsilon 1e-5, no LSTM; run twice as long as the others to show its climb.
    "pong_a2c_like": ("atari/pong_shallow_a2c_like.gin", [], 2e7, "pong"),
    # The same recipe as PyTorch ports run it: Nature torso, torch.optim.RMSprop (epsilon
    # outside the square root, mean square from 0), value-loss weight as A2C's.
    "pong_nature_a2c": ("atari/pong_nature_a2c.gin", [], 1e7, "pong"),
    # ... and as OpenAI Baselines runs it: the same with TF1's RMSProp (epsilon inside the
    # square root, mean square from 1), which keeps the torso alive.
    "pong_nature_tf1": ("atari/pong_nature_a2c.gin",
                        ["make_optimizer.epsilon_outside_sqrt = False",
                         "make_optimizer.initial_mean_square = 1.0"], 1e7, "pong"),
    # The shallow A2C run again with OpenAI Baselines' initialisation (orthogonal kernels, gain
    # sqrt(2) ahead of ReLUs, 0.01 on the policy logits) instead of Keras' glorot_uniform.
    "pong_a2c_orthogonal": ("atari/pong_shallow_a2c_like.gin",
                            ["initializers.scheme = 'orthogonal'"], 1e7, "pong"),
    # Sample reuse: each batch learnt from in two passes of four minibatches, with Adam and
    # PPO's Atari settings (mean loss, clip 0.5, lambda 0.95), no LSTM.
    "pong_reuse_adam": ("atari/pong_shallow_reuse.gin", [], 1e7, "pong"),
    # The same without the reuse (one pass, one slice: one update a batch), to tell what the
    # reuse does from what Adam and the rest of that recipe do.
    "pong_adam_no_reuse": ("atari/pong_shallow_reuse.gin",
                           ["RunConfig.num_epochs = 1", "RunConfig.num_minibatches = 1"], 1e7,
                           "pong"),
    # The paper's algorithm (one update a batch, no reuse) with pong_adam_no_reuse's optimiser
    # and loss, and one difference: A2C's batch shape (16 environments x 5 steps, Mnih et al.
    # 2016 / OpenAI Baselines), 8 updates per 2,560 frames instead of 1 (the same settings as
    # pong_shallow_reuse.gin with num_epochs = num_minibatches = 1, T=5, B=16).
    "pong_adam_a2c_batch": ("atari/pong_shallow_adam_a2c_batch.gin",
                            ["make_optimizer.learning_rate = 3e-4"], 1.2e7, "pong"),
    # The same with the paper's T=20 and lr 6e-4, B=8 (PolyBeast's batch): 4 updates per
    # 2,560 frames, each on 160 steps, twice the step size.
    "pong_adam_b8_lr6e-4": ("atari/pong_shallow_reuse.gin",
                            ["RunConfig.num_epochs = 1", "RunConfig.num_minibatches = 1",
                             "RunConfig.batch_size = 8", "make_optimizer.learning_rate = 6e-4"],
                            1.2e7, "pong"),
    # pong_adam_a2c_batch with the paper's lr 6e-4 (Table G.1) in place of PPO's 3e-4: the
    # file as it is.
    "pong_adam_a2c_batch_lr6e-4": ("atari/pong_shallow_adam_a2c_batch.gin", [], 1.2e7,
                                   "pong"),
    # ... and with twice the paper's lr (1.2e-3): the step rate per frame is what the three
    # rows above differ in, so this asks whether more of it still helps.
    "pong_adam_a2c_batch_lr1.2e-3": ("atari/pong_shallow_adam_a2c_batch.gin",
                                     ["make_optimizer.learning_rate = 1.2e-3"], 1.2e7, "pong"),
    # ... and instead twice the updates at the paper's lr: T=5 with B=8 (16 updates per 2,560
    # frames, each on 40 steps; each batch holds half of the 16 environments), `make train` until
    # the torso was kept alive (the centred rows below).
    "pong_adam_t5_b8": ("atari/pong_shallow_adam_t5_b8.gin", [], 1.2e7, "pong"),
    # ... the same with other environment and sampling seeds (500 or 250 + 1000 * actor + i,
    # none shared with another row): a second and third seed. (The initial weights are a
    # fresh, unseeded draw in every run.)
    "pong_adam_t5_b8_seed2": ("atari/pong_shallow_adam_t5_b8.gin", ["Actor.seed = 500"], 1.2e7,
                              "pong"),
    "pong_adam_t5_b8_seed3": ("atari/pong_shallow_adam_t5_b8.gin", ["Actor.seed = 250"], 1.2e7,
                              "pong"),
    # ... with Adam's epsilon at 1e-3 instead of 1e-5: weights whose gradient is far below
    # 1e-5 (most of the torso's, fed by Pong's flat background) no longer get full-size
    # normalised steps from noise (at 1e-5, 10% of the 256 dense units are still ever active
    # after 215 updates, and 1 of 16 conv1 channels after 10,000). Initial weights seeded.
    "pong_adam_t5_b8_eps1e-3": ("atari/pong_shallow_adam_t5_b8.gin",
                                ["make_optimizer.epsilon = 1e-3", "Learner.seed = 1"], 1.2e7,
                                "pong"),
    # ... and each stacked frame centred on its own screen mean (`frames.centre`): the one
    # difference from the row above. With Pong's flat background a first-layer filter is on
    # everywhere or nowhere, and 14 of 16 conv1 channels die in the first few thousand
    # updates; centred, all 16 stay alive and respond to what moves. The file is the row
    # above's plus `frames.centre = True`: `make train`. Every checkpoint kept.
    "pong_adam_t5_b8_eps1e-3_centred": (
        "atari/pong_shallow_adam_t5_b8_centred.gin",
        ["Learner.seed = 1", "Learner.checkpoints_to_keep = None"], 1.2e7, "pong"),
    # ... the same with other initial weights and environment and sampling seeds (none shared
    # with another row): a second and third seed.
    "pong_adam_t5_b8_eps1e-3_centred_seed2": (
        "atari/pong_shallow_adam_t5_b8_centred.gin", ["Learner.seed = 2", "Actor.seed = 750"],
        1.2e7, "pong"),
    "pong_adam_t5_b8_eps1e-3_centred_seed3": (
        "atari/pong_shallow_adam_t5_b8_centred.gin", ["Learner.seed = 3", "Actor.seed = 125"],
        1.2e7, "pong"),
    "breakout_paper": ("atari/experts_shallow.gin", ["AtariBatchedEnv.game = 'breakout'"], 1e7,
                       "breakout"),
}


def paper_figure(game) -> str:
    """The paper's shallow-experts score for `game` (Table C.1), as table text."""
    if game is None:
        return "not in the paper (optimum 1.0)"
    from impala_tf.scores import paper_atari_scores
    return f"{paper_atari_scores()[game]['impala_shallow_experts']:g} after 200M frames"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", nargs="?", choices=sorted(ROWS))
    parser.add_argument("--list", action="store_true", help="List the rows and exit.")
    parser.add_argument("--logdir_root", default=os.path.join(REPO, "logs", "results"))
    parser.add_argument("--max_frames", type=float, default=None,
                        help="Override the row's frame budget.")
    parser.add_argument("--no_eval", action="store_true", help="Skip the evaluation.")
    parser.add_argument("--gpu", action="store_true",
                        help="Let the learner use the GPUs (its actors stay on the CPU, as "
                             "the launcher keeps them). The rows were measured on the CPU.")
    args = parser.parse_args()
    if args.list or not args.row:
        for name, (gin_file, bindings, frames, game) in ROWS.items():
            print(f"{name:22s} {gin_file} {' '.join(bindings)}; {frames:,.0f} frames; "
                  f"paper: {paper_figure(game)}")
        return
    gin_file, bindings, frames, game = ROWS[args.row]
    frames = args.max_frames or frames
    logdir = os.path.join(args.logdir_root, args.row)
    # The rows were measured with the CPU alone; --gpu leaves the GPUs visible to the learner.
    env = dict(os.environ) if args.gpu else dict(os.environ, CUDA_VISIBLE_DEVICES="")
    print("learner on " + ("the GPUs it finds" if args.gpu else "the CPU (--gpu for GPUs)"),
          flush=True)
    command = [sys.executable, "-m", "impala_tf.train", f"--gin_file={gin_file}",
               f"--logdir={logdir}", f"--max_frames={frames}"]
    command += [f"--gin_bindings={b}" for b in bindings]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO, env=env)
    if not args.no_eval:
        # The run's operative config carries the row's bindings.
        subprocess.run([sys.executable, "-m", "impala_tf.evaluate", f"--logdir={logdir}"],
                       check=True, cwd=REPO, env=env)

    from impala_tf import plot
    run = plot.load_run(logdir, args.row)
    s = plot.summary(run)
    if game is None:
        print(f"smoothed return (100 episodes) first >= 0.9 at "
              f"{plot.frames_to_reach(run, 0.9)} frames")
    print(f"| {args.row} | {s['frames']:,} | {s['wall_hours']:.2f} h | "
          f"{s['frames_per_second']:,.0f} | {s['final_return']:+.2f} "
          f"(last {s['final_episodes']} episodes) | {paper_figure(game)} |")


if __name__ == "__main__":
    main()
