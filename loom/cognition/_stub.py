"""A real loopback HTTP server speaking the OpenAI chat-completions API, playing a script:
the tests' LLM, and ``loom llm-stub`` for trying the agent loop offline.

Each ``POST /v1/chat/completions`` consumes the next step of the script (a JSON list, or
``{"steps": [...]}``). A step is one of::

    {"reply": {"content": "...", "tool_calls": [{"name": "fs__read", "arguments": "{}"}],
               "finish_reason": "...", "usage": {...}, "model": "...",
               "fragment": 3, "interleave": false}}
    {"status": 429, "headers": {"Retry-After": "0"}, "error": "slow down"}
    {"raw": "not json", "status": 200, "content_type": "application/json"}
    {"sse_raw": ["data: {...}", "data: [DONE]"], "cut": false}
    {"drop": true}                      # close the connection without an answer

A reply is served as JSON, or as server-sent events when the request says ``"stream":
true``: the content in word-sized chunks, each tool call's arguments in ``fragment``-sized
pieces (the first fragment carries the id and the name; ``interleave`` alternates
parallel calls), and a usage chunk when ``stream_options.include_usage`` asks for it.
Usage a step does not give is computed (``prompt_tokens = len(json.dumps(messages)) //
4``). ``sse_raw`` lines are sent as events; ``cut`` ends the body without its last chunk.

Any step may carry ``"delay": seconds`` (before answering) and ``"expect": {...}``
checks on the request: ``tools`` (function names), ``last_role``, ``contains`` (text
in some message), ``roles``, ``messages`` (count), ``model``, ``stream``,
``tool_choice``. A failed check answers 400 saying what differed, and is recorded in
``failures``. A request after the last step answers 400 too.

Python::

    with ScriptedLLM(steps_or_path) as llm:
        llm.base_url, llm.requests, llm.remaining, llm.failures

Command::

    loom llm-stub SCRIPT.json --port N [--record FILE.jsonl]

prints ``listening on http://127.0.0.1:PORT/v1`` and serves until SIGTERM or SIGINT (see
``docs/cognition.md``). Standard library only.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
KINDS = ("reply", "status", "raw", "sse_raw", "drop")
EXPECT_KEYS = frozenset(
    ("tools", "last_role", "contains", "roles", "messages", "model", "stream", "tool_choice")
)


def load_script(
    source: list[dict[str, Any]] | dict[str, Any] | str | Path,
) -> list[dict[str, Any]]:
    """The steps of a script given as steps, ``{"steps": [...]}`` or a JSON file's path.

    Raises:
        ValueError: a step is not an object with exactly one of the step kinds.
    """
    data: Any = source
    if isinstance(source, str | Path):
        data = json.loads(Path(source).read_text())
    if isinstance(data, dict):
        data = data.get("steps")
    if not isinstance(data, list):
        raise ValueError("a script is a list of steps (or {'steps': [...]})")
    for number, step in enumerate(data):
        kinds = [kind for kind in KINDS if isinstance(step, dict) and kind in step]
        if len(kinds) != 1:
            raise ValueError(f"step {number} must have exactly one of {KINDS}: {step!r}")
        unknown = set(step.get("expect", {})) - EXPECT_KEYS
        if unknown:
            raise ValueError(f"step {number}: unknown expect keys {sorted(unknown)}")
    return list(data)


class ScriptedLLM:
    """The server; ``with ScriptedLLM(script) as llm`` runs it in a thread.

    Attributes:
        requests: each request's decoded body (``None`` when it was not JSON), in order.
        raw_requests: each request's body bytes, as sent.
        headers: each request's headers (names in lower case).
        failures: what went wrong on the server side (failed expectations, extra
            requests, bodies that are not JSON).
    """

    def __init__(
        self,
        script: list[dict[str, Any]] | dict[str, Any] | str | Path,
        *,
        port: int = 0,
        record: str | Path | None = None,
    ) -> None:
        self._steps = load_script(script)
        self._next = 0
        self._record = Path(record) if record else None
        self.requests: list[Any] = []
        self.raw_requests: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.failures: list[str] = []
        self._changed = threading.Condition()
        self.closing = threading.Event()
        self._server = _Server((HOST, port), _Handler)
        self._server.llm = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def remaining(self) -> int:
        """Steps not consumed yet."""
        with self._changed:
            return len(self._steps) - self._next

    def start(self) -> ScriptedLLM:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Wait until ``count`` requests arrived; their bodies.

        Raises:
            AssertionError: fewer arrived within ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} requests of {count} in {timeout}s")
            return list(self.requests)

    def take(self, raw: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, Any] | None]:
        """Record one request; its number, decoded body and step (``None``: none left)."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._changed:
            number = len(self.requests)
            self.requests.append(body)
            self.raw_requests.append(raw)
            self.headers.append({name.lower(): value for name, value in headers.items()})
            step = None
            if self._next < len(self._steps):
                step = self._steps[self._next]
                self._next += 1
            if self._record is not None:
                with self._record.open("a") as out:
                    out.write(json.dumps(body) + "\n")
            self._changed.notify_all()
        return number, body, step

    def fail(self, problem: str) -> None:
        with self._changed:
            self.failures.append(problem)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    llm: ScriptedLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | TimeoutError):
            self.llm.fail(f"server error: {error!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # an idle keep-alive connection ends after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._error(404, f"no such path: {self.path}")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no such path: {self.path}")
            return
        llm = self.server.llm
        number, body, step = llm.take(raw, dict(self.headers))
        if body is None or not isinstance(body, dict):
            llm.fail(f"request {number}: the body is not a JSON object")
            self._error(400, "the request body is not a JSON object")
            return
        if step is None:
            llm.fail(f"request {number}: the script has no step left")
            self._error(400, f"scripted LLM: no step left for request {number}")
            return
        problems = _check(step.get("expect", {}), body)
        if problems:
            message = f"request {number}: expectation failed: " + "; ".join(problems)
            llm.fail(message)
            self._error(400, message)
            return
        if step.get("delay"):
            llm.closing.wait(float(step["delay"]))
        try:
            self._serve(step, body, number)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away

    def _serve(self, step: dict[str, Any], body: dict[str, Any], number: int) -> None:
        if "drop" in step:
            self.close_connection = True
        elif "status" in step:
            status = int(step["status"])
            message = step.get("error") or HTTPStatus(status).phrase
            error = {"message": message, "type": "scripted", "code": status}
            self._json(status, {"error": error}, step.get("headers", {}))
        elif "raw" in step:
            content_type = step.get("content_type", "application/json")
            self._send(int(step.get("status", 200)), step["raw"].encode(), content_type)
        elif "sse_raw" in step:
            self._events(step["sse_raw"], cut=bool(step.get("cut")))
        elif body.get("stream"):
            self._events(_stream_events(step["reply"], body, number))
        else:
            self._json(200, _completion(step["reply"], body, number))

    def _send(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "scripted", "code": status}})

    def _events(self, lines: list[str], *, cut: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            data = f"{line}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if cut:
            self.close_connection = True
        else:
            self.wfile.write(b"0\r\n\r\n")


def _check(expect: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """What differs between the expectations and the request."""
    found = body.get("messages")
    messages: list[Any] = found if isinstance(found, list) else []
    got: dict[str, Any] = {
        "tools": [tool.get("function", {}).get("name") for tool in body.get("tools") or []],
        "last_role": messages[-1].get("role") if messages else None,
        "roles": [message.get("role") for message in messages],
        "messages": len(messages),
        "model": body.get("model"),
        "stream": bool(body.get("stream")),
        "tool_choice": body.get("tool_choice"),
    }
    problems = []
    for key, wanted in expect.items():
        if key == "contains":
            texts = [_text(message.get("content")) for message in messages]
            for needle in [wanted] if isinstance(wanted, str) else wanted:
                if not any(needle in text for text in texts):
                    problems.append(f"no message contains {needle!r}")
        elif got[key] != wanted:
            problems.append(f"{key}: expected {wanted!r}, got {got[key]!r}")
    return problems


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _calls(reply: dict[str, Any], number: int) -> list[dict[str, str]]:
    return [
        {
            "id": call.get("id") or f"call_{number}_{index}",
            "name": call["name"],
            "arguments": call.get("arguments", "{}"),
        }
        for index, call in enumerate(reply.get("tool_calls") or [])
    ]


def _usage(reply: dict[str, Any], body: dict[str, Any]) -> dict[str, int]:
    if "usage" in reply:
        return dict(reply["usage"])
    prompt = len(json.dumps(body.get("messages", []))) // 4
    written = len(reply.get("content") or "") + sum(
        len(call["name"]) + len(call.get("arguments", "")) for call in reply.get("tool_calls", [])
    )
    completion = max(1, written // 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(reply: dict[str, Any]) -> str:
    return reply.get("finish_reason") or ("tool_calls" if reply.get("tool_calls") else "stop")


def _completion(reply: dict[str, Any], body: dict[str, Any], number: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    calls = _calls(reply, number)
    if calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in calls
        ]
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": 0,
        "model": reply.get("model") or body.get("model") or "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
        "usage": _usage(reply, body),
    }


def _stream_events(reply: dict[str, Any], body: dict[str, Any], number: int) -> list[str]:
    model = reply.get("model") or body.get("model") or "scripted"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [choice],
        }
        return "data: " + json.dumps(data)

    events = [chunk({"role": "assistant", "content": ""})]
    events += [
        chunk({"content": piece}) for piece in re.findall(r"\s*\S+|\s+", reply.get("content") or "")
    ]
    size = max(1, int(reply.get("fragment", 3)))
    per_call: list[list[str]] = []
    for index, call in enumerate(_calls(reply, number)):
        first = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        fragments = [chunk({"tool_calls": [first]})]
        args = call["arguments"]
        for start in range(0, len(args), size):
            piece = {"index": index, "function": {"arguments": args[start : start + size]}}
            fragments.append(chunk({"tool_calls": [piece]}))
        per_call.append(fragments)
    if reply.get("interleave"):
        longest = max((len(fragments) for fragments in per_call), default=0)
        events += [
            fragments[i] for i in range(longest) for fragments in per_call if i < len(fragments)
        ]
    else:
        events += [event for fragments in per_call for event in fragments]
    events.append(chunk({}, _finish(reply)))
    if (body.get("stream_options") or {}).get("include_usage"):
        data = {"id": f"chatcmpl-{number}", "object": "chat.completion.chunk", "created": 0}
        data.update(model=model, choices=[], usage=_usage(reply, body))
        events.append("data: " + json.dumps(data))
    events.append("data: [DONE]")
    return events
