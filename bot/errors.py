"""Domain exceptions shared by the core and every front-end.

Front-ends (the Discord error handler, the console, the CLI) show a
`UserFacingError`'s message as it is; anything else is a bug and gets a generic
apology plus a log line. Keeping the types here means the core never imports
Discord to report a problem.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """An error whose message is written for the person who caused it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidKnobs(UserFacingError):
    """A sampling setting was out of range or of the wrong type."""


class PromptTooLong(UserFacingError):
    """The prompt alone does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"Your prompt is {prompt_tokens} tokens long with the system prompt and chat "
            f"template, but the model's context window holds {context_length}. "
            "Shorten the prompt or the system prompt."
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class QueueFull(UserFacingError):
    """The waiting queue is at its bound; the caller should try again later."""

    def __init__(self, limit: int) -> None:
        from bot import wording  # the one table of member-facing words; imports nothing

        super().__init__(wording.busy(limit))  # "1 request is", never "1 requests are"
        self.limit = limit


class ShuttingDown(UserFacingError):
    """The engine no longer accepts work because the process is stopping."""

    def __init__(self) -> None:
        super().__init__("I'm restarting, try again in a moment.")


class ModelError(UserFacingError):
    """The model failed while producing a reply."""


class SettingsError(UserFacingError):
    """The settings store could not read or save a value."""


class ConfigError(Exception):
    """A setting in the environment or `.env` is invalid; raised at start-up."""
