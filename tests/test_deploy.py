"""The Kubernetes manifests in deploy/k8s/ against the code: every container runs a real
entry point with flags it defines, gin files that exist and bindings that parse; and the
manifests agree with each other (the Service's name and port are what actors dial and the
learner binds, every actor has its own index, ActorEndpoint.num_actors is the actor count, the
Security files are where the Secrets are mounted, each Secret is one the README creates)."""

import re
from pathlib import Path

import gin
import pytest
import yaml

from impala_tf import config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def _documents():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _container(workload):
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _flags(container):
    assert container["command"] == ["python", "-m", "impala_tf.train"]
    flags = {}
    for arg in container["args"]:
        name, _, value = arg[2:].partition("=")
        flags.setdefault(name, []).append(value)
    return flags


def _train_flags():
    source = (ROOT / "impala_tf" / "train.py").read_text()
    return set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))


@pytest.fixture(scope="module")
def manifests():
    docs = _documents()
    learner = docs[("Deployment", "impala-learner")]
    actors = docs[("StatefulSet", "impala-actor")]
    return docs, learner, actors


def test_every_container_runs_the_training_command_with_flags_it_defines(manifests):
    _, learner, actors = manifests
    defined = _train_flags()
    for workload, role in ((learner, "learner"), (actors, "actor")):
        flags = _flags(_container(workload))
        assert flags["role"] == [role]
        assert set(flags) <= defined, set(flags) - defined


def test_the_gin_files_and_bindings_parse(manifests):
    _, learner, actors = manifests
    for workload in (learner, actors):
        flags = _flags(_container(workload))
        try:
            config.parse_config(flags["gin_file"], flags.get("gin_bindings", []))
        finally:
            gin.clear_config()


def _binding(flags, key):
    for binding in flags.get("gin_bindings", []):
        name, _, value = binding.partition("=")
        if name.strip() == key:
            return yaml.safe_load(value.strip())
    raise KeyError(key)


def test_the_actors_dial_the_service_the_learner_listens_behind(manifests):
    docs, learner, actors = manifests
    service = docs[("Service", "impala-learner")]
    (port,) = service["spec"]["ports"]
    assert service["spec"]["selector"] == learner["spec"]["template"]["metadata"]["labels"]
    learner_flags, actor_flags = _flags(_container(learner)), _flags(_container(actors))
    assert learner_flags["bind"] == [f"0.0.0.0:{port['targetPort']}"]
    assert _container(learner)["ports"] == [{"containerPort": port["targetPort"]}]
    assert actor_flags["learner_address"] == [f"{service['metadata']['name']}:{port['port']}"]
    # The name actors check in the learner's certificate is the name they dial.
    assert _binding(actor_flags, "Security.server_name") == service["metadata"]["name"]
    assert learner_flags["gin_file"] == actor_flags["gin_file"]  # one config on both sides


def test_each_actor_has_its_own_index_and_the_learner_accepts_them_all(manifests):
    _, learner, actors = manifests
    container = _container(actors)
    assert _flags(container)["actor_index"] == ["$(POD_INDEX)"]
    (pod_index,) = [e for e in container["env"] if e["name"] == "POD_INDEX"]
    assert pod_index["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert _binding(_flags(_container(learner)), "ActorEndpoint.num_actors") == \
        actors["spec"]["replicas"]
    assert learner["spec"]["replicas"] == 1
    assert learner["spec"]["strategy"]["type"] == "Recreate"  # one learner per logdir


def test_security_files_are_where_the_secrets_are_mounted(manifests):
    _, learner, actors = manifests
    readme = (K8S / "README.md").read_text()
    created = set(re.findall(r"kubectl create secret generic (\S+) (.*)", readme))
    created_files = {name: re.findall(r"--from-file=(\S+)", files) for name, files in created}
    for workload in (learner, actors):
        container = _container(workload)
        spec = workload["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        flags = _flags(container)
        paths = [_binding(flags, b) for b in ("Security.server_cert", "Security.server_key",
                                              "Security.ca_cert", "Security.token_file")
                 if any(x.startswith(b) for x in flags["gin_bindings"])]
        assert paths
        for path in paths:
            folder, file_name = path.rsplit("/", 1)
            secret = secrets[mounts[folder]]
            assert file_name in created_files[secret], (path, secret)
