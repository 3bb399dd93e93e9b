"""Test certificates made with the openssl command line: a CA, a learner certificate for given
IP addresses, an actor (client) certificate, an unrelated CA, and a token file."""

import os
import subprocess

TOKEN = "s3cret-token-0123456789"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_request(name, cn, cwd):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


def _ca(name, cwd):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=cwd)


def _sign(name, ca, extensions, cwd):
    with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
        f.write(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=cwd)


def make_pki(directory: str, learner_ips=("127.0.0.1",)):
    """Writes ca.pem, other_ca.pem, learner.{pem,key} (SAN: `learner_ips`, localhost),
    actor.{pem,key} and token into `directory`; returns `name -> path`."""
    _ca("ca", directory)
    _ca("other_ca", directory)
    _key_and_request("learner", "learner", directory)
    names = ",".join([f"IP:{ip}" for ip in learner_ips] + ["DNS:localhost"])
    _sign("learner", "ca", f"subjectAltName={names}\n", directory)
    _key_and_request("actor", "actor", directory)
    _sign("actor", "ca", "extendedKeyUsage=clientAuth\n", directory)
    with open(os.path.join(directory, "token"), "w") as f:
        f.write(TOKEN + "\n")
    return lambda name: os.path.join(directory, name)
