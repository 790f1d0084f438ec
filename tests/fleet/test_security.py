"""TLS and etcd user/password auth, with the documented role limiting an agent to its group's prefix."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from quiesce import APPLICATION
from quiesce.fleet import FleetError

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(300)]

PASSWORD = "agent-secret-1"


def _certs(d: Path, server_ip: str) -> None:
    """A CA, a server certificate for etcd's addresses, and a client certificate."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=quiesce-test-ca",
    )
    for name, ext in (("server", f"subjectAltName=IP:{server_ip},IP:127.0.0.1"), ("client", "")):
        # etcd's gateway refuses a client certificate with a CommonName (it would not be the
        # user through the gateway); the client certificate names an organisation only.
        subject = "/CN=quiesce-etcd" if name == "server" else "/O=quiesce-agents"
        ssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}-key.pem",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
        )
        extfile = d / f"{name}.ext"
        extfile.write_text((ext + "\n") if ext else "basicConstraints=CA:FALSE\n")
        ssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            str(extfile),
        )
    for p in d.iterdir():
        p.chmod(0o600)


def _etcdctl(lab, *args: str) -> str:
    d = lab.tls_dir
    argv = [
        "nsenter",
        f"--net=/run/netns/{lab.hub}",
        "--",
        "etcdctl",
        "--endpoints=https://127.0.0.1:2379",
        f"--cacert={d / 'ca.pem'}",
        f"--cert={d / 'client.pem'}",
        f"--key={d / 'client-key.pem'}",
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def setup_auth(lab) -> None:
    """The documented setup: a role limited to /quiesce/<group>/, a user for the agents, auth on."""
    _etcdctl(lab, "user", "add", "root", "--new-user-password=root-secret")
    _etcdctl(lab, "role", "add", "quiesce-lab")
    _etcdctl(lab, "role", "grant-permission", "quiesce-lab", "readwrite", "/quiesce/lab/", "--prefix=true")
    _etcdctl(lab, "user", "add", "quiesce-lab", f"--new-user-password={PASSWORD}")
    _etcdctl(lab, "user", "grant-role", "quiesce-lab", "quiesce-lab")
    _etcdctl(lab, "auth", "enable")


@pytest.fixture(scope="module")
def tlslab(lab_namespace, request):
    """Two agents talking to etcd over TLS (client certificates) as a user limited to their prefix."""
    from quiesce.fleet.lab import Lab
    from quiesce.fleet.network import Network

    # As root, an agent takes TLS files only from directories only root can write (not /tmp).
    d = Path(tempfile.mkdtemp(dir="/run", prefix="quiesce-tls-test-"))
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    lab = Lab(
        2,
        deadline_s=5.0,
        writer=False,
        tls_dir=d,
        setup_etcd=setup_auth,
        credentials=("quiesce-lab", PASSWORD),
    )
    _certs(d, lab.address(1))
    assert isinstance(lab.net, Network)
    with lab:
        yield lab


def test_run_over_tls_with_password_auth(tlslab):
    """A whole fleet run over https, authenticated: consistent."""
    code, out = tlslab.fleet_run()
    assert code == 0, out
    assert out["consistency"] == APPLICATION


def test_role_limits_the_agent_to_its_group(tlslab):
    """The agents' user can read and write /quiesce/lab/ and nothing else."""
    tlslab.client_call(lambda s: s.put("/quiesce/lab/probe", {"ok": 1}))
    for key in ("/quiesce/other/probe", "/elsewhere"):
        with pytest.raises(FleetError, match="permission denied"):
            tlslab.client_call(lambda s, k=key: s.put(k, {"ok": 1}))
    with pytest.raises(FleetError, match="permission denied"):
        tlslab.client_call(lambda s: s.get_prefix("/quiesce/other/"))


def test_wrong_password_and_missing_certificate_are_refused(tlslab):
    """A wrong password, or no client certificate, gets nothing."""
    from quiesce.fleet.store import Security, Store

    good = tlslab.security()

    def attempt(security):
        def call(_store):
            with Store([tlslab.etcd_url], security) as s:
                return s.get_prefix("/quiesce/lab/")

        return tlslab.client_call(call)

    with pytest.raises(FleetError):
        attempt(Security(good.cacert, good.cert, good.key, "quiesce-lab", "wrong"))
    with pytest.raises(FleetError):
        attempt(Security(good.cacert, None, None, "quiesce-lab", PASSWORD))
