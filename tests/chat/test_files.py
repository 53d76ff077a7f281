"""Files as context without Discord: which are read, how they are quoted, how they are cut."""

from __future__ import annotations

from pathlib import Path

from bot.chat.files import (
    Skipped,
    TextFile,
    Upload,
    admit,
    attach,
    clean_name,
    decode,
    fit_files,
    read_paths,
    render,
)


def words(text: str) -> int:
    """A stand-in tokenizer for budgets: one token per whitespace-separated word."""
    return len(text.split())


def test_only_text_files_within_the_caps_are_downloaded() -> None:
    uploads = [
        Upload("a.py", 10, None), Upload("b.png", 10, "image/png"),
        Upload("c.log", 200_000, "text/plain"), Upload("d", 5, "text/plain; charset=utf-8"),
        Upload("e.json", 5, "application/json"), Upload("f.md", 5, None),
    ]
    taken, skipped = admit(uploads, max_bytes=100_000, max_count=3)
    assert [u.name for u in taken] == ["a.py", "d", "e.json"]
    # No type, or only "bytes": the content decides, after the download.
    maybe, _ = admit([Upload("Makefile.in", 5, None),
                      Upload("x.bin", 5, "application/octet-stream"),
                      Upload("y.zip", 5, "application/zip")], max_bytes=100, max_count=3)
    assert [u.name for u in maybe] == ["Makefile.in", "x.bin"]
    png = decode("x.bin", b"\x89PNG\r\n", text_kind=False)
    assert isinstance(png, Skipped) and "isn't a text file" in png.note
    notes = {s.name: s.note for s in skipped}
    assert "isn't a text file" in notes["b.png"]
    assert "200,000 bytes" in notes["c.log"] and "100,000" in notes["c.log"]
    assert "3 files per ask" in notes["f.md"]


def test_decoding_refuses_binary_and_invalid_utf8_politely() -> None:
    assert decode("x.txt", "ünïcode\r\nline".encode()) == TextFile("x.txt", "ünïcode\nline")
    assert decode("bom.txt", b"\xef\xbb\xbfhi") == TextFile("bom.txt", "hi")
    bad = decode("latin.txt", "café".encode("latin-1"))
    assert isinstance(bad, Skipped) and "UTF-8" in bad.note
    nul = decode("x.txt", b"ab\x00cd")
    assert isinstance(nul, Skipped) and "isn't a text file" in nul.note
    empty = decode("x.txt", b"  \n")
    assert isinstance(empty, Skipped) and "empty" in empty.note


def test_names_are_one_short_line_and_fences_cannot_be_closed_by_the_file() -> None:
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("C:\\Users\\me\\a`b\n.txt") == "a b .txt"
    assert len(clean_name("x" * 500 + ".txt")) == 80
    block = render([TextFile("code.md", "before\n```\nafter\n````\n")])
    fence = block.splitlines()[1]
    assert fence == "`````" and block.endswith("\n`````")


def test_files_are_cut_at_a_line_to_fit_the_budget_shortest_kept_whole() -> None:
    short = TextFile("short.txt", "one two three\n")
    long = TextFile("long.txt", "".join(f"w{i} x y z\n" for i in range(400)))
    kept, cut = fit_files([long, short], 200, words)
    assert cut == ["long.txt"]
    assert kept[1] == short
    assert kept[0].text.startswith("w0 x y z\nw1 x y z\n")
    assert "more lines not shown" in kept[0].text
    assert words(render(kept)) <= 200
    body = kept[0].text.split("[…")[0]
    assert body.endswith("\n") and all(line.startswith("w") for line in body.splitlines())
    whole, none_cut = fit_files([short], 200, words)
    assert whole == [short] and none_cut == []


def test_attach_leaves_room_for_the_question_persona_and_reply() -> None:
    f = TextFile("log.txt", "".join(f"line {i}\n" for i in range(1000)))
    prompt, kept, cut = attach("what broke?", [f], system="be brief " * 20, context_length=512,
                               max_new_tokens=100, count_tokens=words)
    assert len(kept) == 1 and cut == ["log.txt"]
    assert prompt.startswith("what broke?\n\nFile `log.txt`:")
    assert words(prompt) + 40 + 100 <= 512


def test_paths_follow_the_same_rules(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    files, notes = read_paths([str(tmp_path / "notes.txt"), str(tmp_path / "pic.png"),
                               str(tmp_path / "missing.txt")], max_bytes=1000, max_count=3)
    assert files == [TextFile("notes.txt", "hello")]
    assert any("missing.txt" in n for n in notes) and any("pic.png" in n for n in notes)
