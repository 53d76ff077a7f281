"""The layout holds: the core imports no front-end or tooling, and no module imports in a circle."""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bot
from bot.ops.metrics import ERROR_KINDS, error_kind

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs", "bench", "testing")
CORE = (
    "bot.engine", "bot.model.bundle", "bot.model.embedded", "bot.store.store",
    "bot.store.transfer", "bot.store.ask_log", "bot.chat.request", "bot.app", "bot.console",
    "bot.cli", "bot.chat.history", "bot.store.turns", "bot.chat.turns", "bot.console.prompt_report",
)
FORBIDDEN = ("discord", "cogs", "bench", "testing", "aiohttp", "ctranslate2")


@pytest.mark.slow
def test_the_core_imports_no_discord_no_tooling_and_no_ctranslate2_until_a_model_loads() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    loaded = set(json.loads(out.stdout))
    assert "bot" in loaded  # the probe really imported the core
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _edges(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `module` imports, at any depth.

    Lazy imports count, and so do imports under `if TYPE_CHECKING:`: a cycle that
    only the type checker sees is still two modules that cannot be read apart.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:  # the module `name` is, or lies inside
                name = name.rpartition(".")[0]
            # A package's __init__ re-exporting its own modules is not a cycle with them.
            if name and name != module and not name.startswith(module + "."):
                out.add(name)
    return out


def test_no_import_cycles_between_project_modules() -> None:
    modules = _modules()
    graph = {name: _edges(name, path, set(modules)) for name, path in modules.items()}
    assert graph["bot.discord.client"]  # the graph really holds edges
    cycles = _find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_imports_for_the_type_checker_count_as_edges(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bot.engine.engine import Engine\n",
        encoding="utf-8",
    )
    assert _edges("bot.probe", source, {"bot.probe", "bot.engine.engine"}) == {"bot.engine.engine"}


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_bot_module_logs_under_a_known_error_kind() -> None:
    """Every package of `bot` is an error kind of its own; a root module is "other"."""
    for info in pkgutil.walk_packages(bot.__path__, "bot."):
        kind = error_kind(info.name)
        assert kind in ERROR_KINDS
        layer = info.name.split(".")[1]
        packaged = info.ispkg or "." in info.name.removeprefix("bot.")
        assert kind == (layer if packaged else "other"), info.name
    assert error_kind("cogs.knobs") == "command"
    assert error_kind("discord.gateway") == "discord"


def test_tooling_is_not_in_the_installed_package() -> None:
    shipped = {info.name for info in pkgutil.walk_packages(bot.__path__, "bot.")}
    assert not [m for m in shipped if "fake" in m or "bench" in m or "harness" in m]


def test_the_installed_package_never_edits_the_import_path() -> None:
    """The bot reaches no tooling by putting the checkout on `sys.path` (it once did for
    the benches); `python -m bench` runs them from the checkout instead."""
    edits = []
    for path in (ROOT / "bot").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and (
                isinstance(node.value, ast.Name) and node.value.id == "sys"
            ):
                edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not edits, edits


@pytest.mark.slow
def test_the_benches_run_as_python_m_bench_and_bot_bench_hands_them_its_flags(
    tmp_path: Path,
) -> None:
    def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=120, check=False)

    direct = run("bench", "--help")
    assert direct.returncode == 0, direct.stderr
    for flag in ("--json", "--discord", "--soak", "--mixed", "--conversation", "--minutes",
                 "--new-tokens"):
        assert flag in direct.stdout
    via_bot = run("bot", "bench", "--help")
    assert via_bot.returncode == 0, via_bot.stderr
    assert via_bot.stdout == direct.stdout
    # Outside the checkout the benches are not there: one line says where they are.
    away = run("bot", "--env-file", "/dev/null", "bench", "--json", cwd=tmp_path)
    assert away.returncode == 2
    assert away.stderr.strip().splitlines() == [
        "error: the benchmarks live in the source checkout: run `python -m bench ...` "
        "from its root."
    ]


# ------------------------------------------------------------- the front-ends call the core

FRONT_ENDS = ("cogs", "bot/discord", "bot/console")
#: The App's stores: what a front-end reaches through `Chat` and `ScopeSettings` instead.
STORES = frozenset({"store", "ask_log", "turns", "swipes", "personas", "write_limiter"})


