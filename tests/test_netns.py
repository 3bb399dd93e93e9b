"""Actors on other hosts, for real: each actor runs in its own network namespace, joined to
the learner's by a veth pair, and reaches it over TLS with the shared token at the address of
its link. Cutting one actor's link does not stop training; restoring it resumes its stream.

Needs root (ip netns, veth); skipped with the reason elsewhere.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from pki import TOKEN, make_pki


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns, veth)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    if shutil.which("openssl") is None:
        return "needs the openssl command line for the test certificates"
    probe = f"impala_probe_{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)


class Hosts:
    """`count` actor hosts: namespace k, linked to this one by a veth pair on 10.231.k.0/30
    (10.231.k.1 here, 10.231.k.2 there)."""

    def __init__(self, count: int):
        tag = os.getpid() % 100000
        self.namespaces = [f"impala_actor{k}_{tag}" for k in range(count)]
        self.links = [f"imp{tag}h{k}" for k in range(count)]  # host ends (<= 15 chars)
        self.learner_ips = [f"10.231.{k}.1" for k in range(count)]
        try:
            for k, (ns, link) in enumerate(zip(self.namespaces, self.links)):
                peer = f"imp{tag}a{k}"
                _ip("netns", "add", ns)
                _ip("link", "add", link, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", ns)
                _ip("addr", "add", f"10.231.{k}.1/30", "dev", link)
                _ip("link", "set", link, "up")
                _ip("-n", ns, "addr", "add", f"10.231.{k}.2/30", "dev", peer)
                _ip("-n", ns, "link", "set", peer, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def run(self, k: int, command, **popen) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.namespaces[k], *command], **popen)

    def cut(self, k: int) -> None:
        _ip("link", "set", self.links[k], "down")

    def restore(self, k: int) -> None:
        _ip("link", "set", self.links[k], "up")

    def close(self) -> None:
        for ns, link in zip(self.namespaces, self.links):
            _ip("link", "del", link, check=False)
            _ip("netns", "del", ns, check=False)


def _by_actor(logdir):
    """The last metrics record's accepted unrolls per actor id, and its frames."""
    try:
        with open(os.path.join(logdir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}, 0
    if not lines:
        return {}, 0
    record = json.loads(lines[-1])
    return ({int(k): v for k, v in record.get("accepted_unrolls_by_actor", {}).items()},
            record["env_frames"])


def _wait(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class _Settled:
    """Called, the seconds for which `value()` has not changed (0 when it just did)."""

    def __init__(self, value):
        self.value, self.last, self.since = value, object(), time.monotonic()

    def __call__(self) -> float:
        now = self.value()
        if now != self.last:
            self.last, self.since = now, time.monotonic()
        return time.monotonic() - self.since


def test_cutting_one_actors_link_does_not_stop_training_and_restoring_it_resumes(tmp_path):
    hosts = Hosts(2)
    processes = []
    try:
        pki = make_pki(str(tmp_path), learner_ips=hosts.learner_ips)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   IMPALA_TF_TOKEN=TOKEN)
        logdir = str(tmp_path / "run")
        learner = subprocess.Popen(
            [sys.executable, "-m", "impala_tf.train", "--role=learner", "--gin_file=catch.gin",
             f"--logdir={logdir}", "--bind=0.0.0.0:0",
             "--gin_bindings=RunConfig.total_environment_frames = 1e9",
             "--gin_bindings=Learner.log_every_seconds = 1",
             f"--gin_bindings=Security.server_cert = '{pki('learner.pem')}'",
             f"--gin_bindings=Security.server_key = '{pki('learner.key')}'"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        processes.append(learner)
        lines = []
        while True:
            line = learner.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            match = re.search(r"learner listening on 0\.0\.0\.0:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        # The learner's output is no longer read: send it where it cannot block the pipe.
        drain = subprocess.Popen(["cat"], stdin=learner.stdout, stdout=subprocess.DEVNULL)
        processes.append(drain)
        actors = [hosts.run(k, [
            sys.executable, "-m", "impala_tf.train", "--role=actor", "--gin_file=catch.gin",
            f"--learner_address={hosts.learner_ips[k]}:{port}", f"--actor_index={k}",
            f"--gin_bindings=Security.ca_cert = '{pki('ca.pem')}'",
            "--gin_bindings=Actor.rpc_timeout_seconds = 3.0",
            "--gin_bindings=Actor.max_reconnect_backoff_seconds = 1.0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for k in range(2)]
        processes += actors

        _wait(lambda: all(_by_actor(logdir)[0].get(k, 0) > 0 for k in range(2)), 180,
              "both actors' unrolls over their links")
        hosts.cut(0)
        # Unrolls already in flight land; then nothing more comes from actor 0 while
        # actor 1's keep arriving (its count moves by 10, however slow the machine).
        settled = _Settled(lambda: _by_actor(logdir)[0].get(0, 0))
        _wait(lambda: settled() >= 3.0, 60, "actor 0's count to stop moving after the cut")
        cut_counts, cut_frames = _by_actor(logdir)
        _wait(lambda: _by_actor(logdir)[0][1] >= cut_counts[1] + 10, 120,
              "actor 1's unrolls while actor 0's link is down")
        counts, frames = _by_actor(logdir)
        assert counts[0] == cut_counts[0], "actor 0's link is down, yet its unrolls arrive"
        assert frames > cut_frames  # training goes on
        assert all(a.poll() is None for a in actors)

        hosts.restore(0)
        _wait(lambda: _by_actor(logdir)[0][0] > counts[0], 120,
              "actor 0's stream to resume after its link came back")
        assert all(a.poll() is None for a in actors)
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(120) == 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.kill()
                process.wait(30)
        hosts.close()
