"""Text files as context: which attachments are read, and how the model reads them.

A member attaches a log, some code or notes to an ask; the model gets each file
as a fenced block under its name, after the question. Everything about a file is
someone else's input: the name is flattened to one short line, the body must be
UTF-8 text (binary files and invalid UTF-8 get a one-line note, never a failure),
and size and count are capped before anything is downloaded. The body is plain
text to the tokenizer like any user text (a ``<|im_start|>`` inside a file stays
characters). No Discord here: the Discord front-end, the console and the CLI
all read files through `admit`, `decode` and `fit_files`.

A file longer than the model's window can hold is cut at a line boundary to fit
the room the question leaves (`fit_files`), with a marker saying how much was
left out, so a large log still gets an answer about its beginning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from bot import wording

#: Suffixes read as text whatever content type a client claims (lower case).
TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".markdown", ".rst", ".log", ".csv", ".tsv", ".json", ".jsonl", ".yaml",
    ".yml", ".toml", ".ini", ".cfg", ".conf", ".env", ".xml", ".html", ".htm", ".css",
    ".py", ".pyi", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".c", ".h", ".cc",
    ".cpp", ".hpp", ".cs", ".go", ".rs", ".rb", ".php", ".pl", ".lua", ".sh", ".bash",
    ".zsh", ".ps1", ".sql", ".r", ".swift", ".scala", ".hs", ".ex", ".exs", ".erl", ".clj",
    ".lisp", ".el", ".vim", ".tex", ".diff", ".patch", ".srt", ".vtt", ".gitignore",
    ".dockerfile", ".gradle", ".properties",
})
#: Content types read as text besides ``text/*``.
TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/x-yaml", "application/yaml",
    "application/toml", "application/javascript", "application/x-sh", "application/sql",
    "application/x-python", "application/x-ndjson",
})
NAME_CHARS = 80
#: Tokens kept free of files beyond the question, persona and reply: the template's
#: markers and the block's own lines.
MARGIN_TOKENS = 64


@dataclass(frozen=True)
class Upload:
    """What a front-end knows of a file before reading it."""

    name: str
    size: int
    content_type: str | None = None


@dataclass(frozen=True)
class TextFile:
    """A file's name and its text, as the model will read it."""

    name: str
    text: str


@dataclass(frozen=True)
class Skipped:
    """A file not read, and the one line that says why."""

    name: str
    reason: str

    @property
    def note(self) -> str:
        return wording.FILE_SKIPPED.format(name=self.name, reason=self.reason)


def clean_name(name: str) -> str:
    """One short line: no path, no control characters, no backticks (it sits in a fence's
    caption and in Discord markdown)."""
    base = PurePath(name.replace("\\", "/")).name or "file"
    flat = re.sub(r"[\x00-\x1f\x7f`]+", " ", base).strip() or "file"
    return flat if len(flat) <= NAME_CHARS else flat[: NAME_CHARS - 1] + "…"


def is_text(name: str, content_type: str | None) -> bool:
    """Text by its content type (``text/*`` and the usual structured types) or its suffix."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind.startswith("text/") or kind in TEXT_TYPES:
        return True
    suffix = PurePath(name).suffix.lower()
    return suffix in TEXT_SUFFIXES or PurePath(name).name.lower() in {
        "dockerfile", "makefile", "readme", "license",
    }


def unknown_kind(name: str, content_type: str | None) -> bool:
    """No type, or only "some bytes": the content decides (a Makefile, `.env.sample`)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind in ("", "application/octet-stream") and not is_text(name, content_type)


def admit(
    uploads: Sequence[Upload], *, max_bytes: int, max_count: int
) -> tuple[list[Upload], list[Skipped]]:
    """Which uploads to download: text files within the size cap, the first `max_count`."""
    taken: list[Upload] = []
    skipped: list[Skipped] = []
    for upload in uploads:
        name = clean_name(upload.name)
        if not (is_text(upload.name, upload.content_type)
                or unknown_kind(upload.name, upload.content_type)):
            skipped.append(Skipped(name, wording.FILE_NOT_TEXT))
        elif upload.size > max_bytes:
            skipped.append(Skipped(name, wording.FILE_TOO_BIG.format(
                size=upload.size, limit=max_bytes)))
        elif len(taken) >= max_count:
            skipped.append(Skipped(name, wording.FILE_TOO_MANY.format(
                count=wording.plural(max_count, "file"))))
        else:
            taken.append(upload)
    return taken, skipped


def decode(name: str, data: bytes, *, text_kind: bool = True) -> TextFile | Skipped:
    """The file's text, or why it is not read (NUL bytes, invalid UTF-8, empty).

    `text_kind` False: nothing said it was text, so bytes that aren't UTF-8 make it
    "not a text file" rather than "not UTF-8".
    """
    name = clean_name(name)
    if b"\x00" in data:
        return Skipped(name, wording.FILE_NOT_TEXT)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Skipped(name, wording.FILE_NOT_UTF8 if text_kind else wording.FILE_NOT_TEXT)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return Skipped(name, wording.FILE_EMPTY)
    return TextFile(name, text)


