"""Three real node processes with mutual TLS on every connection (peers and clients), the
certificates made at test time with the openssl commands of docs/deployment.md.

What an operator relies on, end to end: the sync and asyncio clients work over TLS; a client
with no certificate, one from another CA, one that does not trust the cluster's CA or one
without TLS at all gets a typed error in seconds (not a hang) while the nodes keep serving;
peer links are TLS only (the node logs the version of every peer connection and refuses plain
or foreign-certificate peers); a leader killed with -9 fails over and rejoins over TLS; the
Django settings and the Celery ``raft://`` transport pick the ``TLS_*`` files up; and the
certificates rotate (new CA next to the old one, new leaves, old CA dropped) with SIGHUP,
without restarting a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tls_certs import CA, Leaf, bundle, client_context, install

from coordination.client.aio import AsyncCoordinator
from coordination.client.coordinator import Coordinator
from raft_node.client import AuthenticationFailed, ClusterUnavailable
from raft_node.testing.launcher import LocalCluster
from raft_node.transport.auth import TLSRefused
from raft_node.transport.connections import dial

pytestmark = [
    pytest.mark.realprocess,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"
NODES = ("n1", "n2", "n3")


@dataclass
class Pki:
    ca: CA
    rogue: CA  # another CA: its certificates must be refused
    bundle: Path  # TLS_CA of every node: the trusted CAs
    live: dict[str, Leaf]  # each node's TLS_CERT/TLS_KEY paths (rotation replaces the files)
    client: Leaf
    intruder: Leaf  # a client certificate from the other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CA.create(d / "ca1", "ca1")
    rogue = CA.create(d / "rogue", "rogue")
    live = {}
    for node in NODES:
        issued = ca.issue(node)
        live[node] = Leaf(d / f"{node}.pem", d / f"{node}.key")
        install(issued.cert, live[node].cert)
        install(issued.key, live[node].key)
    bundle(d / "ca-bundle.pem", ca)
    client, intruder = ca.issue("client", san=None), rogue.issue("intruder", san=None)
    return Pki(ca, rogue, d / "ca-bundle.pem", live, client, intruder)


@pytest.fixture(scope="module")
def cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(
        tmp_path_factory.mktemp("tls-cluster"),
        ROOT / "manage.py",
        settings={"STATE_MACHINE": MACHINE, "TLS_CA": pki.bundle},
        node_settings={n: {"TLS_CERT": f.cert, "TLS_KEY": f.key} for n, f in pki.live.items()},
        client_ssl=client_context(pki.bundle, pki.client),
    )
    c.start()
    c.wait_for_leader(timeout=60)
    c.wait_converged()  # every node has joined (over TLS) before a test looks at the logs
    yield c
    c.stop()


def addresses(cluster: LocalCluster) -> list[tuple[str, int]]:
    return list(cluster.addresses.values())


def log(cluster: LocalCluster, node: str) -> str:
    return cluster.log_path(node).read_bytes().decode(errors="replace")


def wait_log(cluster: LocalCluster, node: str, needle: str, start: int = 0, timeout=15.0) -> str:
    """The first line of ``node``'s log after offset ``start`` that contains ``needle``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log(cluster, node)[start:].splitlines():
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"{node} never logged {needle!r}"
        time.sleep(0.05)


def put(cluster: LocalCluster, context: ssl.SSLContext | None, payload: bytes, **kw) -> None:
    with Coordinator(addresses(cluster), cluster.secret, ssl=context, **kw) as coord:
        coord.queue("tls-writes").put(payload)


