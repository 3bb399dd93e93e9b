"""`make train`'s command (learner-only until the runtime lands) runs the real update."""

import os
import subprocess
import sys


def test_learner_smoke_runs_updates_and_writes_the_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.tools.learner_smoke", "--gin_file=atari/experts_shallow.gin",
         "--gin_bindings=RunConfig.batch_size=4", "--num_updates=3", f"--logdir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "update 3: total_loss=" in result.stdout
    assert "T=20, B=4" in result.stdout
    operative = (tmp_path / "operative_config.gin").read_text()
    assert "RunConfig.batch_size = 4" in operative and "TrainStep.entropy_cost = 0.01" in operative
