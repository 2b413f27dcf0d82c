"""Running one Raft node process: the implementation behind both ``raftsync node`` and
``manage.py run_raft_node`` (they differ only in where the settings come from).

Everything that can be checked is checked before the node starts, and reported as one line naming
the setting (``ValueError``; the callers print it and exit non-zero). Once running, the node stops
on SIGTERM/SIGINT (a leader hands over first) or on a fatal error in any of its tasks
(``NodeServer.spawn``); ``serve`` then returns 1, so a supervisor restarts it instead of keeping
a zombie that listens but no longer takes part. SIGHUP reloads the TLS certificate files.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any

from coordination import conf as settings_conf
from coordination.conf import INVALID, Problem, Resolved, SettingsError, setting_name
from coordination.node import runtime
from coordination.node.options import Option, setting_overrides
from raft_node.host import gc_policy
from raft_node.host.events import event
from raft_node.server import NodeServer

OPTIONS = (
    Option("--id", "node_id", "this node's id", key="NODE_ID"),
    Option("--cluster", "cluster", "id=host:port,... of every voter", key="CLUSTER"),
    Option("--data-dir", "data_dir", "this node's log and snapshot directory (DATA_DIR/<id>)"),
    Option("--metrics-port", "metrics_port", "Prometheus port", key="METRICS_PORT", type=int),
    Option("--listen", "listen", "host:port to bind (default: the node's own CLUSTER address)"),
    Option("--secret-file", "secret_file", "file holding the secret", key="CLUSTER_SECRET_FILE"),
    Option("--state-machine", "state_machine", "state machine class", key="STATE_MACHINE"),
    Option(
        "--join",
        "join",
        "host:port of a member of a running cluster: take its membership (then add this node "
        "with `raft_members add ID=HOST:PORT`); needs --id and --listen",
    ),
)


def build_server(
    conf: Resolved, opts: Mapping[str, Any], *, dev: bool, how: str = ""
) -> NodeServer:
    """The node, ready to ``serve``; ``ValueError`` (one line) for anything misconfigured."""
    secret = settings_conf.cluster_secret(conf, dev=dev, how=how)
    voters = None
    if opts.get("join"):
        conf, voters = joining(conf, secret, opts)
    config = runtime.node_config(
        conf, secret, data_dir=opts.get("data_dir"), listen=opts.get("listen")
    )
    config.voters = voters
    machine = runtime.state_machine(conf)
    try:
        server = NodeServer(config, machine)
    except OSError as exc:
        raise ValueError(f"cannot open the data directory {config.data_dir}: {exc}") from None
    if conf["REDIS_URL"] and hasattr(machine, "part"):
        try:
            from coordination.node.redis_mirror import RedisMirror
        except ImportError as exc:
            raise SettingsError(
                [
                    Problem(
                        INVALID,
                        "REDIS_URL",
                        f"{setting_name('REDIS_URL')} is set but {exc}: "
                        "pip install raftsync[redis]",
                    )
                ]
            ) from None
        server.plugins.append(RedisMirror(server, conf["REDIS_URL"]))
    return server


def joining(conf: Resolved, secret: bytes, opts: Mapping[str, Any]) -> tuple[Resolved, list[str]]:
    """The settings of a node joining the cluster that ``--join`` names: its ``CLUSTER`` is the
    members' addresses plus this node's ``--listen``, and the voters are the cluster's (this node
    is not one: it waits to be added as a learner)."""
    listen = opts.get("listen")
    if not listen:
        raise ValueError("--join needs --listen HOST:PORT (the address the members will dial)")
    try:
        membership = runtime.cluster_membership(conf, secret, opts["join"])
    except Exception as exc:
        raise ValueError(f"--join {opts['join']}: cannot read the membership: {exc}") from None
    addresses = dict(membership["addresses"])
    addresses[conf["NODE_ID"]] = listen
    cluster = ",".join(f"{node}={address}" for node, address in addresses.items())
    return Resolved({**conf.data, "CLUSTER": cluster}, conf.sources), list(membership["voters"])


def serve(server: NodeServer, event_loop: str = "asyncio", *, tls: bool = False) -> int:
    """Run the node until it is told to stop (0) or a fatal error stops it (1), on the event
    loop ``loop_factory(event_loop, tls)`` picks."""
    factory = loop_factory(event_loop, tls=tls)
    event(logging.INFO, "event_loop", node=server.id, loop=_loop_name(factory))
    if not server.config.fsync:
        # Said at every start, at WARNING: a node that acknowledges writes it never synced
        # must not pass unnoticed in a production log.
        event(logging.WARNING, "unsafe_no_fsync", node=server.id, setting="UNSAFE_NO_FSYNC")
    frozen = gc_policy.tune_for_node()  # the state is loaded: freeze it with the modules
    thresholds = ",".join(map(str, gc_policy.THRESHOLDS))
    event(logging.INFO, "gc_tuned", node=server.id, frozen=frozen, thresholds=thresholds)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(server))
    return 1 if server.fatal_error is not None else 0


def loop_factory(choice: str, *, tls: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    """The ``EVENT_LOOP`` setting's loop. uvloop (the ``speed`` extra) runs the node's loop in C:
    the socket writes, the selector and the callbacks that are most of a node's CPU per write
    (bench/cpu_ab.py measures it). ``auto`` takes it when installed and TLS is off: the TLS
    code path (certificate reload on SIGHUP, the typed handshake refusals) is tested on the
    standard loop only; ``uvloop`` forces it, and fails loudly when it is missing."""
    if choice == "uvloop" or (choice == "auto" and not tls):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ValueError(
                    "EVENT_LOOP is 'uvloop' but uvloop is not installed: "
                    "pip install 'raftsync[speed]'"
                ) from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _loop_name(factory: Callable[[], asyncio.AbstractEventLoop]) -> str:
    return "asyncio" if factory is asyncio.new_event_loop else "uvloop"


def run(
    load: Callable[[dict[str, Any]], Resolved],
    opts: Mapping[str, Any],
    *,
    dev: bool,
    how: str = "",
) -> int:
    """Resolve the settings with ``load(flag overrides)``, build the node, serve it."""
    configure_logging()
    conf = load(setting_overrides(opts, OPTIONS))
    server = build_server(conf, opts, dev=dev, how=how)
    return serve(server, conf["EVENT_LOOP"], tls=bool(conf["TLS_CERT"]))


async def _serve(server: NodeServer) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            sig, lambda: server.spawn(server.graceful_stop(), "graceful-stop", forever=False)
        )
    # SIGHUP re-reads TLS_CERT/TLS_KEY/TLS_CA (certificate rotation without a restart); it
    # would otherwise kill the node, which no operator sending it means.
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    await server.run()


def configure_logging() -> None:
    """One line per event on stderr (``event=... key=value``), unless the host configured it."""
    logger = logging.getLogger("raft_node")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
