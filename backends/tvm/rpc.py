"""Tuning measurements over TVM's RPC tracker: a MetaSchedule RPCRunner, and a loopback cluster for tests.

Start a tracker and servers on the machines that should measure:

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key zen4     # on each measuring machine

then `compile(graph, tune=..., runner=rpc_runner("HOST:9190", "zen4"))`, or
`bench/bench_tvm.py --rpc-tracker HOST:9190 --rpc-key zen4`. Candidates are built
locally and uploaded; the servers must match the target (same CPU).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from tvm import rpc
from tvm.s_tir import meta_schedule as ms

from graphopt.errors import GraphoptError


def parse_tracker(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise GraphoptError(f"RPC tracker address must be HOST:PORT, not {address!r}")
    return host, int(port)


def servers_for(tracker: str, key: str) -> int:
    """How many servers are registered with the tracker under `key` (free or busy)."""
    host, port = parse_tracker(tracker)
    # connect_tracker retries for 60 s; a closed port should fail now.
    socket.create_connection((host, port), timeout=5).close()
    summary = rpc.connect_tracker(host, port).summary()
    for item in summary.get("queue_info", {}).items():
        name, info = item
        if name == key:
            return int(info.get("free", 0)) + int(info.get("pending", 0))
    return sum(1 for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key)


def rpc_runner(tracker: str, key: str, *, max_workers: int | None = None, session_timeout: int = 60,
               evaluator: Any = None) -> ms.runner.RPCRunner:
    """A MetaSchedule runner measuring on the servers registered under `key` at `tracker`.

    One measuring worker per registered server unless `max_workers` says otherwise: a candidate
    runs on one server at a time, so more workers than servers only queue.
    """
    from graphopt.backends.tvm.tuning import make_evaluator

    host, port = parse_tracker(tracker)
    try:
        count = servers_for(tracker, key)
    except Exception as exc:
        raise GraphoptError(f"cannot reach the RPC tracker at {tracker}: {exc}") from exc
    if count == 0:
        raise GraphoptError(f"no RPC server is registered under key {key!r} at tracker {tracker}; start one with "
                            f"`python -m tvm.exec.rpc_server --tracker {tracker} --key {key}`")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=session_timeout)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator or make_evaluator(),
                               max_workers=max_workers or count)


class LocalCluster:
    """A tracker and `servers` RPC servers on 127.0.0.1, each in its own process; stopped on exit.

        with LocalCluster(servers=2, key="test") as cluster:
            runner = rpc_runner(cluster.tracker_address, "test")
    """

    def __init__(self, servers: int = 2, key: str = "graphopt-local", *, timeout: float = 30.0) -> None:
        self.key = key
        self.count = servers
        self.timeout = timeout
        self.tracker = None
        self.servers: list = []

    @property
    def tracker_address(self) -> str:
        return f"127.0.0.1:{self.tracker.port}"

    def __enter__(self) -> LocalCluster:
        from tvm.rpc.tracker import (
            Tracker,  # needs tornado, which only the tracker side uses
        )

        try:
            self.tracker = Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
            for _ in range(self.count):
                self.servers.append(rpc.Server(host="127.0.0.1", port=9300, port_end=9400, key=self.key,
                                               tracker_addr=("127.0.0.1", self.tracker.port), silent=True))
            deadline = time.monotonic() + self.timeout
            while servers_for(self.tracker_address, self.key) < self.count:
                if time.monotonic() > deadline:
                    raise GraphoptError(f"{self.count} RPC servers did not register within {self.timeout:.0f} s")
                time.sleep(0.2)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for server in self.servers:
            try:
                server.terminate()
            except Exception:  # noqa: BLE001 - best effort: the process may already be gone
                pass
        self.servers = []
        if self.tracker is not None:
            try:
                self.tracker.terminate()
            except Exception:  # noqa: BLE001
                pass
            self.tracker = None
