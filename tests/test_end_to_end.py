"""End to end: `python -m impala_tf.train` with 2 actor processes over gRPC on Catch learns to
near-optimal return within a fixed frame budget; SIGTERM stops it cleanly; a restart resumes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest


FRAME_BUDGET = 300_000  # Catch learns in ~100k frames; the budget leaves room for noise


def _train(logdir, *bindings, flags=(), **popen):
    command = [sys.executable, "-m", "impala_tf.train", "--gin_file=catch.gin",
               f"--logdir={logdir}", "--gin_bindings=Learner.log_every_seconds = 2", *flags]
    command += [f"--gin_bindings={b}" for b in bindings]
    env = dict(popen.pop("env", os.environ), CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, **popen)


def _actor_processes(address):
    """PIDs of live actor processes connected to `address`."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split()[2] == "Z"
        except OSError:
            continue
        if "impala_tf.acting.process" in cmdline and address in cmdline and not zombie:
            pids.append(int(pid))
    return pids


def _metrics(logdir):
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_catch_learns_with_actor_processes(tmp_path):
    logdir = str(tmp_path / "run")
    process = _train(logdir, f"RunConfig.total_environment_frames = {FRAME_BUDGET}")
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-4000:]
    address = re.search(r"learner listening on (\S+);", out).group(1)
    assert "started 2 actor processes" in out
    assert "done (RunConfig.total_environment_frames=300000 reached)" in out
    records = _metrics(logdir)
    assert records[-1]["env_frames"] >= FRAME_BUDGET
    returns = [(r["env_frames"], r["episode_return_mean"], r["episodes"]) for r in records
               if r["episode_return_mean"] is not None]
    # Near-optimal (the best possible is 1.0): the last 20% of the run's episodes.
    tail = [(ret, n) for frames, ret, n in returns if frames >= 0.8 * FRAME_BUDGET]
    mean_tail = sum(ret * n for ret, n in tail) / sum(n for _, n in tail)
    assert mean_tail >= 0.9, returns
    assert returns[0][1] < 0.5  # it started from chance level
    assert records[-1]["rejected_unrolls"] == 0
    assert all(r["policy_lag_mean"] is None or r["policy_lag_mean"] < 50 for r in records)
    assert os.path.exists(os.path.join(logdir, "checkpoints", "checkpoint"))
    assert _actor_processes(address) == []
    assert 0.0 < records[-1]["entropy"] < 1.1  # below log(3): the policy got decisive

    # The trained checkpoint, evaluated under the protocol, scores near-optimally too.
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.evaluate", f"--logdir={logdir}", "--num_episodes=64"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(open(os.path.join(logdir, "evaluation.json")).read())
    assert report["rows"][0]["episodes"] == 64
    assert report["rows"][0]["mean_return"] >= 0.8, result.stdout


