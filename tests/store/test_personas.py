"""Named personas per server on a real SQLite file: names, the cap, knob bundles, cards."""

from __future__ import annotations

import json

import pytest

from bot.chat.characters import parse_card
from bot.errors import InvalidKnobs, UserFacingError
from bot.store.personas import (
    MAX_NAME_CHARS,
    MAX_PERSONAS,
    PersonaNotFound,
    PersonaStore,
    name_key,
    validate_bundle,
    validate_persona_name,
)
from bot.store.scopes import MAX_SYSTEM_PROMPT_CHARS
from testing.character_cards import card_json

GUILD, OTHER, ADA = 1, 2, 101


def test_name_rules() -> None:
    assert validate_persona_name("  Captain   Hook ") == "Captain Hook"
    assert validate_persona_name("Zoë 🦊") == "Zoë 🦊"
    assert validate_persona_name("x" * MAX_NAME_CHARS) == "x" * MAX_NAME_CHARS
    assert validate_persona_name("two\nlines\u2028here") == "two lines here"
    for bad, why in (("", "empty"), ("   ", "empty"), ("x" * 33, "at most 32"),
                     ("a\x00b", "one line"), ("a\x1bb", "one line"), (5, "must be text")):
        with pytest.raises(InvalidKnobs, match=why):
            validate_persona_name(bad)
    assert name_key("CAPTAIN") == name_key("captain") == name_key(" Captain ")
    assert name_key("Straße") == name_key("STRASSE")
    assert name_key("e\u0301") == name_key("\u00e9")  # NFC: the same name typed two ways


def test_bundles_are_validated_with_the_knobs_model() -> None:
    assert validate_bundle(None) == {}
    assert validate_bundle({"temperature": 0.9, "stop": ["\nUser:"]}) == {
        "temperature": 0.9, "stop": ["\nUser:"]}
    with pytest.raises(InvalidKnobs, match="temperature"):
        validate_bundle({"temperature": 9})
    with pytest.raises(InvalidKnobs, match="Unknown setting `colour`"):
        validate_bundle({"colour": "red"})
    with pytest.raises(InvalidKnobs, match="cannot be above"):
        validate_bundle({"min_new_tokens": 50, "max_new_tokens": 10})


async def test_save_load_list_case_insensitively_per_server(personas: PersonaStore) -> None:
    saved, replaced = await personas.save(GUILD, "Pirate", "You are a pirate.", actor_id=ADA,
                                          knobs={"temperature": 1.1, "stop": ["\nMate:"]})
    assert not replaced and saved.name == "Pirate"
    assert saved.knobs == {"temperature": 1.1, "stop": ("\nMate:",)}
    loaded = await personas.load(GUILD, "pIRATE")
    assert (loaded.name, loaded.system_prompt, loaded.knobs, loaded.updated_by) == (
        "Pirate", "You are a pirate.", {"temperature": 1.1, "stop": ("\nMate:",)}, ADA)
    again, replaced = await personas.save(GUILD, "PIRATE", "You are a louder pirate.",
                                          actor_id=ADA)
    assert replaced and again.name == "PIRATE" and again.knobs == {}
    await personas.save(GUILD, "alpha", "A.", actor_id=ADA)
    assert [p.name for p in await personas.saved(GUILD)] == ["alpha", "PIRATE"]
    assert await personas.saved(OTHER) == []
    with pytest.raises(PersonaNotFound, match=r"no persona named 'Pirate'\. None are saved"):
        await personas.load(OTHER, "Pirate")
    with pytest.raises(PersonaNotFound, match=r"Saved: alpha, PIRATE\."):
        await personas.load(GUILD, "ninja")
    assert await personas.delete(GUILD, "Alpha") is True
    assert await personas.delete(GUILD, "Alpha") is False
    assert await personas.remove(OTHER, "pirate") is None  # another server's is not touched
    assert await personas.remove(GUILD, "pirate") == "PIRATE"  # the name as saved
    assert await personas.saved(GUILD) == []


async def test_at_most_25_per_server_and_replacing_does_not_count(
    personas: PersonaStore,
) -> None:
    for n in range(MAX_PERSONAS):
        await personas.save(GUILD, f"p{n}", "text", actor_id=ADA)
    with pytest.raises(UserFacingError, match=f"{MAX_PERSONAS} saved personas"):
        await personas.save(GUILD, "one more", "text", actor_id=ADA)
    _, replaced = await personas.save(GUILD, "P3", "new text", actor_id=ADA)
    assert replaced
    await personas.save(OTHER, "one more", "text", actor_id=ADA)  # another server's count
    assert len(await personas.saved(GUILD)) == MAX_PERSONAS


async def test_bad_input_is_refused_and_loses_nothing(personas: PersonaStore) -> None:
    await personas.save(GUILD, "keep", "original", actor_id=ADA, knobs={"top_k": 5})
    for kwargs, why in (
        ({"system_prompt": "x" * (MAX_SYSTEM_PROMPT_CHARS + 1)}, "limit is"),
        ({"system_prompt": "  "}, "empty"),
        ({"system_prompt": "ok", "knobs": {"top_k": 500}}, "top_k"),
        ({"system_prompt": "ok", "greeting": "hi\x00"}, "NUL"),
    ):
        with pytest.raises(InvalidKnobs, match=why):
            await personas.save(GUILD, "keep", actor_id=ADA, **kwargs)
    kept = await personas.load(GUILD, "keep")
    assert (kept.system_prompt, kept.knobs) == ("original", {"top_k": 5})


async def test_stored_knobs_that_no_longer_validate_are_left_out(
    personas: PersonaStore,
) -> None:
    await personas.save(GUILD, "old", "text", actor_id=ADA)
    await personas.db.write(lambda conn: conn.execute(
        "UPDATE personas SET knobs = ? WHERE guild_id = ?",
        (json.dumps({"temperature": 99, "top_p": 0.5, "ghost": 1}), GUILD)))
    assert (await personas.load(GUILD, "old")).knobs == {"top_p": 0.5}
    await personas.db.write(lambda conn: conn.execute(
        "UPDATE personas SET knobs = 'not json' WHERE guild_id = ?", (GUILD,)))
    assert (await personas.load(GUILD, "old")).knobs == {}


async def test_a_character_card_saved_as_a_named_persona_with_its_greeting(
    personas: PersonaStore,
) -> None:
    card = parse_card(card_json({"name": "Seraphina", "description": "A healer.",
                                 "first_mes": "You're awake!"}))
    saved, _ = await personas.save(GUILD, card.name, card.persona, actor_id=ADA,
                                   greeting=card.greeting)
    loaded = await personas.load(GUILD, "seraphina")
    assert loaded.system_prompt == card.persona and loaded.greeting == "You're awake!"
    assert saved.greeting == loaded.greeting
