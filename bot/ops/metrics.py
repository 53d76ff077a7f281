"""Prometheus metrics: how fast the model answers, how busy the bot is, what goes wrong.

Metrics live on a `CollectorRegistry` owned by one `Metrics` object, not the global
one: importing this module changes nothing, and tests can build as many as they like.
The endpoint binds to 127.0.0.1 by default (docs/deploy.md). Names carry the
`llamacord_` prefix; label values come from small fixed sets, never user input, or
every distinct value becomes a new time series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

NAMESPACE: Final = "llamacord"

#: Time to first token: tens of milliseconds on an idle H100, seconds when the queue
#: is long or the prompt is big, tens of seconds when something is wrong.
TTFT_BUCKETS: Final = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
#: Decode speed per reply: ~5 tok/s for a 7-8B model on CPU up to ~150 tok/s for one
#: stream on a fast GPU; the top buckets catch tiny models.
DECODE_RATE_BUCKETS: Final = (1, 2.5, 5, 10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500, 1000)

#: Finish reasons the engine reports (bot.engine.FinishReason), pre-created at zero so
#: a rate() over them works before the first occurrence.
FINISH_REASONS: Final = ("end", "max_tokens", "stop_sequence", "cancelled", "error")


class GenerationOutcome(Protocol):
    """What `Metrics.observe` reads from a result (bot.engine.GenerationResult fits)."""

    @property
    def ttft_s(self) -> float | None: ...
    @property
    def decode_tok_s(self) -> float | None: ...
    @property
    def new_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str: ...


class MetricsServer:
    """The running /metrics HTTP endpoint; `close()` (or `with`) stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the listening socket and wait for the thread (idempotent)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Metrics:
    """The bot's metrics on their own registry, with one method per thing that happens."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        """`process_metrics` adds process_* (RSS, CPU, open fds), python_info and GC stats."""
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.asks = Counter(
            "asks", "Asks, by outcome: ok, cancelled, error, or refused before any reply.",
            ["outcome"], namespace=NAMESPACE, registry=reg,
        )
        self.generations = Counter(
            "generations", "Finished generations, by the engine's finish reason.",
            ["finish_reason"], namespace=NAMESPACE, registry=reg,
        )
        self.tokens_generated = Counter(
            "tokens_generated", "New tokens decoded by the model.",
            namespace=NAMESPACE, registry=reg,
        )
        self.errors = Counter(
            "errors", "Errors by kind (engine, discord, store, ...).",
            ["kind"], namespace=NAMESPACE, registry=reg,
        )
        self.discord_http_429 = Counter(
            "discord_http_429", "Discord HTTP 429 (rate limited) responses.",
            namespace=NAMESPACE, registry=reg,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Requests waiting for a model replica.",
            namespace=NAMESPACE, registry=reg,
        )
        self.active_replies = Gauge(
            "active_replies", "Replies currently being generated or edited into Discord.",
            namespace=NAMESPACE, registry=reg,
        )
        self.ttft = Histogram(
            "time_to_first_token_seconds",
            "Time from the start of decoding (after any queue wait) to the first token.",
            namespace=NAMESPACE, registry=reg, buckets=TTFT_BUCKETS,
        )
        self.decode_rate = Histogram(
            "decode_tokens_per_second", "Decode speed of each reply after its first token.",
            namespace=NAMESPACE, registry=reg, buckets=DECODE_RATE_BUCKETS,
        )
        for reason in FINISH_REASONS:
            self.generations.labels(finish_reason=reason)
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

    # -- events --------------------------------------------------------------------

    def observe_result(
        self,
        ttft_s: float | None,
        decode_tok_s: float | None,
        new_tokens: int,
        finish_reason: str,
    ) -> None:
        """Record one finished generation.

        Latencies are None when no token came out (cancelled while queued, an error);
        those replies count in `generations` but must not pull the histograms to zero.
        """
        if ttft_s is not None and ttft_s >= 0:
            self.ttft.observe(ttft_s)
        if decode_tok_s is not None and decode_tok_s > 0:
            self.decode_rate.observe(decode_tok_s)
        if new_tokens > 0:
            self.tokens_generated.inc(new_tokens)
        self.generations.labels(finish_reason=str(finish_reason)).inc()

    def observe(self, result: GenerationOutcome) -> None:
        """`observe_result` for anything shaped like bot.engine.GenerationResult."""
        self.observe_result(result.ttft_s, result.decode_tok_s, result.new_tokens,
                            result.finish_reason)

    def ask(self, outcome: str) -> None:
        self.asks.labels(outcome=outcome).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def rate_limited(self) -> None:
        """Discord answered 429; a rising rate means edits are paced too tightly."""
        self.discord_http_429.inc()

    def queue_depth_from(self, callback: Callable[[], float]) -> None:
        """Read the queue depth at scrape time instead of pushing every change.

        Called on the HTTP server's thread, so `callback` must only read (e.g. an
        `asyncio.Queue.qsize`), never touch the event loop.
        """
        self.queue_depth.set_function(callback)

    def active_replies_from(self, callback: Callable[[], float]) -> None:
        """Read the number of replies in progress at scrape time (same rules as above).

        Counted from the owner's bookkeeping, which cannot drift as paired inc/dec can.
        """
        self.active_replies.set_function(callback)

    # -- exposition ----------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format, as /metrics would serve it (console, tests)."""
        return bytes(generate_latest(self.registry))

    def start_server(self, port: int, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve /metrics on a daemon thread; port 0 picks a free port (see `.port`)."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(server, thread)


#: discord.py's log templates for a 429 it is about to wait out and retry
#: (discord/http.py for the bot's REST calls, discord/webhook/async_.py for
#: interaction responses and follow-ups), or give up on (`max_ratelimit_timeout`).
RATE_LIMIT_TEMPLATES: Final = ("We are being rate limited.", "Webhook ID %s is rate limited.")

#: `errors_total{kind}` labels: one per layer package of the bot (`bot.<layer>.…`), plus
#: the slash-command cogs and discord.py itself; derived from package names, so moving a
#: module inside its layer cannot relabel its errors.
LAYER_KINDS: Final = ("engine", "model", "hosting", "store", "chat", "lab", "discord",
                      "console", "ops")
ERROR_KINDS: Final = (*LAYER_KINDS, "command", "other")


class LogCounter(logging.Handler):
    """Counts what only the log reports: Discord 429s and errors anywhere in the process.

    discord.py waits out a 429 inside its HTTP client; its only trace is a WARNING on
    the `discord.http` / `discord.webhook` loggers, matched here by message template
    (the formatted text holds URLs). ERROR records are counted by the subsystem that
    logged them. Attached to the root logger; it never formats or prints.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(level=logging.WARNING)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        try:
            template = str(record.msg)
            if record.levelno == logging.WARNING and record.name.startswith("discord"):
                if template.startswith(RATE_LIMIT_TEMPLATES):
                    self.metrics.rate_limited()
                return
            if record.levelno >= logging.ERROR:
                self.metrics.error(error_kind(record.name))
        except Exception:  # a metrics failure must never break logging
            self.handleError(record)


def error_kind(logger_name: str) -> str:
    """A small fixed label set for `errors_total`, from the name of the logger.

    Loggers are named after modules (`logging.getLogger(__name__)`): `bot.engine.engine`
    counts as "engine", `cogs.knobs` as "command", `discord.gateway` as "discord".
    Top-level modules of `bot` (app, asks, cli, console) count as "other".
    """
    parts = logger_name.split(".")
    if parts[0] == "bot" and len(parts) > 1 and parts[1] in LAYER_KINDS:
        return parts[1]
    if parts[0] == "cogs":
        return "command"
    if parts[0] == "discord":
        return "discord"
    return "other"
