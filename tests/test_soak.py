"""The soak run, short: bench/soak.py with 100 connections for about 5 seconds, the
server in a process of its own, and 4 roomcast.client listeners whose connections the
soak cuts every 2 s. Only correctness is asserted, never speed or memory."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def load_soak() -> Any:
    spec = importlib.util.spec_from_file_location("roomcast_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(150)
def test_short_soak_loses_nothing_and_leaks_no_task() -> None:
    result = subprocess.run(
        [sys.executable, str(SOAK), "--connections", "100", "--duration", "5", "--quiet",
         "--json", "--listeners", "4", "--cut-every", "2"],
        capture_output=True, text=True, timeout=140, check=False,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.strip(), output
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["delivered_stable"] > 0, output
    assert report["churn_connections"] > 0, output
    assert report["stable_held"] == report["stable_clients"], output
    assert report["lost"] == 0, output
    assert report["duplicates"] == 0, output
    assert report["order_violations"] == 0, output
    assert report["stray"] == 0, output
    assert report["phantom"] == 0, output
    assert report["partial_fan_out"] == 0, output
    assert report["error_replies"] == 0, output
    assert report["unexpected_closes"] == 0, output
    assert report["timeouts"] == 0, output
    assert report["anomalies"] == 0, output
    assert report["backend_errors"] == 0, output
    assert report["tasks_after"] == report["tasks_before"], output
    assert report["server_connections_after"] == 0, output
    assert report["server_rooms_after"] == 0, output
    assert report["server_log_problems"] == 0, output
    assert report["server_exit_code"] == 0, output

    # roomcast.client across cut connections: every frame of its rooms (and of its
    # personal room) once, in order, recovered from where it was; the cuts happened.
    assert report["listeners"] == 4, output
    assert report["listener_failures"] == 0, output
    assert report["listener_cuts"] >= 1, output
    assert report["listener_reconnects_min"] >= 1, output
    # After every cut every listener was back: each of its rooms answered the rejoin.
    assert report["listener_back"] == report["listeners"] * report["listener_cuts"], output
    assert report["listener_recoveries"] >= report["listener_reconnects"], output
    assert report["listener_delivered"] > 0, output
    assert report["listener_lost"] == 0, output
    assert report["listener_duplicates"] == 0, output
    assert report["listener_order_violations"] == 0, output
    assert report["listener_stray"] == 0, output
    assert report["listener_phantom"] == 0, output
    # The rooms' history (10 s, 100 frames) covers a cut (about a second away, a handful
    # of frames per room): here a rejoin that could not recover is a failure.
    assert report["listener_unrecovered"] == 0, output
    assert report["listener_error_replies"] == 0, output
    assert report["listener_anomalies"] == 0, output
    assert report["listener_timeouts"] == 0, output
    assert result.returncode == 0, output


# The checker itself: fed frames by hand, it must see what it is there to see. --------


def frame(sender: str, seq: int, room: str | None = "soak-0", kind: str = "room_message") -> bytes:
    body = {"s": sender, "q": seq}
    data = {"from_user_id": 1, "payload": body} if sender != "B" else body
    return json.dumps({"type": kind, "message": "m", "data": data, "room": room}).encode()


def checker(strict: bool) -> tuple[Any, Any, Any]:
    soak_module = load_soak()
    args = soak_module.parse_args(["--connections", "10"])
    soak = soak_module.Soak(args)
    conn = soak_module.Conn(soak, "s0", 1, strict=strict)
    conn.rooms["soak-0"] = "in"
    soak.stable.append(conn)
    return soak_module, soak, conn


def test_checker_counts_holes_late_frames_and_duplicates() -> None:
    _, soak, conn = checker(strict=True)
    for seq in (0, 1, 3, 2, 3, 5):  # 2 late, 3 twice, 4 never
        conn._on_text(frame("s9", seq))
    assert soak.t["order_violations"] == 1
    assert soak.t["duplicates"] == 1
    assert conn.holes() == 1  # seq 4


def test_checker_wants_every_frame_sent_to_a_stable_client() -> None:
    _, soak, conn = checker(strict=True)
    for seq in (1, 2):  # 0 never came, and 3 (the last one sent) neither
        conn._on_text(frame("s9", seq))
    conn._on_text(frame("B", 0, room=None, kind="broadcast"))
    soak.sent[("s9", "soak-0")] = 4
    soak._check_stable({"user": {"1": 1}, "room": {"soak-0": 0}, "broadcast": 2, "errors": 0})
    # s9: 0 and 3; broadcast: 1; notify_user: 0
    assert soak.t["lost"] == 4
    assert soak.t["phantom"] == 0


def test_checker_counts_holes_only_for_churn_and_strays_after_leaving() -> None:
    _, soak, conn = checker(strict=False)
    for seq in (7, 8, 10):  # joined late: 0..6 are not owed, 9 is
        conn._on_text(frame("s9", seq))
    assert conn.holes() == 1
    del conn.rooms["soak-0"]  # the leave reply came
    conn._on_text(frame("s9", 11))
    assert soak.t["stray"] == 1


def test_checker_parses_masked_client_frames_back() -> None:
    soak_module, _, _ = checker(strict=True)
    payload = b'{"type": "text", "data": "x"}' * 10
    data = soak_module.client_frame(0x1, payload)
    assert data[0] == 0x81 and data[1] == 0x80 | 126
    length = int.from_bytes(data[2:4], "big")
    key, masked = data[4:8], data[8:]
    assert length == len(payload) == len(masked)
    assert bytes(b ^ key[i % 4] for i, b in enumerate(masked)) == payload
    assert isinstance(soak_module.parse_args([]), argparse.Namespace)


def test_listener_check_counts_what_a_failed_recovery_announced_apart() -> None:
    soak_module, soak, _ = checker(strict=True)
    listener = soak_module.Listener(soak, 0, ["soak-0", "soak-1"])
    listener.joined = True
    soak.listeners.append(listener)
    from roomcast.client import Reconnecting, Recovery

    listener.on_event(Recovery("soak-1", False, "too_old", 0))  # before any drop: not counted
    assert not listener.unrecovered
    listener.on_event(Reconnecting(1006, "", 0.1, 1))
    listener.on_event(Recovery("soak-0", True, None, 2))
    listener.on_event(Recovery("soak-1", False, "too_old", 0))
    assert (listener.reconnects, listener.recoveries, listener.missed) == (1, 1, 2)
    for seq in (0, 1, 1, 3):  # soak-0: 1 twice, 2 never
        listener.check.observe(("s9", "soak-0"), seq)
    for seq in (0, 4):  # soak-1: 1..3 gone, as the client said
        listener.check.observe(("s9", "soak-1"), seq)
    soak.sent[("s9", "soak-0")] = 4
    soak.sent[("s9", "soak-1")] = 5
    soak._check_stable({"user": {}, "room": {}, "broadcast": 0, "errors": 0})
    assert soak.t["listener_duplicates"] == 1
    assert soak.t["listener_lost"] == 1  # soak-0's 2: silent, a failure
    assert soak.t["listener_unrecovered_lost"] == 3  # soak-1's 1..3: announced
    report = soak.listener_report(1.0, 0)
    assert report["listener_unrecovered"] == 1
    assert report["listener_unrecovered_reasons"] == {"too_old": 1}
