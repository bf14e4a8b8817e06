"""The relay benchmark's report says which resource limits a run and where the server's time
goes (issue 8: the table shows how far each target is and what blocks it). These check that
reading of the figures, not any speed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("relay_bench", Path(__file__).resolve().parent.parent / "bench" / "relay_bench.py")
relay_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(relay_bench)

ROW = {"config": "closed-1000", "profile": "production (PostgreSQL + Redis)", "cpu_us_per_msg": 113.0,
       "server_cpu_pct": 77.0, "driver_cpu_pct": 63.0, "pg_cpu_pct": 32.0, "redis_cpu_pct": 2.0}


def test_a_full_driver_core_is_named_with_what_shares_it():
    text = relay_bench.what_blocks({**ROW, "core0_busy_pct": 78.0, "core1_busy_pct": 99.0}, pinned=True)
    assert text.startswith("core 1 is full (99 % busy")
    assert "the driver 63 %" in text and "PostgreSQL 32 %" in text and "Redis 2 %" in text
    assert "core 0, the server's, is 78 % busy" in text


def test_a_full_server_core_is_named_with_its_cost_per_envelope():
    text = relay_bench.what_blocks({**ROW, "core0_busy_pct": 97.0, "core1_busy_pct": 60.0}, pinned=True)
    assert text.startswith("core 0 is full (97 % busy")
    assert "113 µs of CPU per envelope is the limit" in text


def test_neither_core_full_means_the_loop_waits_on_latency():
    text = relay_bench.what_blocks({**ROW, "core0_busy_pct": 50.0, "core1_busy_pct": 40.0}, pinned=True)
    assert text.startswith("neither core is full")


@pytest.mark.parametrize("row", [{**ROW, "core0_busy_pct": 99.0, "core1_busy_pct": 99.0}])
def test_without_pinning_no_core_is_blamed(row):
    text = relay_bench.what_blocks(row, pinned=False)
    assert text.startswith("cores 99 % and 99 % busy") and "full" not in text


def test_a_py_spy_profile_is_split_by_thread_and_ranked_by_function():
    raw = "\n".join([
        "thread (1): MainThread;run (a.py:1);doRead (twisted/internet/tcp.py:10) 30",
        "thread (1): MainThread;run (a.py:1);doRead (twisted/internet/tcp.py:12) 20",
        "thread (1): MainThread;run (a.py:1);receive (messaging/consumers.py:5) 10",
        "thread (2): relay-db_0;_worker (thread.py:3);execute (psycopg/cursor.py:7) 40",
        "garbage line",
    ])
    summary = relay_bench.summarise_profile(raw, top=2)
    assert summary["samples"] == 100
    assert summary["event_loop_pct"] == 60 and summary["other_threads_pct"] == 40
    assert summary["top"] == [["doRead (twisted/internet/tcp.py)", 50.0], ["execute (psycopg/cursor.py)", 40.0]]


def test_an_open_loop_reports_its_cores_and_whether_either_is_full():
    row = {**ROW, "config": "open-1000", "core0_busy_pct": 70.0, "core1_busy_pct": 65.0}
    text = relay_bench.what_blocks(row, pinned=True)
    assert text.startswith("at this offered rate core 0 is 70 % busy") and "neither is full" in text
    text = relay_bench.what_blocks({**row, "core1_busy_pct": 96.0}, pinned=True)
    assert "core 1 full: envelopes queue for CPU" in text


def test_two_servers_on_two_cores_blame_no_single_core():
    row = {**ROW, "config": "two-proc-1000", "core0_busy_pct": 55.0, "core1_busy_pct": 100.0}
    assert relay_bench.what_blocks(row, pinned=True).startswith("cores 55 % and 100 % busy")
