"""The chat-completions client against a real loopback server playing scripts."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from loom.cognition import ScriptedLLM
from loom.cognition._config import LLMSettings, load_llm_settings, resolve_api_key
from loom.cognition._messages import (
    Completion,
    ToolCall,
    Usage,
    assistant,
    system,
    tool_name,
    tool_result,
    tool_spec,
    user,
    wire_name,
)
from loom.cognition._provider import ChatClient
from loom.errors import (
    LLMAuthError,
    LLMConfigError,
    LLMConnectionError,
    LLMError,
    LLMRateLimitError,
    LLMRequestError,
    LLMResponseError,
    LLMServerError,
    LLMTimeoutError,
    LoomError,
    ToolArgumentsError,
    ToolNameError,
)

SCRIPTS = Path(__file__).parent / "scripts"
T = TypeVar("T")

READ_SCHEMA = {
    "type": "object",
    "properties": {"path": {"type": "string"}},
    "required": ["path"],
}
FETCH_SCHEMA = {"type": "object", "properties": {"url": {"type": "string"}}}
TOOLS = [
    tool_spec(wire_name("fs.read"), "Read a text file.", READ_SCHEMA),
    tool_spec(wire_name("web.fetch"), "Fetch a web page.", FETCH_SCHEMA),
]


class Sleeps(list[float]):
    """A ``sleep`` for the client that records each delay instead of waiting it out."""

    async def __call__(self, delay: float) -> None:
        self.append(delay)
        await asyncio.sleep(0)


def settings(base_url: str, **changes: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "model": "scripted-model",
        "backoff": 0.001,
        "max_backoff": 0.01,
        "timeout": 10.0,
    }
    return LLMSettings(**{**values, **changes})


def talk(
    config: LLMSettings,
    body: Callable[[ChatClient], Awaitable[T]],
    *,
    api_key: str | None = None,
    sleeps: Sleeps | None = None,
) -> T:
    """Run ``body`` with a client of ``config`` in a fresh event loop."""

    async def main() -> T:
        async with ChatClient(
            config, api_key=api_key, sleep=Sleeps() if sleeps is None else sleeps
        ) as client:
            return await body(client)

    return asyncio.run(main())


def ask(config: LLMSettings, **options: Any) -> Completion:
    """One completion of a one-line conversation."""
    return talk(config, lambda client: client.complete([user("hi")], **options))


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_plain_completion() -> None:
    """A plain completion comes back with its content, and the request is OpenAI's shape."""
    with ScriptedLLM(SCRIPTS / "answer.json") as llm:
        config = settings(llm.base_url, max_tokens=256)
        completion = talk(
            config,
            lambda client: client.complete([system("Be brief."), user("hi")]),
            api_key="sk-test",
        )
        assert llm.failures == []
        assert llm.remaining == 0
    assert completion.content == "Hello from the scripted model."
    assert completion.tool_calls == []
    assert completion.finish_reason == "stop"
    assert completion.model == "scripted-model"
    assert completion.raw is not None and completion.raw["id"] == "chatcmpl-0"
    assert llm.requests == [
        {
            "model": "scripted-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
            ],
            "temperature": 0.2,
            "max_tokens": 256,
        }
    ]
    assert llm.headers[0]["authorization"] == "Bearer sk-test"
    assert llm.headers[0]["content-type"] == "application/json"


def test_settings_shape_the_request() -> None:
    """No temperature when it is None; extra headers sent; the trailing slash is ignored."""
    with ScriptedLLM([{"reply": {"content": "ok"}}]) as llm:
        config = settings(llm.base_url + "/", temperature=None, headers={"X-Team": "loom"})
        ask(config)
    assert llm.requests == [{"model": "scripted-model", "messages": [user("hi")]}]
    assert llm.headers[0]["x-team"] == "loom"
    assert "authorization" not in llm.headers[0]


