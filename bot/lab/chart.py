"""The probabilities chart: raw, after-temperature and final bars; each knob's cut marked.

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
TEMPERED_COLOUR = "#5b8fd4"
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


def _cut_name(stage: str, step: ProbsStep) -> str:
    """The knob behind a cut, with its value (the engine's own bound has no knob)."""
    knobs = step.knobs
    if stage == "top_k":
        return f"top_k={knobs.top_k} cut"
    if stage == "top_p":
        return f"top_p={knobs.top_p:g} cut"
    if stage == "min_new_tokens":
        return f"min_new_tokens={knobs.min_new_tokens} holds the end back"
    return "the engine's candidate bound"


def cut_lines(step: ProbsStep) -> list[tuple[float, str]]:
    """Where each knob's cut begins among the candidates (by raw probability), named."""
    cands = step.candidates
    seen: set[str] = set()
    out: list[tuple[float, str]] = []
    for y in range(1, len(cands)):
        stage = cands[y].removed_by
        if stage is not None and stage != cands[y - 1].removed_by and stage not in seen:
            seen.add(stage)
            out.append((y - 0.5, _cut_name(stage, step)))
    return out


def idle_knobs(step: ProbsStep) -> list[str]:
    """Knobs set to act that have nothing to act on at this step, in words."""
    knobs = step.knobs
    notes = []
    if knobs.repetition_penalty > 0 and not step.generated:
        notes.append(f"repetition_penalty={knobs.repetition_penalty:g} has nothing to act on "
                     "yet: it only penalises tokens the reply already used")
    if step.sampling.get("sampling_topk") == 1 and knobs.temperature != 1:
        notes.append(f"temperature={knobs.temperature:g} changes nothing: these knobs "
                     "decode greedily")
    return notes


def _tail(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def render_png(step: ProbsStep, *, dpi: int = 100, prompt: str = "",
               so_far: str = "") -> bytes:
    """The chart of one step as PNG bytes.

    Three bars per token (raw, after temperature, final), a labelled line where
    each knob cuts, the axis to 100 % with each bar's value, the prompt's last
    words and the reply so far in the title, and a note for a knob that has
    nothing to act on at this step.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cands = list(step.candidates)
    n = len(cands)
    notes = idle_knobs(step)
    fig = Figure(figsize=(9.0, 2.2 + 0.5 * n + 0.2 * len(notes)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(n))
    removed = [c.removed_by is not None for c in cands]
    h = 0.27
    series = (
        ([c.raw * 100 for c in cands], -h, "raw (softmax of the logits)", RAW_COLOUR),
        ([c.tempered * 100 for c in cands], 0.0,
         f"after temperature={step.knobs.temperature:g}", TEMPERED_COLOUR),
        ([c.final * 100 for c in cands], h, "final (after every knob)", FINAL_COLOUR),
    )
    for values, offset, label, colour in series:
        colours = [REMOVED_COLOUR if r and colour != FINAL_COLOUR else colour
                   for r in removed]
        ax.barh([y + offset for y in ys], values, height=h, label=label, color=colours)
        for y, v in zip(ys, values, strict=True):
            if v >= 0.05:
                ax.text(v + 0.8, y + offset, f"{v:.1f}%", va="center", fontsize=7,
                        color="#333333")
    labels = [chart_label(c.text) + (f"  ✕ {c.removed_by}" if c.removed_by else "")
              for c in cands]
    ax.set_yticks(ys, labels=labels, fontsize=9)
    for tick, r in zip(ax.get_yticklabels(), removed, strict=True):
        if r:
            tick.set_color("#888888")
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    for at, name in cut_lines(step):
        ax.axhline(at, color=CUT_COLOUR, linestyle="--", linewidth=1)
        ax.text(99, at - 0.05, name, ha="right", color=CUT_COLOUR, va="bottom", fontsize=8)
    ax.set_xlabel("probability (%)")
    mode = "text" if step.raw_text else "prompt"
    context = f"{mode}: {_tail(prompt, 60)!s}" if prompt else ""
    if step.generated:
        context += f"  ·  so far: {_tail(so_far, 50)}"
    title = (f"Next token {step.step + 1} · temperature={step.knobs.temperature:g}, "
             f"top_p={step.knobs.top_p:g}, top_k={step.knobs.top_k}, "
             f"repetition_penalty={step.knobs.repetition_penalty:g}")
    if context:
        title += "\n" + chart_label_line(context)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    note = (f"{step.kept} tokens kept · {step.left_out * 100:.1f}% of the model's probability "
            f"left out · greedy: {chart_label(step.greedy.text)}")
    if step.sample is not None:
        note += f" · sample (seed {step.seed}): {chart_label(step.sample.text)}"
    lines = [note, *(f"note: {chart_label_line(n)}" for n in notes)]
    fig.text(0.01, 0.1 / fig.get_size_inches()[1], "\n".join(lines), fontsize=8,
             color="#444444")
    # Fixed margins from the label lengths: `tight_layout` measures every artist and
    # cost as much as drawing the chart.
    width_in, height_in = fig.get_size_inches()
    label_in = 0.2 + 0.075 * max([len(t) for t in labels] + [4])
    fig.subplots_adjust(left=min(0.5, label_in / width_in), right=0.97,
                        top=1 - 0.75 / height_in,
                        bottom=(0.75 + 0.15 * len(notes)) / height_in)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 3})
    data = buf.getvalue()
    if len(data) > MAX_PNG_BYTES:  # cannot happen at these sizes; refuse rather than fail to send
        raise ValueError(f"chart of {len(data)} bytes is over the attachment limit")
    return data


def chart_label_line(text: str) -> str:
    """A line of text with characters the chart font lacks written as \\uXXXX."""
    known = _charmap()
    return "".join(ch if ord(ch) in known else f"\\u{ord(ch):04x}" for ch in text)