def _store_uses(path: Path) -> list[int]:
    """Lines taking a store from an App: `app.store`, `self.app.personas`…"""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in STORES:
            base = node.value
            named = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
            if named == "app":
                lines.append(node.lineno)
    return sorted(lines)


def test_cogs_the_discord_layer_and_the_console_reach_no_store() -> None:
    files = [p for folder in FRONT_ENDS for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 20  # the folders really were read
    uses = [f"{p.relative_to(ROOT)}:{line}" for p in files for line in _store_uses(p)]
    assert not uses, uses


def test_the_store_check_sees_a_store_taken_from_an_app(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("async def f(bot, app, view):\n"
                     "    await bot.app.store.set_knobs()\n"
                     "    s = app.personas\n"
                     "    n = view.turns\n"
                     "    m = app.scope_settings\n", encoding="utf-8")
    assert _store_uses(probe) == [2, 3]


# ------------------------------------------------------------ every sentence in bot.wording

#: Two words in a row: a sentence, a label or a phrase a member reads.
_WORDS = re.compile(r"[A-Za-z']+[,;:]? +[A-Za-z']+")


def _inline_sentences(path: Path) -> list[int]:
    """Lines with a string literal of two or more words; docstrings (an attribute's
    too: any string standing alone as a statement) and table keys
    (``wording.COMMANDS["knobs set"]``) left aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))
        if isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        if isinstance(node, ast.Call) and _for_operators(node):
            skip.update(id(inner) for inner in ast.walk(node))
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in skip and _WORDS.search(node.value))


def _for_operators(call: ast.Call) -> bool:
    """A log line, a systemd status or a programming error: text for the operator."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id in {"log", "logging", "notifier"}
    return isinstance(func, ast.Name) and func.id in {"TypeError", "RuntimeError",
                                                       "AssertionError", "ValueError"}


def test_the_front_ends_hold_no_sentence_of_their_own() -> None:
    """Cogs, the Discord layer and the console: every sentence a member reads is in
    `bot.wording` (log lines and programming errors are for the operator)."""
    files = [p for folder in ("cogs", "bot/console", "bot/discord")
             for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 25
    inline = [f"{p.relative_to(ROOT)}:{line}" for p in files for line in _inline_sentences(p)]
    assert not inline, inline


def test_the_sentence_check_finds_a_sentence_in_code(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""A docstring is not a sentence a member reads."""\n'
                     'X = {"knobs set": "Change the knobs"}\n'
                     'y = X["knobs set"]\n'
                     'ID = "llm:persona:{choice}"\n'
                     'msg = f"Set {y} for this channel."\n'
                     'log.info("reply %s ended early", 1)\n'
                     'raise TypeError("this client has no lab")\n'
                     'raise UserFacingError("Only the asker may.")\n', encoding="utf-8")
    assert _inline_sentences(probe) == [2, 2, 5, 8]


# ------------------------------------------------------------------ layers import downward

#: Each of `bot`'s packages, with the packages below it that it may import. The model
#: (files, tokenizer, template) is the bottom; the engine runs it and knows no
#: conversation, store or front-end; the store knows no conversation; the
#: conversation core and the lab know no front-end (`discord`, `console`).
LAYERS: dict[str, frozenset[str]] = {
    "bot.model": frozenset(),
    "bot.engine": frozenset({"bot.model"}),
    "bot.hosting": frozenset({"bot.engine", "bot.model"}),
    "bot.store": frozenset({"bot.hosting"}),  # a model choice's rules (`hosting.choice`)
    "bot.chat": frozenset({"bot.engine", "bot.model", "bot.store", "bot.hosting"}),
    "bot.lab": frozenset({"bot.engine", "bot.model", "bot.chat"}),
}
_BOT_PACKAGES = frozenset({"bot.engine", "bot.model", "bot.store", "bot.hosting", "bot.lab",
                           "bot.chat", "bot.discord", "bot.console", "bot.ops"})


def _package(module: str) -> str | None:
    parts = module.split(".")
    name = ".".join(parts[:2])
    return name if len(parts) > 1 and name in _BOT_PACKAGES else None


def test_the_lower_layers_import_nothing_above_them() -> None:
    modules = _modules()
    upward = []
    for name, path in modules.items():
        here = _package(name)
        if here not in LAYERS:
            continue
        for target in _edges(name, path, set(modules)):
            there = _package(target)
            if there is not None and there != here and there not in LAYERS[here]:
                upward.append(f"{name} → {target}")
    assert not upward, upward
