"""Answers to a member's message are replies that survive the question being deleted.

Discord refuses a reply to a deleted message unless the reference says
`fail_if_not_exists: false`; then it posts the message without the reference.
"""

from __future__ import annotations

from pathlib import Path

from testing.discord_harness import is_final, running_bot
from testing.fake_discord import Routes


async def test_a_deleted_question_still_gets_its_answer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted="Here is the answer.") as h:
        # The bot's first reply is held, and the member deletes the question meanwhile.
        h.fake.delay(Routes.SEND_MESSAGE, 0.5, times=1)
        asked = await h.fake.inject_message("what rhymes with llama?", mention_bot=True,
                                            channel_id=h.general)
        await h.fake.wait_for(lambda: h.fake.requests_for(Routes.SEND_MESSAGE))
        await h.fake.moderator_delete(asked.id)

        answer = await h.fake.wait_for(lambda: next(
            (m for m in h.fake.channel_messages(h.general)
             if m.author.get("bot") and is_final(m.content)), None), timeout=30)
        assert "Here is the answer." in answer.content
        first = h.fake.requests_for(Routes.SEND_MESSAGE)[0]
        assert first.status == 200
        reference = first.json["message_reference"]
        assert int(reference["message_id"]) == asked.id
        assert reference["fail_if_not_exists"] is False
        assert h.fake.message(answer.id).reference is None  # posted without the reference
        assert "message_reference" not in answer.to_payload()
        assert h.fake.refusals == []


async def test_a_question_still_there_is_answered_as_a_reply(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted="Here is the answer.") as h:
        asked = await h.fake.inject_message("what rhymes with llama?", mention_bot=True,
                                            channel_id=h.general)
        answer = await h.fake.wait_for(lambda: next(
            (m for m in h.fake.channel_messages(h.general)
             if m.author.get("bot") and is_final(m.content)), None), timeout=30)
        assert answer.reference is not None and int(answer.reference["message_id"]) == asked.id
        assert answer.type == 19
