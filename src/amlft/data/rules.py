"""Row rules for chat fine-tuning data, each violation with its own reason code.

Why codes and not messages: a report over 200k rows has to count problems by kind, and
a test (or a CI gate) has to assert the exact kind; the human message is derived from
the code plus the field it concerns.

The check is a straight-line loop over the messages, written for speed: it runs once
per row over the whole dataset, so it is the part of `prepare` that must stay cheap.
"""

from __future__ import annotations

from typing import Any

ROLES = frozenset(("system", "user", "assistant"))

# reason code -> what it means (also the text of `amlft data validate`'s summary)
REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8",
    "invalid_json": "the line is not valid JSON",
    "not_object": "the row is not a JSON object",
    "messages_missing": "the row has no 'messages' field",
    "messages_not_list": "'messages' is not a list",
    "messages_empty": "'messages' is an empty list",
    "message_not_object": "a message is not a JSON object",
    "role_invalid": "a message's role is missing or not one of system/user/assistant",
    "content_not_string": "a message's content is missing or not a string",
    "content_empty": "a message's content is empty",
    "content_whitespace": "a message's content is only whitespace",
    "system_not_first": "a system message appears after the first message",
    "roles_not_alternating": "user and assistant turns do not alternate starting with user",
    "last_not_assistant": "the conversation does not end with an assistant turn",
    "too_many_tokens": "the conversation is longer than --max-seq-length tokens",
    "field_missing": "a field the chosen format needs is missing or not a string",
    "format_unrecognized": "the row matches none of the known formats",
    "duplicate": "duplicate of an earlier row (same prompt_id or same conversation)",
    "leakage": "the same conversation is also in the train split",
}


class RowProblem(tuple):
    """(code, field, detail): immutable and cheap, since a bad file can produce millions."""

    __slots__ = ()

    def __new__(cls, code: str, field: str, detail: str = "") -> RowProblem:
        return tuple.__new__(cls, (code, field, detail))

    @property
    def code(self) -> str:
        return self[0]

    @property
    def field(self) -> str:
        return self[1]

    @property
    def detail(self) -> str:
        return self[2]

    def message(self) -> str:
        text = REASONS.get(self.code, self.code)
        return f"{self.field}: {text}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message()}


def check_messages(messages: Any) -> list[RowProblem]:
    """Every rule violation in one conversation (empty list = valid).

    Each message problem is reported once per message; ordering problems are reported
    once per conversation (the first offending turn), so one bad row never floods the
    per-reason counts.
    """
    if messages is None:
        return [RowProblem("messages_missing", "messages")]
    if not isinstance(messages, list):
        return [RowProblem("messages_not_list", "messages", type(messages).__name__)]
    if not messages:
        return [RowProblem("messages_empty", "messages")]
    problems: list[RowProblem] = []
    expected = "user"  # the role the next non-system turn must have
    order_bad = False
    system_bad = False
    last_role = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            problems.append(RowProblem("message_not_object", f"messages[{i}]", type(msg).__name__))
            order_bad = True  # the turn order cannot be judged past a hole
            last_role = None
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role not in ROLES:
            problems.append(RowProblem("role_invalid", f"messages[{i}].role", repr(role)[:40]))
            last_role = None
            order_bad = True
        if type(content) is not str:
            problems.append(RowProblem("content_not_string", f"messages[{i}].content",
                                       "missing" if content is None and "content" not in msg
                                       else type(content).__name__))
        elif not content:
            problems.append(RowProblem("content_empty", f"messages[{i}].content"))
        elif content.isspace():
            problems.append(RowProblem("content_whitespace", f"messages[{i}].content"))
        if role not in ROLES:
            continue
        last_role = role
        if role == "system":
            if i != 0 and not system_bad:
                problems.append(RowProblem("system_not_first", f"messages[{i}].role"))
                system_bad = True
            continue
        if role != expected and not order_bad:
            problems.append(RowProblem("roles_not_alternating", f"messages[{i}].role",
                                       f"expected {expected}, got {role}"))
            order_bad = True
        expected = "assistant" if role == "user" else "user"
    if last_role is not None and last_role != "assistant" and not order_bad:
        problems.append(RowProblem("last_not_assistant", f"messages[{len(messages) - 1}].role",
                                   f"ends with {last_role}"))
    return problems
