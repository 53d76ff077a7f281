"""The probabilities chart: bars raw vs after the knobs, removed tokens greyed, cut-offs marked.

Rendered with matplotlib's object API on the Agg canvas (no pyplot, no global
figure state), so it is safe on a worker thread; callers run it off the event
loop (`asyncio.to_thread(render_png, step)`). matplotlib is imported inside the
function: importing the lab costs nothing until a chart is drawn.
"""

from __future__ import annotations

import io
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.lab.probs import ProbsStep

#: Discord's attachment limit for bots without boosts; a chart is far below it.
MAX_PNG_BYTES = 8 * 1024 * 1024
RAW_COLOUR = "#9db4d6"
FINAL_COLOUR = "#1f5fbf"
REMOVED_COLOUR = "#c8c8c8"
CUT_COLOUR = "#d0342c"


@cache
def _charmap() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont("DejaVu Sans")).get_charmap())


def chart_label(text: str) -> str:
    """A token's label with characters the chart font lacks written as \\uXXXX (no tofu)."""
    known = _charmap()
    out = []
    for ch in text:
        out.append(ch if ord(ch) in known else f"\\u{ord(ch):04x}")
    label = "".join(out)
    return label if len(label) <= 28 else label[:27] + "…"


def render_png(step: ProbsStep, *, dpi: int = 100) -> bytes:
    """The chart of one step as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cands = list(step.candidates)
    n = len(cands)
    fig = Figure(figsize=(8.0, 1.6 + 0.34 * n), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(n))
    raw = [c.raw * 100 for c in cands]
    final = [c.final * 100 for c in cands]
    removed = [c.removed_by is not None for c in cands]
    h = 0.38
    ax.barh([y - h / 2 for y in ys], raw, height=h, label="raw (softmax of the logits)",
            color=[REMOVED_COLOUR if r else RAW_COLOUR for r in removed])
    ax.barh([y + h / 2 for y in ys], final, height=h, label="after the knobs",
            color=FINAL_COLOUR)
    labels = [chart_label(c.text) + (f"  ({c.removed_by})" if c.removed_by else "")
              for c in cands]
    ax.set_yticks(ys, labels=labels, fontsize=9)
    for tick, r in zip(ax.get_yticklabels(), removed, strict=True):
        if r:
            tick.set_color("#888888")
    ax.invert_yaxis()
    top = max([*raw, *final, 1.0])
    ax.set_xlim(0, top * 1.3)
    # Cut-offs: where the kept tokens end, in the list's order (by raw probability).
    hidden = step.kept - sum(1 for r in removed if not r)
    for y in range(1, n):
        if removed[y] and not removed[y - 1]:
            ax.axhline(y - 0.5, color=CUT_COLOUR, linestyle="--", linewidth=1)
            more = f"{hidden} more kept tokens not shown · " if hidden > 0 else ""
            ax.text(top * 1.28, y - 0.55, f"{more}{cands[y].removed_by} cut", ha="right",
                    color=CUT_COLOUR, va="bottom", fontsize=8)
    ax.set_xlabel("probability (%)")
    title = f"Next token {step.step + 1}: " + ", ".join(
        f"{k}={getattr(step.knobs, k):g}" for k in ("temperature", "top_p")
    ) + f", top_k={step.knobs.top_k}, repetition_penalty={step.knobs.repetition_penalty:g}"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    note = (f"{step.kept} tokens kept · {step.left_out * 100:.1f}% of the model's probability "
            f"left out · greedy: {chart_label(step.greedy.text)}")
    if step.sample is not None:
        note += f" · sample (seed {step.seed}): {chart_label(step.sample.text)}"
    fig.text(0.01, 0.12 / fig.get_size_inches()[1], note, fontsize=8, color="#444444")
    # Fixed margins from the label lengths: `tight_layout` measures every artist and
    # cost as much as drawing the chart.
    width_in, height_in = fig.get_size_inches()
    label_in = 0.2 + 0.075 * max([len(t) for t in labels] + [4])
    fig.subplots_adjust(left=min(0.5, label_in / width_in), right=0.97,
                        top=1 - 0.45 / height_in, bottom=0.75 / height_in)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 3})
    data = buf.getvalue()
    if len(data) > MAX_PNG_BYTES:  # cannot happen at these sizes; refuse rather than fail to send
        raise ValueError(f"chart of {len(data)} bytes is over the attachment limit")
    return data