def test_usage_accounted_across_calls() -> None:
    """The client sums each completion's usage and counts its calls."""
    steps = [
        {"reply": {"content": "one", "usage": {"prompt_tokens": 10, "completion_tokens": 2}}},
        {"reply": {"content": "two", "usage": {"prompt_tokens": 15, "completion_tokens": 3}}},
    ]

    async def twice(client: ChatClient) -> tuple[Usage, int, list[Usage]]:
        first = await client.complete([user("a")])
        second = await client.complete([user("b")])
        return client.usage, client.calls, [first.usage, second.usage]

    with ScriptedLLM(steps) as llm:
        usage, calls, each = talk(settings(llm.base_url), twice)
    assert each == [Usage(10, 2, 12), Usage(15, 3, 18)]
    assert usage == Usage(25, 5, 30) == each[0] + each[1]
    assert calls == 2


def test_tool_call_round_trip() -> None:
    """A tool call comes back under its wire name, and its result goes back as a tool message."""

    async def conversation(client: ChatClient) -> tuple[Completion, Completion]:
        messages = [user("What do my notes say?")]
        first = await client.complete(messages, tools=TOOLS[:1], tool_choice="auto")
        messages.append(assistant(first))
        for call in first.tool_calls:
            messages.append(tool_result(call.id, "remember the milk"))
        return first, await client.complete(messages, tools=TOOLS[:1])

    with ScriptedLLM(SCRIPTS / "tool_then_answer.json") as llm:
        first, second = talk(settings(llm.base_url), conversation)
        assert llm.failures == []
    [call] = first.tool_calls
    assert first.content is None
    assert first.finish_reason == "tool_calls"
    assert (call.id, tool_name(call.name), call.parsed()) == (
        "call_read",
        "fs.read",
        {"path": "notes.txt"},
    )
    assert llm.requests[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "fs__read",
                "description": "Read a text file.",
                "parameters": READ_SCHEMA,
            },
        }
    ]
    assert llm.requests[0]["tool_choice"] == "auto"
    assert llm.requests[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_read",
                    "type": "function",
                    "function": {"name": "fs__read", "arguments": '{"path": "notes.txt"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_read", "content": "remember the milk"},
    ]
    assert second.content == "The notes say: remember the milk."


def test_streamed_content_tokens() -> None:
    """Streamed content reaches on_token piece by piece, in order; usage comes from the end."""
    content = "The quick brown fox jumps over the lazy dog, twice."
    tokens: list[str] = []
    with ScriptedLLM([{"expect": {"stream": True}, "reply": {"content": content}}]) as llm:
        completion = ask(settings(llm.base_url), on_token=tokens.append)
        assert llm.failures == []
    assert len(tokens) > 5
    assert "".join(tokens) == completion.content == content
    assert completion.finish_reason == "stop"
    assert completion.usage.total_tokens > 0
    assert completion.raw is None
    assert llm.requests[0]["stream"] is True
    assert llm.requests[0]["stream_options"] == {"include_usage": True}
    assert llm.headers[0]["accept"] == "text/event-stream"


def test_streamed_parallel_tool_calls_reassembled() -> None:
    """Two parallel tool calls streamed in interleaved small fragments come back whole."""
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    script = json.loads((SCRIPTS / "parallel_tools.json").read_text())
    reply = script[0]["reply"]
    with ScriptedLLM(script) as llm:
        completion = ask(settings(llm.base_url), tools=TOOLS, on_token=on_token)
        assert llm.failures == []
    assert completion.tool_calls == [
        ToolCall(call["id"], call["name"], call["arguments"]) for call in reply["tool_calls"]
    ]
    assert [tool_name(call.name) for call in completion.tool_calls] == ["fs.read", "web.fetch"]
    assert completion.tool_calls[1].parsed() == {
        "url": "https://example.com/a?b=c&d=é",
        "timeout": 5,
    }
    assert "".join(tokens) == completion.content == reply["content"]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(120, 48, 168)


def test_stream_without_on_token() -> None:
    """stream=True without on_token still assembles the answer."""
    with ScriptedLLM([{"expect": {"stream": True}, "reply": {"content": "quiet stream"}}]) as llm:
        completion = ask(settings(llm.base_url), stream=True)
        assert llm.failures == []
    assert completion.content == "quiet stream"


def test_on_token_without_streaming_gets_the_whole_content() -> None:
    """With stream=False, on_token gets the content once."""
    tokens: list[str] = []
    with ScriptedLLM([{"expect": {"stream": False}, "reply": {"content": "all at once"}}]) as llm:
        ask(settings(llm.base_url), stream=False, on_token=tokens.append)
        assert llm.failures == []
    assert tokens == ["all at once"]


def test_requests_are_byte_stable() -> None:
    """The same conversation is sent as the same bytes each time."""
    steps = [{"reply": {"content": "x"}}, {"reply": {"content": "y"}}]
    conversation = [system("Ünïcode stays as is."), user("same")]

    async def twice(client: ChatClient) -> None:
        await client.complete(conversation, tools=TOOLS)
        await client.complete(conversation, tools=TOOLS)

    with ScriptedLLM(steps) as llm:
        talk(settings(llm.base_url), twice)
    assert llm.raw_requests[0] == llm.raw_requests[1]
    assert "Ünïcode".encode() in llm.raw_requests[0]


def test_retry_on_429_then_success() -> None:
    """A 429 is retried after the Retry-After delay, then the answer comes back."""
    steps = [
        {"status": 429, "headers": {"Retry-After": "0"}},
        {"reply": {"content": "after the limit"}},
    ]
    sleeps = Sleeps()
    with ScriptedLLM(steps) as llm:
        config = settings(llm.base_url, backoff=5.0)
        completion = talk(config, lambda client: client.complete([user("hi")]), sleeps=sleeps)
    assert completion.content == "after the limit"
    assert sleeps == [0.0]
    assert len(llm.requests) == 2
    assert llm.raw_requests[0] == llm.raw_requests[1]


def test_retry_on_500_then_success() -> None:
    """A 500 is retried after the backoff delay."""
    sleeps = Sleeps()
    with ScriptedLLM([{"status": 500}, {"reply": {"content": "recovered"}}]) as llm:
        completion = talk(
            settings(llm.base_url), lambda client: client.complete([user("hi")]), sleeps=sleeps
        )
    assert completion.content == "recovered"
    assert sleeps == [0.001]


def test_flaky_script_retries_both() -> None:
    """429 then 500 then success: two retries, usage counted once."""
    sleeps = Sleeps()

    async def once(client: ChatClient) -> tuple[Completion, int]:
        return await client.complete([user("hi")]), client.calls

    with ScriptedLLM(SCRIPTS / "flaky.json") as llm:
        completion, calls = talk(settings(llm.base_url), once, sleeps=sleeps)
    assert completion.content == "Third time lucky."
    assert calls == 1
    assert sleeps == [0.0, 0.002]


def test_server_errors_exhaust_retries() -> None:
    """A 503 on every attempt ends in LLMServerError after max_retries, with doubling delays."""
    sleeps = Sleeps()
    with ScriptedLLM([{"status": 503, "error": "overloaded"}] * 3) as llm:
        config = settings(llm.base_url, max_retries=2)
        with pytest.raises(LLMServerError) as caught:
            talk(config, lambda client: client.complete([user("hi")]), sleeps=sleeps)
    assert (caught.value.status, caught.value.attempts) == (503, 3)
    assert "overloaded" in str(caught.value) and "after 3 attempts" in str(caught.value)
    assert sleeps == [0.001, 0.002]
    assert len(llm.requests) == 3


def test_rate_limit_exhausted() -> None:
    """429 on every attempt ends in LLMRateLimitError; Retry-After is capped by max_backoff."""
    sleeps = Sleeps()
    with ScriptedLLM([{"status": 429, "headers": {"Retry-After": "30"}}] * 2) as llm:
        config = settings(llm.base_url, max_retries=1, max_backoff=0.05)
        with pytest.raises(LLMRateLimitError) as caught:
            talk(config, lambda client: client.complete([user("hi")]), sleeps=sleeps)
    assert (caught.value.status, caught.value.attempts) == (429, 2)
    assert sleeps == [0.05]


def test_unauthorized_is_not_retried() -> None:
    """A 401 raises LLMAuthError at once: the server sees exactly one request."""
    with ScriptedLLM([{"status": 401, "error": "bad key"}, {"reply": {"content": "no"}}]) as llm:
        with pytest.raises(LLMAuthError, match="bad key") as caught:
            ask(settings(llm.base_url))
        assert len(llm.requests) == 1
    assert (caught.value.status, caught.value.attempts) == (401, 1)
    assert isinstance(caught.value, LoomError)


def test_bad_request_is_not_retried() -> None:
    """A 400 raises LLMRequestError carrying the server's message, without retrying."""
    with ScriptedLLM([{"status": 400, "error": "messages: too long"}] * 2) as llm:
        with pytest.raises(LLMRequestError) as caught:
            ask(settings(llm.base_url))
        assert len(llm.requests) == 1
    assert caught.value.status == 400
    assert caught.value.server_message == "messages: too long"


def test_failed_expectation_surfaces_as_request_error() -> None:
    """A request the script did not expect is refused with what differed."""
    step = {"expect": {"tools": ["fs__read"]}, "reply": {"content": "x"}}
    differed = r"tools: expected \['fs__read'\], got \[\]"
    with ScriptedLLM([step]) as llm, pytest.raises(LLMRequestError, match=differed):
        ask(settings(llm.base_url))
    assert len(llm.failures) == 1


def test_malformed_json_body() -> None:
    """A 200 whose body is not JSON raises LLMResponseError."""
    with (
        ScriptedLLM([{"raw": "not json"}]) as llm,
        pytest.raises(LLMResponseError, match="not JSON"),
    ):
        ask(settings(llm.base_url))


def test_body_without_choices() -> None:
    """JSON that is not a chat completion raises LLMResponseError."""
    steps = [{"raw": '{"object": "list"}'}]
    with ScriptedLLM(steps) as llm, pytest.raises(LLMResponseError, match="no choices"):
        ask(settings(llm.base_url))


def test_broken_sse_event() -> None:
    """A stream event that is not JSON raises LLMResponseError."""
    steps = [
        {"sse_raw": ['data: {"choices": [{"index": 0, "delta": {"content": "He', "data: [DONE]"]}
    ]
    with ScriptedLLM(steps) as llm, pytest.raises(LLMResponseError, match="not JSON"):
        ask(settings(llm.base_url), stream=True)


def test_sse_ending_early() -> None:
    """A stream that ends with neither a finish reason nor [DONE] raises LLMResponseError."""
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    steps = [{"sse_raw": ["data: " + json.dumps(chunk)]}]
    with ScriptedLLM(steps) as llm, pytest.raises(LLMResponseError, match="ended before"):
        ask(settings(llm.base_url), stream=True)


def test_stream_cut_after_tokens_is_not_retried() -> None:
    """A stream cut after tokens were delivered is not retried (they would come twice)."""
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    steps = [{"sse_raw": ["data: " + json.dumps(chunk)], "cut": True}, {"reply": {"content": "x"}}]
    tokens: list[str] = []
    with ScriptedLLM(steps) as llm:
        with pytest.raises(LLMConnectionError) as caught:
            ask(settings(llm.base_url), on_token=tokens.append)
        assert len(llm.requests) == 1
    assert tokens == ["Hel"]
    assert caught.value.attempts == 1


def test_dropped_connection_is_retried() -> None:
    """A connection closed without an answer is retried."""
    with ScriptedLLM([{"drop": True}, {"reply": {"content": "back"}}]) as llm:
        assert ask(settings(llm.base_url)).content == "back"
        assert len(llm.requests) == 2


def test_connection_refused(refused_url: str) -> None:
    """A port nobody listens on ends in LLMConnectionError after the retries."""
    sleeps = Sleeps()
    config = settings(refused_url, max_retries=2)
    with pytest.raises(LLMConnectionError) as caught:
        talk(config, lambda client: client.complete([user("hi")]), sleeps=sleeps)
    assert caught.value.attempts == 3
    assert isinstance(caught.value, ConnectionError)
    assert sleeps == [0.001, 0.002]


def test_read_timeout() -> None:
    """A server slower than the timeout ends in LLMTimeoutError."""
    with ScriptedLLM([{"delay": 30, "reply": {"content": "late"}}]) as llm:
        config = settings(llm.base_url, timeout=0.2, max_retries=0)
        with pytest.raises(LLMTimeoutError) as caught:
            ask(config)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.attempts == 1


def test_closed_client_refuses() -> None:
    """complete() on a closed client raises LLMError."""

    async def closed() -> None:
        client = ChatClient(settings("http://127.0.0.1:9/v1"))
        await client.aclose()
        await client.complete([user("hi")])

    with pytest.raises(LLMError, match="closed"):
        asyncio.run(closed())


def test_unencodable_messages() -> None:
    """Messages that are not JSON raise LLMRequestError before anything is sent."""
    with ScriptedLLM([]) as llm:
        with pytest.raises(LLMRequestError, match="JSON"):
            talk(settings(llm.base_url), lambda c: c.complete([{"role": "user", "content": {1}}]))
        assert llm.requests == []


def test_missing_api_key_names_the_variable() -> None:
    """An unset API key variable raises LLMConfigError naming it."""
    config = settings("https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
    message = "llm.openai: the API key variable OPENAI_API_KEY is not set"
    with pytest.raises(LLMConfigError, match=message):
        resolve_api_key(config, {}, name="openai")
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        resolve_api_key(config, {"OPENAI_API_KEY": ""})
    assert resolve_api_key(config, {"OPENAI_API_KEY": "sk-1"}) == "sk-1"
    assert resolve_api_key(settings("http://127.0.0.1:11434/v1"), {}) is None


def test_config_validation_names_the_key() -> None:
    """Each invalid key of an [llm.NAME] table is named in the error."""
    table = {
        "openai": {"model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"},
        "local": {"base_url": "ftp://x", "model": "m", "temprature": 0.1},
    }
    with pytest.raises(LLMConfigError) as caught:
        load_llm_settings(table)
    message = str(caught.value)
    assert "llm.openai.base_url: field required" in message
    assert "llm.local.base_url: " in message and "http" in message
    assert "llm.local.temprature: extra inputs are not permitted" in message
    loaded = load_llm_settings({"local": {"base_url": "http://127.0.0.1:11434/v1/", "model": "m"}})
    assert loaded["local"].base_url == "http://127.0.0.1:11434/v1"
    assert loaded["local"].api_key_env is None


def test_bad_tool_arguments() -> None:
    """Arguments that are not a JSON object raise ToolArgumentsError from parsed()."""
    with pytest.raises(ToolArgumentsError, match="not valid JSON"):
        ToolCall("call_1", "fs__read", '{"path": "a"').parsed()
    with pytest.raises(ToolArgumentsError, match="must be a JSON object"):
        ToolCall("call_1", "fs__read", '["a"]').parsed()
    assert ToolCall("call_1", "fs__read", "").parsed() == {}


def test_wire_names_round_trip_and_refuse_collisions() -> None:
    """wire_name maps dots reversibly and refuses names that would collide."""
    for name in ("fs.read", "web.fetch", "shell", "a.b-c.d_e", "x1.y2"):
        assert tool_name(wire_name(name)) == name
    assert wire_name("fs.read") == "fs__read"
    for bad in ("fs__read", "a_.b", "a._b", "", "a..b", "a b", "x." + "y" * 63):
        with pytest.raises(ToolNameError):
            wire_name(bad)
    with pytest.raises(ToolNameError):
        tool_spec("fs.read", "dots are not wire names", READ_SCHEMA)
    assert tool_name("a___b") not in {"a.b", "a_.b"}