def test_the_documented_certificate_commands_run_as_written(tmp_path: Path):
    """docs/deployment.md's certificate block, run by ``sh`` as an operator would paste it:
    it makes a CA, a node and a client certificate that verify strictly and load."""
    doc = (ROOT / "docs" / "deployment.md").read_text()
    section = doc[doc.index("### Certificates") : doc.index("### Settings")]
    script = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    done = subprocess.run(
        ["sh", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "n1.pem: OK" in done.stdout and "web.pem: OK" in done.stdout
    for leaf in ("n1", "web"):  # each key matches its certificate, under strict checks
        client_context(
            tmp_path / "ca-bundle.pem", Leaf(tmp_path / f"{leaf}.pem", tmp_path / f"{leaf}.key")
        )


def test_sync_and_async_clients_work_over_mutual_tls(cluster: LocalCluster, pki: Pki):
    context = client_context(pki.bundle, pki.client)
    with Coordinator(addresses(cluster), cluster.secret, ssl=context) as coord:
        with coord.lock("tls-lock") as lock:
            assert coord.check_token("tls-lock", lock.token)
        queue = coord.queue("tls-sync")
        queue.put(b"over tls")
        msg = queue.get(wait=5)
        assert msg is not None and msg.payload == b"over tls"
        msg.ack()

    async def main() -> None:
        async with AsyncCoordinator(addresses(cluster), cluster.secret, ssl=context) as coord:
            async with coord.lock("tls-aio-lock") as lock:
                assert await coord.check_token("tls-aio-lock", lock.token)
            queue = coord.queue("tls-aio")
            await queue.put(b"async over tls")
            msg = await queue.get(wait=5)
            assert msg["payload"] == b"async over tls"
            await queue.ack(msg)

    asyncio.run(main())
    for node in NODES:  # every peer link a node opened says TLS 1.3, none says plain TCP
        connected = [line for line in log(cluster, node).splitlines() if "peer_connected" in line]
        assert connected and all("tls=TLSv1.3" in line for line in connected), connected


def test_clients_without_an_accepted_certificate_get_a_typed_error_at_once(
    cluster: LocalCluster, pki: Pki
):
    refused = {
        "no certificate": client_context(pki.bundle, None),
        "a certificate from another CA": client_context(pki.bundle, pki.intruder),
        "a client that does not trust the cluster's CA": client_context(pki.rogue.pem, pki.client),
    }
    for case, context in refused.items():
        started = time.monotonic()
        with pytest.raises(AuthenticationFailed, match="TLS") as info:
            put(cluster, context, b"refused", timeout=10)
        assert time.monotonic() - started < 3, f"{case}: not refused at once"  # not retried
        assert info.value.code == "auth_failed", case

    async def no_certificate() -> None:
        context = refused["no certificate"]
        async with AsyncCoordinator(addresses(cluster), cluster.secret, ssl=context) as coord:
            await coord.queue("tls-writes").put(b"refused")

    with pytest.raises(AuthenticationFailed, match="TLS"):
        asyncio.run(no_certificate())

    # No TLS at all: the node waits for a TLS hello the client never sends. The client gives up
    # at its timeout with a typed error whose message points at TLS.
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="TLS"):
        put(cluster, None, b"plain", timeout=1.5)
    assert time.monotonic() - started < 5

    put(cluster, client_context(pki.bundle, pki.client), b"still serving")
    assert any("event=tls_failed" in log(cluster, node) for node in NODES)


def test_peer_connections_are_tls_only(cluster: LocalCluster, pki: Pki):
    addr = cluster.addresses["n1"]
    start = len(log(cluster, "n1"))
    with socket.create_connection(addr, timeout=5) as sock:  # bytes that are not TLS
        sock.sendall(b"\x00\x00\x00\x22" + b"\x01" * 34)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(64) == b""  # closed without a word in the clear
    wait_log(cluster, "n1", "event=tls_failed", start)

    secret = cluster.secret.encode()

    async def as_peer(context: ssl.SSLContext | None) -> None:
        _, writer = await dial(
            addr,
            secret,
            my_id="n2",
            peer_id="n1",
            ssl_client=context,
            connect_timeout=2,
            handshake_timeout=1,
        )
        writer.close()

    # With the cluster secret and a node's id, but in plain TCP: never admitted.
    with pytest.raises(TimeoutError, match="TLS"):
        asyncio.run(as_peer(None))
    # In TLS with a certificate from another CA: the node refuses it in the TLS handshake.
    start = len(log(cluster, "n1"))
    with pytest.raises(TLSRefused):
        asyncio.run(as_peer(client_context(pki.bundle, pki.intruder)))
    assert "event=tls_failed" in wait_log(cluster, "n1", "event=tls_failed", start)


def test_leader_killed_with_sigkill_fails_over_and_rejoins_over_tls(
    cluster: LocalCluster, pki: Pki
):
    context = client_context(pki.bundle, pki.client)
    with Coordinator(addresses(cluster), cluster.secret, ssl=context, timeout=15) as coord:
        queue = coord.queue("tls-failover")
        sent = [f"m{i}".encode() for i in range(10)]
        for payload in sent[:5]:
            queue.put(payload)
        old = cluster.wait_for_leader()
        offsets = {node: len(log(cluster, node)) for node in NODES}
        cluster.kill(old)  # SIGKILL
        new = cluster.wait_for_leader(exclude=old, timeout=20)
        assert new != old
        for payload in sent[5:]:  # the client follows the new leader, over TLS
            queue.put(payload)
        cluster.start_node(old)
        cluster.wait_converged()
        got = queue.get_many(20, wait=5)
        assert sorted(m.payload for m in got) == sorted(sent)
    # The restarted node dialled its peers, and the leader (the one that caught it up) it, in TLS.
    line = wait_log(cluster, old, "event=peer_connected", offsets[old])
    assert "tls=TLSv1.3" in line, line
    redialled = [
        line
        for node in NODES
        if node != old
        for line in log(cluster, node)[offsets[node] :].splitlines()
        if f"event=peer_connected peer={old}" in line
    ]
    assert redialled and all("tls=TLSv1.3" in line for line in redialled), redialled


def test_django_settings_and_the_celery_transport_use_the_tls_files(
    cluster: LocalCluster, pki: Pki, monkeypatch: pytest.MonkeyPatch
):
    from kombu import Connection

    members = ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items())
    monkeypatch.setenv("RAFTSYNC_CLUSTER", members)
    monkeypatch.setenv("RAFTSYNC_CLUSTER_SECRET", cluster.secret)
    monkeypatch.setenv("RAFTSYNC_TLS_CERT", str(pki.client.cert))
    monkeypatch.setenv("RAFTSYNC_TLS_KEY", str(pki.client.key))
    monkeypatch.setenv("RAFTSYNC_TLS_CA", str(pki.bundle))
    with Coordinator.from_settings() as coord:
        coord.queue("tls-settings").put(b"from settings")
        msg = coord.queue("tls-settings").get(wait=5)
        assert msg is not None and msg.payload == b"from settings"
        msg.ack()
    # Hosts in the URL and the secret in the options: TLS still comes from the settings.
    url = ";".join(f"raft://{h}:{p}" for h, p in addresses(cluster))
    conn = Connection(url, transport_options={"secret": cluster.secret, "polling_wait": 0.2})
    try:
        queue = conn.SimpleQueue("tls-kombu")
        queue.put({"over": "tls"})
        message = queue.get(timeout=10)
        assert message.payload == {"over": "tls"}
        message.ack()
        queue.close()
    finally:
        conn.release()


