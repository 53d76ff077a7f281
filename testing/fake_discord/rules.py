"""The rules Discord documents but its OpenAPI schemas do not carry.

Components (5 rows, 5 buttons or one select a row, unique `custom_id`s, a label or
emoji on every button, link buttons with a URL and no `custom_id`, 25 select options),
embeds (field, footer and author limits, 6,000 characters across a message), modals
(title, 1 to 5 components, labels), commands (lower-case names without spaces, a
description, required options first, 25 options, `min_length` at most `max_length`)
and threads (the four archive durations). Each function answers Discord's per-field
error tree, empty when the body is fine; the caller refuses with 400/50035.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from testing.fake_discord.schema import JSONDict, merge_errors, put_error

Path = list[str | int]

MAX_CONTENT = 2000
MAX_EMBEDS = 10
EMBED_TOTAL = 6000
EMBED_LIMITS = {"title": 256, "description": 4096}
MAX_FIELDS = 25
FIELD_LIMITS = {"name": 256, "value": 1024}
FOOTER_TEXT = 2048
AUTHOR_NAME = 256
MAX_ROWS = 5
MAX_BUTTONS = 5
MAX_OPTIONS = 25
LABEL = 80
CUSTOM_ID = 100
LINK_STYLE = 5
PREMIUM_STYLE = 6
MODAL_TITLE = 45
MODAL_COMPONENTS = 5
MODAL_LABEL = 45
ARCHIVE_DURATIONS = frozenset({60, 1440, 4320, 10080})
# Discord's documented pattern for command and option names; CHAT_INPUT names lower-case.
NAME_RE = re.compile(r"^[-_'\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")
COMMAND_OPTIONS = 25
COMMAND_DESCRIPTION = 100
OPTION_LENGTH_MAX = 6000
FLAG_EPHEMERAL = 1 << 6
FLAG_COMPONENTS_V2 = 1 << 15


def _too_long(tree: JSONDict, path: Path, limit: int) -> None:
    put_error(tree, path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def message_errors(body: Mapping[str, Any], path: Path | None = None) -> JSONDict:
    """Content, embeds and components of a message body (create, edit, callback data)."""
    tree: JSONDict = {}
    base: Path = list(path or [])
    if len(_text(body.get("content"))) > MAX_CONTENT:
        _too_long(tree, [*base, "content"], MAX_CONTENT)
    embeds = body.get("embeds")
    if isinstance(embeds, list):
        _embed_errors(tree, embeds, [*base, "embeds"])
    components = body.get("components")
    flags = body.get("flags")
    v2 = isinstance(flags, int) and bool(flags & FLAG_COMPONENTS_V2)
    if isinstance(components, list) and not v2:
        _component_errors(tree, components, [*base, "components"])
    return tree


def _embed_errors(tree: JSONDict, embeds: Sequence[Any], path: Path) -> None:
    if len(embeds) > MAX_EMBEDS:
        _too_long(tree, path, MAX_EMBEDS)
    total = 0
    for i, embed in enumerate(embeds):
        if not isinstance(embed, Mapping):
            continue
        for key, limit in EMBED_LIMITS.items():
            value = _text(embed.get(key))
            total += len(value)
            if len(value) > limit:
                _too_long(tree, [*path, i, key], limit)
        fields = embed.get("fields") or []
        if len(fields) > MAX_FIELDS:
            _too_long(tree, [*path, i, "fields"], MAX_FIELDS)
        for j, item in enumerate(fields):
            for key, limit in FIELD_LIMITS.items():
                value = _text(item.get(key)) if isinstance(item, Mapping) else ""
                total += len(value)
                if len(value) > limit:
                    _too_long(tree, [*path, i, "fields", j, key], limit)
        footer = _text((embed.get("footer") or {}).get("text"))
        total += len(footer)
        if len(footer) > FOOTER_TEXT:
            _too_long(tree, [*path, i, "footer", "text"], FOOTER_TEXT)
        author = _text((embed.get("author") or {}).get("name"))
        total += len(author)
        if len(author) > AUTHOR_NAME:
            _too_long(tree, [*path, i, "author", "name"], AUTHOR_NAME)
    if total > EMBED_TOTAL:
        put_error(tree, path, "MAX_EMBED_SIZE_EXCEEDED",
                  f"Embed size exceeds maximum size of {EMBED_TOTAL}")


def _component_errors(tree: JSONDict, rows: Sequence[Any], path: Path) -> None:
    if len(rows) > MAX_ROWS:
        _too_long(tree, path, MAX_ROWS)
    seen: set[str] = set()
    for r, row in enumerate(rows):
        if not isinstance(row, Mapping) or row.get("type") != 1:
            continue
        children = [c for c in row.get("components") or [] if isinstance(c, Mapping)]
        here: Path = [*path, r, "components"]
        buttons = [c for c in children if c.get("type") == 2]
        selects = [c for c in children if c.get("type") in (3, 5, 6, 7, 8)]
        if len(buttons) > MAX_BUTTONS:
            _too_long(tree, here, MAX_BUTTONS)
        if selects and len(children) > 1:
            put_error(tree, here, "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                      "The specified component exceeds the maximum width")
        for c, child in enumerate(children):
            custom_id = child.get("custom_id")
            if isinstance(custom_id, str):
                if len(custom_id) > CUSTOM_ID:
                    _too_long(tree, [*here, c, "custom_id"], CUSTOM_ID)
                if custom_id in seen:
                    put_error(tree, [*here, c, "custom_id"], "COMPONENT_CUSTOM_ID_DUPLICATED",
                              "Component custom id cannot be duplicated")
                seen.add(custom_id)
            if child.get("type") == 2:
                _button_errors(tree, child, [*here, c])
            elif child.get("type") == 3:
                options = child.get("options") or []
                if not 1 <= len(options) <= MAX_OPTIONS:
                    _too_long(tree, [*here, c, "options"], MAX_OPTIONS)


def _button_errors(tree: JSONDict, button: Mapping[str, Any], path: Path) -> None:
    style = button.get("style")
    label = _text(button.get("label"))
    if len(label) > LABEL:
        _too_long(tree, [*path, "label"], LABEL)
    if style == LINK_STYLE:
        if not button.get("url"):
            put_error(tree, [*path, "url"], "BASE_TYPE_REQUIRED", "This field is required")
        if button.get("custom_id") is not None:
            put_error(tree, [*path, "custom_id"], "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                      "A custom id cannot be set on a link button")
    elif style != PREMIUM_STYLE:
        if not button.get("custom_id"):
            put_error(tree, [*path, "custom_id"], "BASE_TYPE_REQUIRED", "This field is required")
        if button.get("url") is not None:
            put_error(tree, [*path, "url"], "BUTTON_COMPONENT_URL_NOT_ALLOWED",
                      "A url can only be set on a link button")
    if style != PREMIUM_STYLE and not label and not button.get("emoji"):
        put_error(tree, [*path, "label"], "BUTTON_COMPONENT_LABEL_OR_EMOJI_REQUIRED",
                  "A label or an emoji is required")


def modal_errors(data: Mapping[str, Any], path: Path) -> JSONDict:
    """A modal (callback type 9): title, 1 to 5 components, each label at most 45."""
    tree: JSONDict = {}
    title = _text(data.get("title"))
    if not 1 <= len(title) <= MODAL_TITLE:
        _too_long(tree, [*path, "title"], MODAL_TITLE)
    components = data.get("components") or []
    if not 1 <= len(components) <= MODAL_COMPONENTS:
        put_error(tree, [*path, "components"], "BASE_TYPE_BAD_LENGTH",
                  f"Must be between 1 and {MODAL_COMPONENTS} in length.")
    for i, top in enumerate(components):
        if not isinstance(top, Mapping):
            continue
        if top.get("type") == 18:  # Label: its own label, one child
            if len(_text(top.get("label"))) > MODAL_LABEL:
                _too_long(tree, [*path, "components", i, "label"], MODAL_LABEL)
            continue
        children = top.get("components") or []
        if top.get("type") == 1 and len(children) != 1:
            put_error(tree, [*path, "components", i, "components"], "BASE_TYPE_BAD_LENGTH",
                      "Must be 1 in length.")
        for j, child in enumerate(children):
            if isinstance(child, Mapping) and len(_text(child.get("label"))) > MODAL_LABEL:
                _too_long(tree, [*path, "components", i, "components", j, "label"], MODAL_LABEL)
    return tree


def callback_errors(body: Mapping[str, Any], interaction_type: int) -> JSONDict:
    """Which callback answers which interaction, and what each callback's data may carry."""
    tree: JSONDict = {}
    kind = body.get("type")
    data = body.get("data")
    data = data if isinstance(data, Mapping) else {}
    if kind == 6 and data:
        put_error(tree, ["data"], "INTERACTION_RESPONSE_DATA_NOT_ALLOWED",
                  "A deferred update takes no data")
    if kind == 5 and int(data.get("flags") or 0) & ~FLAG_EPHEMERAL:
        put_error(tree, ["data", "flags"], "INTERACTION_RESPONSE_FLAGS_INVALID",
                  "A deferral may only be ephemeral")
    if kind == 8 and interaction_type != 4:
        put_error(tree, ["type"], "INTERACTION_RESPONSE_TYPE_INVALID",
                  "Autocomplete results answer an autocomplete interaction only")
    if kind == 9:
        if interaction_type in (1, 4, 5):
            put_error(tree, ["type"], "INTERACTION_RESPONSE_TYPE_INVALID",
                      "A modal cannot answer this interaction")
        merge_errors(tree, modal_errors(data, ["data"]))
    if kind in (6, 7) and interaction_type not in (3, 5):
        put_error(tree, ["type"], "INTERACTION_RESPONSE_TYPE_INVALID",
                  "Interaction response type is invalid for this interaction")
    if kind in (4, 7):
        merge_errors(tree, message_errors(data, ["data"]))
    return tree


