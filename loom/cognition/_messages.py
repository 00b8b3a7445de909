"""What goes to and comes back from a chat-completions endpoint.

Messages are plain OpenAI-format dicts (``{"role": "user", "content": "..."}``), built
with :func:`system`, :func:`user`, :func:`assistant` and :func:`tool_result`; a reply is
a :class:`Completion`, decoded from a response body (:func:`completion_from_json`) or
assembled from stream chunks (:class:`StreamedCompletion`). Tool names: Loom names contain
dots (``fs.read``), OpenAI function names may not, so specs and calls use
:func:`wire_name` / :func:`tool_name`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from loom.errors import LLMResponseError, ToolArgumentsError, ToolNameError

__all__ = [
    "Completion",
    "Message",
    "StreamedCompletion",
    "ToolCall",
    "Usage",
    "assistant",
    "completion_from_json",
    "system",
    "tool_name",
    "tool_result",
    "tool_spec",
    "user",
    "wire_name",
]

Message = dict[str, Any]
"""One OpenAI-format chat message."""

_WIRE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOOM = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for.

    Attributes:
        id: the call's id, which the tool's answer must quote (:func:`tool_result`).
        name: the function name as the model wrote it (a wire name: map it back with
            :func:`tool_name`).
        arguments: the raw JSON text the model wrote; see :meth:`parsed`.
    """

    id: str
    name: str
    arguments: str

    def parsed(self) -> dict[str, Any]:
        """The arguments as a dict (empty text counts as ``{}``).

        Raises:
            ToolArgumentsError: the text is not JSON, or not a JSON object.
        """
        text = self.arguments.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolArgumentsError(
                f"the arguments of tool call {self.id} ({self.name}) are not valid JSON: "
                f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        if not isinstance(value, dict):
            raise ToolArgumentsError(
                f"the arguments of tool call {self.id} ({self.name}) must be a JSON object, "
                f"not {type(value).__name__}"
            )
        return value

    def wire(self) -> dict[str, Any]:
        """The call in OpenAI wire form, as an assistant message carries it."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens counted by the server; add two to sum them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass(slots=True)
class Completion:
    """One answer of the model.

    Attributes:
        content: the text (``None`` when the model only called tools).
        tool_calls: the calls it asked for, in order.
        finish_reason: ``stop``, ``tool_calls``, ``length``... as the server said.
        usage: the tokens of this request (zeros when the server did not count).
        model: the model that answered, as the server named it.
        raw: the decoded response body (``None`` for a streamed answer).
    """

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    raw: dict[str, Any] | None = None


def system(text: str) -> Message:
    """A system message."""
    return {"role": "system", "content": text}


def user(text: str) -> Message:
    """A user message."""
    return {"role": "user", "content": text}


def assistant(completion: Completion) -> Message:
    """The assistant message recording ``completion``, to append to the conversation."""
    message: Message = {"role": "assistant", "content": completion.content}
    if completion.tool_calls:
        message["tool_calls"] = [call.wire() for call in completion.tool_calls]
    return message


def tool_result(call_id: str, content: str) -> Message:
    """The answer to the tool call ``call_id``."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tool_spec(name: str, description: str, parameters_schema: dict[str, Any]) -> dict[str, Any]:
    """A tool in the request's ``tools`` list.

    Args:
        name: the function name the model sees: the :func:`wire_name` of a Loom tool.
        description: what the tool does, for the model.
        parameters_schema: the JSON schema of its arguments (an ``object`` schema).

    Raises:
        ToolNameError: ``name`` is not a valid function name (``^[A-Za-z0-9_-]{1,64}$``;
            a Loom name with dots must go through :func:`wire_name` first).
    """
    if not _WIRE.match(name):
        raise ToolNameError(
            f"{name!r} is not a valid function name (letters, digits, '_' and '-', "
            "at most 64); pass a Loom tool name through wire_name()"
        )
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters_schema},
    }


def wire_name(name: str) -> str:
    """The OpenAI function name of the Loom tool ``name``: each ``.`` becomes ``__``.

    The mapping is reversible (:func:`tool_name`), so names that would make it ambiguous
    are refused rather than mangled.

    Raises:
        ToolNameError: ``name`` is not a Loom tool name, contains ``__`` or an ``_`` next to
            a ``.`` (either would collide with another name), or its wire name is longer
            than 64 characters.
    """
    if not _LOOM.match(name):
        raise ToolNameError(f"{name!r} is not a tool name")
    if "__" in name or "_." in name or "._" in name:
        raise ToolNameError(
            f"tool name {name!r} cannot be given to the model: '__' and '_' next to '.' "
            "are reserved (a '.' is sent as '__')"
        )
    wire = name.replace(".", "__")
    if len(wire) > 64:
        raise ToolNameError(
            f"tool name {name!r} is too long for the model: {wire!r} has more than 64 characters"
        )
    return wire


def tool_name(wire: str) -> str:
    """The Loom tool name of the function name ``wire``: the inverse of :func:`wire_name`.

    It never raises: a name the model made up (``a___b``, or ``fs.read`` written with the
    dot) maps to a name that either is the tool it meant or is no tool's name, since
    :func:`wire_name` refuses every name that could collide.
    """
    return wire.replace("__", ".")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LLMResponseError(f"{where} is not an object: {json.dumps(value)[:200]}")
    return value