def test_certificates_rotate_with_sighup_without_a_restart(cluster: LocalCluster, pki: Pki):
    """The rolling rotation of docs/deployment.md: trust old+new CA, switch each node's leaf
    to the new CA, drop the old CA; every step one SIGHUP per node, the cluster committing."""
    pids = {node: cluster.procs[node].pid for node in NODES}
    ca2 = CA.create(pki.ca.directory.parent / "ca2", "ca2")

    def reload(node: str) -> str:
        start = len(log(cluster, node))
        cluster.kill(node, signal.SIGHUP)
        return wait_log(cluster, node, "event=tls_reload", start)

    def commits(context: ssl.SSLContext, tag: str) -> None:
        put(cluster, context, tag.encode(), timeout=10)

    # A broken file (key of another certificate) is refused; the node keeps its old certificate.
    install(pki.intruder.key, pki.live["n3"].key)
    assert "event=tls_reload_failed" in reload("n3")
    assert cluster.status("n3") is not None  # still serving, over TLS
    install(pki.ca.directory / "n3.key", pki.live["n3"].key)

    # 1. Every node (and client) trusts both CAs.
    bundle(pki.bundle, pki.ca, ca2)
    for node in NODES:
        assert "ca_certs=2" in reload(node)
    old_client = client_context(pki.bundle, pki.client)  # a client (re)started with the bundle
    commits(old_client, "both CAs")

    # 2. New leaves from the new CA, one node at a time: mixed leaves work throughout.
    for node in NODES:
        issued = ca2.issue(f"{node}-2")
        install(issued.cert, pki.live[node].cert)
        install(issued.key, pki.live[node].key)
        assert "event=tls_reloaded" in reload(node)
        commits(old_client, f"{node} on the new CA")
    new_client = client_context(pki.bundle, ca2.issue("client-2", san=None))
    commits(new_client, "new client certificate")

    # 3. Drop the old CA: peers re-dial under it at once, old-CA certificates are refused.
    bundle(pki.bundle, ca2)
    offsets = {node: len(log(cluster, node)) for node in NODES}
    for node in NODES:
        assert "ca_certs=1" in reload(node)
    cluster.client_ssl = new_client
    for node in NODES:
        line = wait_log(cluster, node, "event=peer_connected", offsets[node])
        assert "tls=TLSv1.3" in line
    commits(new_client, "new CA only")
    with pytest.raises(AuthenticationFailed):
        commits(client_context(pki.bundle, pki.client), "old client certificate")
    cluster.wait_converged()
    assert {node: cluster.procs[node].pid for node in NODES} == pids  # nothing restarted