def test_sigterm_stops_cleanly_and_a_restart_resumes(tmp_path):
    logdir = str(tmp_path / "run")
    process = _train(logdir, "RunConfig.total_environment_frames = 1e9")
    lines = []
    deadline = time.time() + 300
    address = None
    while time.time() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        match = re.search(r"learner listening on (\S+);", line)
        address = address or (match.group(1) if match else None)
        if line.startswith("frames") and " 0 /" not in line.split("|")[0]:
            break
    assert address and _actor_processes(address), "".join(lines)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, "".join(lines) + out
    assert "stopping" in out and "done (SIGTERM received)" in out
    assert _actor_processes(address) == []
    frames_at_stop = _metrics(logdir)[-1]["env_frames"]
    assert frames_at_stop > 0

    # --max_frames stops the resumed run without shortening the lr schedule (1e9 frames).
    resumed = _train(logdir, "RunConfig.total_environment_frames = 1e9",
                     flags=[f"--max_frames={frames_at_stop + 3200}"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-4000:]
    match = re.search(r"resumed from \S+: step (\d+), ([\d,]+) frames", out)
    assert match and int(match.group(2).replace(",", "")) == frames_at_stop
    assert f"done (--max_frames={frames_at_stop + 3200} reached)" in out
    last = _metrics(logdir)[-1]
    assert last["env_frames"] >= frames_at_stop + 3200
    assert last["learning_rate"] > 0.0099  # 0.01 decayed over 1e9 frames, not over the budget


def test_the_halves_run_apart(tmp_path):
    """--role=learner and --role=actor, as on two hosts (here over loopback)."""
    logdir = str(tmp_path / "run")
    command = [sys.executable, "-m", "impala_tf.train", "--role=learner", "--gin_file=catch.gin",
               f"--logdir={logdir}", "--bind=127.0.0.1:0",
               "--gin_bindings=RunConfig.total_environment_frames = 16000"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    learner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    address = None
    lines = []
    deadline = time.time() + 120
    while address is None and time.time() < deadline:
        line = learner.stdout.readline()
        lines.append(line)
        match = re.search(r"learner listening on (\S+);", line)
        address = match.group(1) if match else None
    assert address, "".join(lines)
    assert "started" not in "".join(lines)  # no actors spawned by a learner-only role
    actor = subprocess.Popen(
        [sys.executable, "-m", "impala_tf.train", "--role=actor", "--gin_file=catch.gin",
         f"--learner_address={address}", "--actor_index=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        out, _ = learner.communicate(timeout=300)
    finally:
        actor.terminate()
        actor.wait(30)
    assert learner.returncode == 0, "".join(lines) + out
    assert _metrics(logdir)[-1]["env_frames"] >= 16000
    assert _metrics(logdir)[-1]["accepted_unrolls"] > 0


@pytest.mark.parametrize("inference", ["actor", "central"])
def test_a_killed_actor_is_restarted_and_training_goes_on(tmp_path, inference):
    """SIGKILL an actor process: the launcher restarts it and the learner trains on (in
    central mode the learner drops the dead stream's state and the new process acts again)."""
    logdir = str(tmp_path / "run")
    process = _train(logdir, "RunConfig.total_environment_frames = 1e9",
                     "Launcher.restart_backoff_seconds = 1.0", "Launcher.num_actors = 2",
                     f"Launcher.inference = '{inference}'")
    lines, address, killed, frames_at_kill, frames_after = [], None, None, None, []
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"learner listening on (\S+);", line)
            address = address or (match.group(1) if match else None)
            frames = re.match(r"frames\s+([\d,]+) /", line)
            frames = int(frames.group(1).replace(",", "")) if frames else None
            if killed is None and frames and len(_actor_processes(address)) == 2:
                killed = _actor_processes(address)[0]
                frames_at_kill = frames
                os.kill(killed, signal.SIGKILL)
            elif killed is not None and frames is not None:
                frames_after.append(frames)
                if any("restarted" in x for x in lines) and len(frames_after) >= 3:
                    break
        text = "".join(lines)
        assert killed is not None, text[-3000:]
        assert re.search(r"actor \d \(pid %d\) exited with code -9; restarting it in 1 s" % killed,
                         text), text[-3000:]
        assert re.search(r"actor \d restarted \(pid \d+, restart 1\)", text), text[-3000:]
        live = _actor_processes(address)
        assert len(live) == 2 and killed not in live
        assert frames_after[-1] > frames_at_kill  # the learner trained on meanwhile
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out[-3000:]
    assert _actor_processes(address) == []


def _read_until(process, pattern, lines, timeout=300.0):
    """Reads `process`'s output into `lines` until a line matches `pattern`; the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(lines)[-4000:])


def test_a_killed_learner_resumes_and_a_remote_actor_reconnects(tmp_path):
    """SIGKILL the learner (`--role=all`, 2 local actors) while a `--role=actor` process feeds
    it too: the local actors exit with it, the remote one waits; a new learner on the same
    port resumes from the last complete checkpoint and trains on that actor's unrolls."""
    logdir = str(tmp_path / "run")
    ckpt_state = os.path.join(logdir, "checkpoints", "checkpoint")
    bindings = ("RunConfig.total_environment_frames = 1e9",
                "Learner.checkpoint_every_minutes = 0.02",
                "ActorEndpoint.num_actors = 3")  # the 2 local actors and the remote actor 2
    first = _train(logdir, *bindings, flags=["--bind=127.0.0.1:0"])
    lines = []  # the learner binds a port of its own and says which; the second takes it
    address = _read_until(first, r"learner listening on (\S+);", lines).group(1)
    _read_until(first, r"started \d+ actor processes", lines)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    remote = subprocess.Popen(
        [sys.executable, "-m", "impala_tf.train", "--role=actor", "--gin_file=catch.gin",
         f"--learner_address={address}", "--actor_index=2",
         "--gin_bindings=Actor.max_reconnect_backoff_seconds = 1.0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    second = None
    try:
        local_actors = _actor_processes(address)
        assert len(local_actors) == 2
        deadline = time.time() + 120
        while time.time() < deadline and not (
                os.path.exists(ckpt_state) and "ckpt-0\"" not in open(ckpt_state).read()):
            time.sleep(0.2)
        _read_until(first, r"^frames\s+[1-9]", lines)
        first.kill()
        first.communicate(timeout=30)
        deadline = time.time() + 30
        while _actor_processes(address) and time.time() < deadline:
            time.sleep(0.2)
        assert _actor_processes(address) == []  # the local actors died with their learner
        assert remote.poll() is None  # the remote one waits for a learner
        checkpoint = re.search(r'^model_checkpoint_path: "(\S+)"', open(ckpt_state).read()).group(1)

        second = subprocess.Popen(
            [sys.executable, "-m", "impala_tf.train", "--role=learner", "--gin_file=catch.gin",
             f"--logdir={logdir}", f"--bind={address}", "--gin_bindings=Learner.log_every_seconds = 2"]
            + [f"--gin_bindings={b}" for b in bindings],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines = []
        resumed = _read_until(second, r"resumed from (\S+): step (\d+), ([\d,]+) frames", lines)
        assert os.path.basename(resumed.group(1)) == checkpoint
        step, frames = int(resumed.group(2)), int(resumed.group(3).replace(",", ""))
        assert step > 0 and frames > 0
        while True:  # trains on: only the remote actor is there to feed it
            line = _read_until(second, r"^frames\s+([\d,]+) /", lines).group(1)
            if int(line.replace(",", "")) >= frames + 8000:
                break
        assert remote.poll() is None
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 0, "".join(lines) + out
        after = [r for r in _metrics(logdir) if r["env_frames"] > frames]
        assert after and min(r["learner_steps"] for r in after) > step
        assert after[-1]["accepted_unrolls"] > 0 and after[-1]["rejected_unrolls"] == 0
    finally:
        for process in (first, second, remote):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)
    remote.terminate()
    assert remote.wait(30) is not None


def test_a_public_bind_needs_tls_and_a_token_or_an_explicit_insecure(tmp_path):
    command = [sys.executable, "-m", "impala_tf.train", "--role=learner", "--gin_file=catch.gin",
               f"--logdir={tmp_path}", "--bind=0.0.0.0:0"]
    env = {k: v for k, v in os.environ.items() if k != "IMPALA_TF_TOKEN"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode != 0
    assert "needs TLS" in refused.stderr and "--insecure" in refused.stderr
    assert "learner listening" not in refused.stdout
    allowed = subprocess.Popen(command + ["--insecure"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        _read_until(allowed, r"learner listening on 0\.0\.0\.0:\d+", lines)
        assert any("WARNING: the learner listens on 0.0.0.0" in line for line in lines)
    finally:
        allowed.send_signal(signal.SIGTERM)
        allowed.communicate(timeout=120)
    assert allowed.returncode == 0


@pytest.mark.parametrize("inference", ["actor", "central"])
def test_role_all_on_a_public_bind_with_tls_has_its_local_actors_dial_loopback(tmp_path,
                                                                                inference):
    """`--role=all --bind=0.0.0.0:0` with TLS: the spawned actors dial 127.0.0.1 (named in the
    learner's certificate), not the wildcard 0.0.0.0 that no certificate names, and train;
    in both inference modes (central: the environment actors' steps come over TLS with the
    token)."""
    from pki import TOKEN, make_pki
    pki = make_pki(str(tmp_path))
    logdir = str(tmp_path / "run")
    env = dict(os.environ, IMPALA_TF_TOKEN=TOKEN)
    process = _train(logdir, f"Security.server_cert = '{pki('learner.pem')}'",
                     f"Security.server_key = '{pki('learner.key')}'",
                     f"Security.ca_cert = '{pki('ca.pem')}'",
                     "Actor.max_reconnect_backoff_seconds = 1.0",
                     "EnvActor.max_reconnect_backoff_seconds = 1.0",
                     f"Launcher.inference = '{inference}'",
                     flags=["--bind=0.0.0.0:0", "--max_frames=3000"], env=env)
    try:
        out, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out[-4000:]
    assert re.search(r"learner listening on 0\.0\.0\.0:\d+", out) and "done (" in out
    last = _metrics(logdir)[-1]
    # Only local actors exist, so these frames came over TLS from them (one may have
    # started late on a loaded machine: the budget is small).
    assert last["env_frames"] >= 3000 and last["accepted_unrolls"] > 0
    assert last["unauthenticated_calls"] == 0 and last["rejected_unrolls"] == 0
