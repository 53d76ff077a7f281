"""The layout holds: the core imports no front-end or tooling, and no module imports in a circle."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import bot
from bot.ops.metrics import ERROR_KINDS, error_kind

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs", "bench", "testing")
CORE = (
    "bot.engine", "bot.model.bundle", "bot.model.embedded", "bot.settings.store",
    "bot.settings.transfer", "bot.settings.ask_log", "bot.asks", "bot.app", "bot.console",
    "bot.cli", "bot.conversation", "bot.settings.turns", "bot.turns",
)
FORBIDDEN = ("discord", "cogs", "bench", "testing", "aiohttp", "ctranslate2")


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


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:` (no run-time edge)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    lines.add(sub.lineno)
    return lines


def _edges(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `module` imports at run time, at any depth (lazy imports count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in typing_only:
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
    """Error kinds come from layer packages; a module outside every layer is "other"."""
    layers = {"engine", "model", "settings", "discord", "ops"}
    for info in pkgutil.walk_packages(bot.__path__, "bot."):
        kind = error_kind(info.name)
        assert kind in ERROR_KINDS
        layer = info.name.split(".")[1]
        if layer in layers:
            assert kind == layer, info.name
    assert error_kind("cogs.knobs") == "command"
    assert error_kind("discord.gateway") == "discord"


def test_tooling_is_not_in_the_installed_package() -> None:
    shipped = {info.name for info in pkgutil.walk_packages(bot.__path__, "bot.")}
    assert not [m for m in shipped if "fake" in m or "bench" in m or "harness" in m]