def decode_upload(upload: Upload, data: bytes) -> TextFile | Skipped:
    """An admitted upload's bytes read as text: a file nothing declared as text is "not a
    text file" when its bytes aren't UTF-8, rather than "not UTF-8"."""
    return decode(upload.name, data, text_kind=is_text(upload.name, upload.content_type))


def _fence(text: str) -> str:
    """A backtick fence longer than any run inside `text`, so the file cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render(files: Sequence[TextFile]) -> str:
    """The blocks the model reads after the question, one per file."""
    blocks = []
    for f in files:
        fence = _fence(f.text)
        body = f.text if f.text.endswith("\n") else f.text + "\n"
        blocks.append(f"File `{f.name}`:\n{fence}\n{body}{fence}")
    return "\n\n".join(blocks)


def with_files(prompt: str, files: Sequence[TextFile]) -> str:
    """The question followed by its files' blocks (the question alone without files)."""
    if not files:
        return prompt
    return f"{prompt}\n\n{render(files)}"


def _cut(f: TextFile, keep_chars: int) -> TextFile:
    """`f` cut at the last line boundary within `keep_chars`, with a marker of what's left."""
    head = f.text[:keep_chars]
    if keep_chars < len(f.text) and "\n" in head:
        head = head[: head.rindex("\n") + 1]
    left = f.text[len(head):]
    if not left:
        return f
    lines = left.count("\n") + (not left.endswith("\n"))
    marker = wording.FILE_CUT.format(lines=wording.plural(lines, "more line"))
    return TextFile(f.name, head + marker + "\n")


def fit_files(
    files: Sequence[TextFile], budget_tokens: int, count_tokens: Callable[[str], int]
) -> tuple[list[TextFile], list[str]]:
    """The files cut so their blocks fit `budget_tokens`; and the names of those cut.

    The shortest files are kept whole first; each longer one shares what is left,
    cut at a line by binary search on its length (each probe one encode of at most
    the file's text). A file with no room at all keeps only the marker.
    """
    if not files or count_tokens(render(files)) <= budget_tokens:
        return list(files), []
    order = sorted(range(len(files)), key=lambda i: len(files[i].text))
    out: list[TextFile | None] = [None] * len(files)
    cut: list[str] = []
    left = max(0, budget_tokens)
    for place, index in enumerate(order):
        f = files[index]
        share = left // (len(order) - place)
        whole = count_tokens(render([f]))
        if whole <= share:
            out[index] = f
            left -= whole
            continue
        lo, hi = 0, len(f.text)
        while lo < hi:  # the longest prefix whose block fits the share
            mid = (lo + hi + 1) // 2
            if count_tokens(render([_cut(f, mid)])) <= share:
                lo = mid
            else:
                hi = mid - 1
        kept = _cut(f, lo)
        out[index] = kept
        left -= count_tokens(render([kept]))
        cut.append(f.name)
    return [f for f in out if f is not None], cut


def attach(
    prompt: str, files: Sequence[TextFile], *, system: str | None, context_length: int,
    max_new_tokens: int, count_tokens: Callable[[str], int],
) -> tuple[str, list[TextFile], list[str]]:
    """The prompt with its files' blocks, cut to the room the window leaves them.

    The room is the window less the reply's budget, the persona, the question and
    a margin for the template's markers; history is fitted after this, into what
    is left, so the question and its files come before older turns.
    """
    if not files:
        return prompt, [], []
    used = count_tokens(prompt) + (count_tokens(system) if system else 0)
    budget = context_length - max_new_tokens - used - MARGIN_TOKENS
    kept, cut = fit_files(files, budget, count_tokens)
    return with_files(prompt, kept), kept, cut


def read_paths(
    paths: Sequence[str], *, max_bytes: int, max_count: int
) -> tuple[list[TextFile], list[str]]:
    """Files named on a command line, under the same rules as attachments.

    A missing or unreadable path is a note like any other file not read.
    """
    from pathlib import Path

    uploads = []
    notes: list[str] = []
    for raw in paths:
        path = Path(raw)
        try:
            size = path.stat().st_size
        except OSError as exc:
            notes.append(Skipped(clean_name(raw), exc.strerror or "unreadable").note)
            continue
        uploads.append(Upload(raw, size))
    taken, skipped = admit(uploads, max_bytes=max_bytes, max_count=max_count)
    notes += [s.note for s in skipped]
    files: list[TextFile] = []
    for upload in taken:
        try:
            data = Path(upload.name).read_bytes()[: max_bytes + 1]
        except OSError as exc:
            notes.append(Skipped(clean_name(upload.name), exc.strerror or "unreadable").note)
            continue
        read = decode_upload(upload, data)
        if isinstance(read, Skipped):
            notes.append(read.note)
        else:
            files.append(read)
    return files, notes
