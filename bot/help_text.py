"""What /help and "@bot help" say, and the note the bot leaves when it joins a server.

Issue 24 item 3: the README's /help was the console's; on Discord there was
none, and "@bot help" went to the model. No Discord here beyond its markdown.
"""

from __future__ import annotations

from typing import Final

HELP: Final = """**How to ask**
- `/ask prompt:…` — the reply streams in; `private:true` shows it only to you,
  `thread:true` opens a thread from it.
- Mention me with your question, or reply to one of my answers (ping on) to continue it.
- Press **Reply** under an answer to continue it; **Regenerate** asks again; **Stop** ends a reply.
- In DMs, just write: each message continues our conversation.

**Commands**
- `/settings` — the persona and sampling settings in effect here.
- `/conversation show` — your conversation here, its tokens, what the next ask leaves out;
  `/conversation forget` deletes it.
- `/tokens` — how many tokens a text is. `/status` — the model, the queue, recent speed.
- `/help` — this.

**Admins' checklist**
1. `/system set` or `/system edit` — the persona (this channel or thread, or the whole server).
2. `/knobs set` — sampling settings; a server's `max_new_tokens` is a ceiling for its channels.
3. `/knobs preset` — precise, balanced or creative in one go; `/knobs reset` goes back.
4. Channel permissions decide where I may post; I answer only where I'm asked."""

#: Said once when the bot joins a server, where it may post; it pings nobody.
JOINED: Final = ("Hello! I answer questions with a language model. Ask with `/ask`, or mention "
                 "me with your question. `/help` lists the commands and an admin's checklist.")

#: What "@bot help" (or "help" in a DM) is: the whole message, case and a "/" aside.
HELP_WORDS: Final = frozenset({"help", "/help", "help?", "!help"})


def asks_for_help(text: str) -> bool:
    return text.strip().lower() in HELP_WORDS