def _usage(value: Any) -> Usage:
    if not isinstance(value, dict):
        return Usage()
    numbers = [value.get(key) for key in ("prompt_tokens", "completion_tokens", "total_tokens")]
    prompt, completion, total = (n if isinstance(n, int) and n >= 0 else None for n in numbers)
    prompt, completion = prompt or 0, completion or 0
    return Usage(prompt, completion, total if total is not None else prompt + completion)


def _arguments(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):  # some servers send the object itself
        return json.dumps(value, ensure_ascii=False)
    raise LLMResponseError(f"{where}.arguments is neither text nor an object")


def completion_from_json(data: Any, model: str) -> Completion:
    """The completion of a (non-streamed) chat-completions response body.

    Args:
        data: the decoded JSON body.
        model: the model to report when the body names none.

    Raises:
        LLMResponseError: ``data`` is not shaped like a chat completion.
    """
    body = _object(data, "the answer")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LLMResponseError(f"the answer has no choices: {json.dumps(body)[:200]}")
    choice = _object(choices[0], "choices[0]")
    message = _object(choice.get("message"), "choices[0].message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise LLMResponseError("choices[0].message.content is not text")
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise LLMResponseError("choices[0].message.tool_calls is not a list")
    calls = []
    for index, item in enumerate(raw_calls):
        where = f"choices[0].message.tool_calls[{index}]"
        call = _object(item, where)
        function = _object(call.get("function"), f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise LLMResponseError(f"{where}.function has no name")
        call_id = call.get("id")
        calls.append(
            ToolCall(
                id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
                name=name,
                arguments=_arguments(function.get("arguments"), f"{where}.function"),
            )
        )
    finish = choice.get("finish_reason")
    answered_by = body.get("model")
    return Completion(
        content=content,
        tool_calls=calls,
        finish_reason=finish if isinstance(finish, str) else None,
        usage=_usage(body.get("usage")),
        model=answered_by if isinstance(answered_by, str) and answered_by else model,
        raw=body,
    )


class _PartialCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class StreamedCompletion:
    """A completion assembled from the chunks of a streamed answer.

    Content deltas are joined; tool-call fragments are joined by their ``index`` (``id``
    and ``function.name`` come in the first fragment, ``function.arguments`` in pieces);
    usage comes from the chunk that carries it (the last, with ``include_usage``).

    Args:
        model: the model to report when no chunk names one.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.answered_by = ""
        self.parts: list[str] = []
        self.calls: dict[int, _PartialCall] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()

    def feed(self, data: Any) -> str:
        """Take one decoded chunk.

        Returns:
            Its content delta (empty when it has none).

        Raises:
            LLMResponseError: the chunk is not shaped like a completion chunk, or it
                reports an error.
        """
        chunk = _object(data, "a stream event")
        error = chunk.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else error
            raise LLMResponseError(f"the server reported an error in the stream: {message}")
        if isinstance(chunk.get("model"), str) and not self.answered_by:
            self.answered_by = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise LLMResponseError("a stream event's choices is not a list")
        text: list[str] = []
        for item in choices:
            choice = _object(item, "a stream event's choice")
            if choice.get("index", 0) != 0:
                continue  # only the first choice is asked for
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
            delta = _object(choice.get("delta") or {}, "a stream event's delta")
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.parts.append(content)
                text.append(content)
            fragments = delta.get("tool_calls") or []
            if not isinstance(fragments, list):
                raise LLMResponseError("a stream event's tool_calls is not a list")
            for fragment in fragments:
                self._fragment(_object(fragment, "a tool-call fragment"))
        return "".join(text)

    def _fragment(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        fragment_id = fragment.get("id")
        if not isinstance(index, int):  # servers that omit it: a new id starts a call
            known = {call.id for call in self.calls.values()}
            new = isinstance(fragment_id, str) and fragment_id and fragment_id not in known
            last = max(self.calls, default=-1)
            index = last + 1 if new or last < 0 else last
        call = self.calls.setdefault(index, _PartialCall())
        if isinstance(fragment_id, str) and fragment_id and call.id and fragment_id != call.id:
            index = max(self.calls) + 1  # an index reused for another call: keep both
            call = self.calls[index] = _PartialCall()
        if isinstance(fragment_id, str) and fragment_id and not call.id:
            call.id = fragment_id
        function = _object(fragment.get("function") or {}, "a tool-call fragment's function")
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
        call.arguments.append(_arguments(function.get("arguments"), "a tool-call fragment"))

    def result(self) -> Completion:
        """The completion assembled so far.

        Raises:
            LLMResponseError: a tool call never got a function name.
        """
        calls = []
        for index in sorted(self.calls):
            partial = self.calls[index]
            if not partial.name:
                raise LLMResponseError(f"streamed tool call {index} has no function name")
            calls.append(
                ToolCall(
                    id=partial.id or f"call_{index}",
                    name=partial.name,
                    arguments="".join(partial.arguments),
                )
            )
        return Completion(
            content="".join(self.parts) if self.parts else None,
            tool_calls=calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
            model=self.answered_by or self.model,
            raw=None,
        )
