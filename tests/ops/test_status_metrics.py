"""/status and /metrics: what an operator sees of a bot that has been answering asks.

In-process, through `running_bot`: the metrics are attached to the running bot the
way `setup_hook` attaches them when `BOT_METRICS_PORT` is set, then scraped over
HTTP on 127.0.0.1 as Prometheus would.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.discord.client import attach_metrics
from bot.ops.metrics import Metrics, MetricsServer
from testing.discord_harness import Harness, running_bot
from testing.fake_discord import Routes

MANAGE_GUILD = str(discord.Permissions(manage_guild=True).value)
LONG_REPLY = " ".join(f"w{i}" for i in range(150))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: MetricsServer) -> Samples:
    with urllib.request.urlopen(server.url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def bot_with_metrics(
    tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[Harness, MetricsServer]]:
    # Scripted output streams for ~1 s, long enough to be seen in progress.
    async with running_bot(tiny_model_dir, tmp_path, scripted=LONG_REPLY,
                           script_delay=0.004) as h:
        metrics = Metrics(process_metrics=False)
        detach = attach_metrics(h.bot, metrics)
        server = metrics.start_server(0)
        try:
            yield h, server
        finally:
            server.close()
            detach()


async def test_metrics_count_asks_tokens_latency_and_rate_limits(
    bot_with_metrics: tuple[Harness, MetricsServer],
) -> None:
    h, server = bot_with_metrics
    idle = scrape(server)
    assert value(idle, "llamacord_queue_depth") == 0
    assert value(idle, "llamacord_active_replies") == 0

    # One edit answered 429: discord.py waits and retries, and the metric sees it.
    h.fake.fail_next(Routes.EDIT_ORIGINAL, 429, retry_after=0.05)
    first = await h.command("ask", {"prompt": "count"})
    await first.wait_original(lambda m: "w5" in m.content, timeout=10)
    during = scrape(server)
    assert value(during, "llamacord_active_replies") == 1
    await h.finished(first)
    await h.ask("again", max_new_tokens=5)

    refused = await h.command("ask", {"prompt": "hi", "min_new_tokens": 9,
                                      "max_new_tokens": 3})
    resp = await refused.wait_response()
    assert "cannot be above" in resp.data["content"] and resp.data["flags"] & 64

    # The fake shows the final edit before the bot has its response and counts the
    # ask: wait until the runner has let go of every reply.
    await h.fake.wait_for(lambda: not h.bot.runner.active or None)
    s = scrape(server)
    assert value(s, "llamacord_asks_total", outcome="ok") == 2
    assert value(s, "llamacord_asks_total", outcome="refused") == 1
    assert value(s, "llamacord_asks_total", outcome="error") == 0
    finished = {dict(k[1])["finish_reason"]: v for k, v in s.items()
                if k[0] == "llamacord_generations_total"}
    assert sum(finished.values()) == 2 and finished["max_tokens"] >= 1
    assert value(s, "llamacord_tokens_generated_total") == h.app.engine.tokens_generated > 5
    assert value(s, "llamacord_time_to_first_token_seconds_count") == 2
    assert value(s, "llamacord_decode_tokens_per_second_count") == 2
    assert value(s, "llamacord_discord_http_429_total") == 1
    assert value(s, "llamacord_active_replies") == 0
    assert value(s, "llamacord_queue_depth") == 0
    assert not [k for k in s if k[0] == "llamacord_errors_total"]  # nothing went wrong


async def test_status_shows_model_device_queue_uptime_to_managers_only(
    bot_with_metrics: tuple[Harness, MetricsServer],
) -> None:
    h, server = bot_with_metrics
    await h.ask("warm up", max_new_tokens=5)

    itx = await h.command("status", permissions=MANAGE_GUILD)
    resp = await itx.wait_response()
    assert resp.type == 4 and resp.data["flags"] & 64
    embed = resp.data["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Model"] == f"`{h.app.models.default}` (default)"  # as /model list names it
    assert fields["Tokens generated"] == f"{h.app.engine.tokens_generated:,}"
    assert fields["Device"].startswith("cpu")
    assert fields["Queue"].startswith("0 waiting")
    assert "h " in fields["Uptime"] and fields["Uptime"].endswith("s")
    assert "tok/s" in fields["Recent speed"]

    refused = await h.command("status")
    resp = await refused.wait_response()
    assert "Manage Server" in resp.data["content"]
    assert resp.data["flags"] & 64 and not resp.data.get("embeds")
    # A refused /status is not a refused ask.
    assert value(scrape(server), "llamacord_asks_total", outcome="refused") == 0
