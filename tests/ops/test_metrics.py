"""Metrics: what a Prometheus scrape of 127.0.0.1 sees after the bot reports events."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.metrics import Metrics, MetricsServer


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
           name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    srv = metrics.start_server(0)  # the OS picks a free port: tests never collide
    try:
        yield srv
    finally:
        srv.close()


@dataclass(frozen=True)
class _Result:
    ttft_s: float | None
    decode_tok_s: float | None
    new_tokens: int
    finish_reason: str


def test_scrape_shows_what_happened(metrics: Metrics, server: MetricsServer) -> None:
    assert server.host == "127.0.0.1"
    metrics.observe_result(ttft_s=0.3, decode_tok_s=42.0, new_tokens=100, finish_reason="end")
    metrics.observe(_Result(ttft_s=1.2, decode_tok_s=12.5, new_tokens=20,
                            finish_reason="max_tokens"))
    metrics.observe_result(ttft_s=None, decode_tok_s=None, new_tokens=0,
                           finish_reason="cancelled")
    metrics.ask("ok")
    metrics.ask("ok")
    metrics.ask("rejected")
    metrics.error("engine")
    metrics.rate_limited()
    metrics.rate_limited()
    depth = [3]
    active = [2]
    metrics.queue_depth_from(lambda: depth[0])
    metrics.active_replies_from(lambda: active[0])
    during = _scrape(server.url)
    active[0] = 0

    s = _scrape(server.url)
    assert _value(during, "llamacord_active_replies") == 2
    assert _value(s, "llamacord_active_replies") == 0
    assert _value(s, "llamacord_asks_total", outcome="ok") == 2
    assert _value(s, "llamacord_asks_total", outcome="rejected") == 1
    assert _value(s, "llamacord_tokens_generated_total") == 120
    assert _value(s, "llamacord_errors_total", kind="engine") == 1
    assert _value(s, "llamacord_discord_http_429_total") == 2
    assert _value(s, "llamacord_queue_depth") == 3
    assert _value(s, "llamacord_generations_total", finish_reason="end") == 1
    assert _value(s, "llamacord_generations_total", finish_reason="cancelled") == 1
    assert _value(s, "llamacord_generations_total", finish_reason="error") == 0  # pre-created

    # The cancelled reply produced no token: it must not drag the latency histograms.
    assert _value(s, "llamacord_time_to_first_token_seconds_count") == 2
    assert _value(s, "llamacord_time_to_first_token_seconds_sum") == pytest.approx(1.5)
    assert _value(s, "llamacord_time_to_first_token_seconds_bucket", le="0.35") == 1
    assert _value(s, "llamacord_time_to_first_token_seconds_bucket", le="1.5") == 2
    assert _value(s, "llamacord_decode_tokens_per_second_count") == 2
    assert _value(s, "llamacord_decode_tokens_per_second_bucket", le="15.0") == 1
    assert _value(s, "llamacord_decode_tokens_per_second_bucket", le="+Inf") == 2


def test_queue_depth_callback_is_read_at_scrape_time(
    metrics: Metrics, server: MetricsServer
) -> None:
    waiting = [1, 2, 3, 4, 5]
    metrics.queue_depth_from(lambda: len(waiting))
    assert _value(_scrape(server.url), "llamacord_queue_depth") == 5
    waiting.clear()
    assert _value(_scrape(server.url), "llamacord_queue_depth") == 0


def test_registries_are_independent() -> None:
    """No global registry: two Metrics (two tests, a bench beside the bot) coexist."""
    a, b = Metrics(), Metrics(process_metrics=False)
    a.ask("ok")
    assert b'llamacord_asks_total{outcome="ok"} 1.0' in a.render()
    assert b"llamacord_asks_total{" not in b.render()
    assert b"process_" not in b.render()


def test_close_frees_the_port(metrics: Metrics) -> None:
    srv = metrics.start_server(0)
    port = srv.port
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    # The same port can be bound again at once (restart without "address in use").
    with Metrics().start_server(port) as again:
        assert _value(_scrape(again.url), "llamacord_queue_depth") == 0
