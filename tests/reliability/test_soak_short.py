"""The soak in short (bench/soak.py runs the full one): 200 authenticated sockets for 20 s while
50 envelopes per second flow — no unexpected close, nothing lost, p95 relay latency under
250 ms, server RSS growth under 10 % after warm-up."""

from __future__ import annotations

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.live


async def test_short_soak(live_server_factory):
    server = live_server_factory({"ENIGMO_LOG_LEVEL": "WARNING"})
    result = await run_soak(sockets=200, seconds=20, rate=50, warmup=5, server=server)
    assert result["sent"] >= 900 and result["answered"] == result["sent"] and result["errors"] == 0, result
    assert result["unexpected_closes"] == 0, result
    assert result["lost"] == 0, result
    assert result["p95_ms"] < 250, result
    assert result["rss_growth_pct"] < 10, result