def commands_errors(commands: Sequence[Any]) -> JSONDict:
    """A bulk overwrite of application commands."""
    tree: JSONDict = {}
    for i, command in enumerate(commands):
        if isinstance(command, Mapping):
            _command_errors(tree, command, [i])
    return tree


def _command_errors(tree: JSONDict, command: Mapping[str, Any], path: Path) -> None:
    chat_input = command.get("type", 1) == 1
    name = _text(command.get("name"))
    if not NAME_RE.fullmatch(name) or (chat_input and name != name.lower()):
        put_error(tree, [*path, "name"], "APPLICATION_COMMAND_INVALID_NAME",
                  "Command name is invalid")
    if chat_input:
        description = _text(command.get("description"))
        if not 1 <= len(description) <= COMMAND_DESCRIPTION:
            put_error(tree, [*path, "description"], "BASE_TYPE_BAD_LENGTH",
                      f"Must be between 1 and {COMMAND_DESCRIPTION} in length.")
    options = [o for o in command.get("options") or [] if isinstance(o, Mapping)]
    if len(options) > COMMAND_OPTIONS:
        _too_long(tree, [*path, "options"], COMMAND_OPTIONS)
    optional_seen = False
    for j, option in enumerate(options):
        here: Path = [*path, "options", j]
        if option.get("type") in (1, 2):
            _command_errors(tree, option, here)
            continue
        _command_errors(tree, {**option, "type": 1, "options": []}, here)
        if option.get("required"):
            if optional_seen:
                put_error(tree, [*path, "options"], "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                          "Required options must be placed before non-required options")
        else:
            optional_seen = True
        low, high = option.get("min_length"), option.get("max_length")
        if isinstance(low, int) and not 0 <= low <= OPTION_LENGTH_MAX:
            _too_long(tree, [*here, "min_length"], OPTION_LENGTH_MAX)
        if isinstance(high, int) and not 1 <= high <= OPTION_LENGTH_MAX:
            _too_long(tree, [*here, "max_length"], OPTION_LENGTH_MAX)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            put_error(tree, [*here, "min_length"], "APPLICATION_COMMAND_OPTION_LENGTH_INVALID",
                      "min_length must be less than or equal to max_length")
        if len(option.get("choices") or []) > MAX_OPTIONS:
            _too_long(tree, [*here, "choices"], MAX_OPTIONS)


def thread_errors(body: Mapping[str, Any]) -> JSONDict:
    tree: JSONDict = {}
    name = _text(body.get("name"))
    if not 1 <= len(name) <= 100:
        put_error(tree, ["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    duration = body.get("auto_archive_duration")
    if duration is not None and duration not in ARCHIVE_DURATIONS:
        put_error(tree, ["auto_archive_duration"], "BASE_TYPE_CHOICES",
                  f"Value must be one of {sorted(ARCHIVE_DURATIONS)}.")
    return tree
