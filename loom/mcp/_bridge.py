"""``McpBridge``: a worker that serves MCP servers' tools on the mesh as ``NAME.TOOL``.

Each server is a :class:`ServerLink`; the bridge turns what the links list into
:class:`~loom.tools.SchemaTool` s and announces the whole set again whenever a list
changes, so tools appear and disappear on the mesh without a restart.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mcp_types as types
import zmq
from mcp import Client
from mcp.shared.dispatcher import ProgressFnT

from loom.actor import Actor
from loom.config import broker_address
from loom.errors import InvalidParamsError
from loom.logs import configure_logging, get_logger, logging_configured
from loom.mcp._link import Hook, Hooks, ServerLink
from loom.mcp._results import content_items, joined_text, tool_result
from loom.mcp._settings import McpServerSettings
from loom.protocol import MAX_TOOLS
from loom.session import KeySpec, check_endpoint, serve_until_signalled
from loom.tools import SchemaTool, Tool, ToolContext, Worker

__all__ = ["McpBridge", "mesh_name"]

_WORD = re.compile(r"[^A-Za-z0-9_-]")
_HOOK_TIMEOUT = 120.0
"""Seconds a server's sampling or elicitation request waits for the mesh's reply."""
_MAX_ITEMS = 10_000
_MAX_PAGES = 100
"""Resources or prompts one listing returns at most."""

_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_READ = {
    "type": "object",
    "properties": {"uri": {"type": "string", "description": "the resource's URI"}},
    "required": ["uri"],
    "additionalProperties": False,
}
_GET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "the prompt's name"},
        "arguments": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "the prompt's arguments, by name",
        },
    },
    "required": ["name"],
    "additionalProperties": False,
}


def mesh_name(server: str, tool: str) -> str:
    """``server.tool`` with each dot-separated word of the MCP name kept to Loom's
    alphabet (letters, digits, ``_``, ``-``; anything else becomes ``_``)."""
    words = [_WORD.sub("_", word) or "_" for word in tool.split(".")]
    return ".".join([server, *words])


class McpBridge:
    """Serves the tools (and resources and prompts) of MCP servers on a mesh.

    Args:
        servers: the servers by name (``[mcp.servers.NAME]``); their tools are served as
            ``NAME.TOOL``.
        broker: the broker's endpoint (``None``: ``$LOOM_BROKER``, else the default).
        name: the worker's name (default ``mcp-<pid>``).
        key: the CURVE keys to present (as for ``Worker``).
        ask: where a server's sampling and elicitation requests go when its settings
            name a topic: ``ask(topic, params)`` returns the result (``None``: every such
            request is answered "not supported").
    """

    def __init__(
        self,
        servers: Mapping[str, McpServerSettings],
        *,
        broker: str | None = None,
        name: str | None = None,
        key: KeySpec = None,
        context: zmq.Context[Any] | None = None,
        connect_timeout: float = 10.0,
        ask: Hook | None = None,
    ) -> None:
        self.log = get_logger("loom.mcp")
        self._jail: Path | None = None
        self._asker: Actor | None = None
        self._own_asker = ask is None and any(s.sampling or s.elicitation for s in servers.values())
        if self._own_asker:  # an actor of its own asks the topics
            ask = self._ask_mesh
        hooks = Hooks(ask)
        self.links = {
            server: ServerLink(
                server,
                settings,
                on_change=self._changed,
                hooks=hooks,
                jail=self._jail_dir if settings.sandbox is not None else None,
            )
            for server, settings in servers.items()
        }
        self.worker = Worker(
            [],
            broker=broker,
            name=name or f"mcp-{os.getpid()}",
            key=key,
            context=context,
            connect_timeout=connect_timeout,
        )
        self._announcing: asyncio.Task[None] | None = None
        self._again = False
        self._started = False

    @property
    def _jail_dir(self) -> Path:
        """The working directory of sandboxed servers whose policy names none."""
        if self._jail is None:
            self._jail = Path(tempfile.mkdtemp(prefix="loom-mcp-"))
        return self._jail

    # --- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM, stop. Blocks; for programs."""
        self.worker.broker = check_endpoint(broker_address(self.worker.broker))
        if not logging_configured():
            configure_logging()
        asyncio.run(serve_until_signalled(self.start, self.stop))

    async def start(self) -> None:
        """Attach to the broker, then start every server (at once) and serve the tools
        of those that answered within their ``connect_timeout``; the others keep being
        tried, and their tools appear when they answer.

        Raises:
            BrokerUnavailableError, AuthenticationError: as for ``Worker.start``.
        """
        await self.worker.start()
        if self._own_asker:
            self._asker = Actor(
                name=f"{self.worker.name}-requests",
                broker=self.worker.broker,
                key=self.worker.key,
                unique=False,
            )
            await self._asker.start()
        self._started = True
        up = await asyncio.gather(*(link.start() for link in self.links.values()))
        for link, answered in zip(self.links.values(), up, strict=True):
            if not answered:
                self.log.warning("mcp server not up yet: still trying", server=link.name)
        await self._announce_now()

    async def stop(self) -> None:
        """Stop taking calls, end every server (their process groups), detach."""
        await self.worker.stop()
        await asyncio.gather(*(link.stop() for link in self.links.values()))
        if self._asker is not None:
            await self._asker.stop()
        if self._announcing is not None:
            self._announcing.cancel()
        if self._jail is not None:
            shutil.rmtree(self._jail, ignore_errors=True)

    async def _ask_mesh(self, topic: str, params: dict[str, Any]) -> dict[str, Any]:
        """A server's sampling or elicitation request, as a mesh request on ``topic``:
        the first reply is the result (``docs/mcp.md``)."""
        if self._asker is None:
            raise RuntimeError("the bridge is not started")
        answer = await self._asker.request(topic, params, timeout=_HOOK_TIMEOUT)
        if not isinstance(answer, dict):
            raise TypeError(f"the reply on {topic} is not a map")
        return answer

    # --- the tool set ------------------------------------------------------------

    def _changed(self) -> None:
        """A link's lists changed: announce the new set (once per burst)."""
        if not self._started:
            return
        if self._announcing is not None and not self._announcing.done():
            self._again = True
            return
        self._announcing = asyncio.get_running_loop().create_task(self._announce_now())

    async def _announce_now(self) -> None:
        while True:
            self._again = False
            try:
                await self.worker.replace_tools(self.tools())
            except Exception as exc:  # the broker refused the set: keep the old one
                self.log.error("mcp tools not announced", error=str(exc))
            if not self._again:
                return

    def tools(self) -> list[Tool]:
        """What the servers offer now, as mesh tools."""
        made: dict[str, Tool] = {}
        for link in self.links.values():
            for item in self._link_tools(link):
                if item.name in made:
                    self.log.warning("mcp tool name taken: left out", tool=item.name)
                elif len(made) >= MAX_TOOLS:
                    self.log.warning("too many mcp tools for one worker: left out", tool=item.name)
                else:
                    made[item.name] = item
        return list(made.values())

    def _link_tools(self, link: ServerLink) -> list[Tool]:
        settings = link.settings
        tools: list[Tool] = []
        for listed in link.tools:
            if not any(fnmatch.fnmatchcase(listed.name, p) for p in settings.tools):
                continue
            try:
                tools.append(_mcp_tool(link, listed))
            except Exception as exc:  # one bad tool (a server is a peer) leaves only itself out
                error = str(exc)[:500]
                self.log.warning("mcp tool left out", server=link.name, error=error)
        if link.resources:
            tools += [
                _helper(link, "resources.list", "List the server's resources.", _list_resources),
                _helper(
                    link,
                    "resources.templates",
                    "List the server's resource templates (URI patterns).",
                    _list_templates,
                ),
                _helper(link, "resources.read", "Read a resource by URI.", _read, _READ),
            ]
        if link.prompts:
            tools += [
                _helper(link, "prompts.list", "List the server's prompts.", _list_prompts),
                _helper(link, "prompts.get", "Get a prompt, its arguments filled.", _get, _GET),
            ]
        return tools


def _mcp_tool(link: ServerLink, listed: types.Tool) -> SchemaTool:
    settings = link.settings
    override = settings.tool.get(listed.name)
    hints = listed.annotations
    annotations: dict[str, Any] = {}
    if hints is not None:
        annotations = hints.model_dump(mode="json", by_alias=True, exclude_none=True)
    if listed.title and "title" not in annotations:
        annotations["title"] = listed.title
    annotations["mcp"] = {"server": link.name, "tool": listed.name}
    idempotent = bool(hints is not None and hints.read_only_hint)
    if override is not None and override.idempotent is not None:
        idempotent = override.idempotent
    approval = settings.approval
    if override is not None and override.approval is not None:
        approval = override.approval
    timeout = settings.timeout
    if override is not None and override.timeout is not None:
        timeout = override.timeout
    returns: dict[str, Any] = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "content": {"type": "array", "items": {"type": "object"}},
            "structured": listed.output_schema or {},
        },
    }
    original = listed.name

    async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
        async def send(client: Client, progress: ProgressFnT) -> types.CallToolResult:
            return await client.call_tool(original, arguments, progress_callback=progress)

        result = await link.request(send, context, what=f"tools/call {original}")
        return tool_result(result, context.tool)

    return SchemaTool(
        mesh_name(link.name, listed.name),
        call,
        dict(listed.input_schema),
        description=listed.description or "",
        returns=returns,
        annotations=annotations,
        timeout=timeout,
        idempotent=idempotent,
        concurrency=settings.concurrency,
        approval=approval,
    )


def _helper(
    link: ServerLink,
    suffix: str,
    description: str,
    action: Any,
    schema: dict[str, Any] = _NO_ARGUMENTS,
) -> SchemaTool:
    async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
        async def send(client: Client, _: ProgressFnT) -> Any:
            return await action(client, arguments)

        return await link.request(send, context, what=suffix.replace(".", "/"))

    return SchemaTool(
        f"{link.name}.{suffix}",
        call,
        schema,
        description=f"{description} (MCP server {link.name})",
        annotations={"readOnlyHint": True, "mcp": {"server": link.name, "method": suffix}},
        timeout=link.settings.timeout,
        idempotent=True,
        concurrency=link.settings.concurrency,
        approval=link.settings.approval,
    )


async def _pages(fetch: Any, field: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        if len(items) >= _MAX_ITEMS:
            break
        page = await fetch(cursor=cursor)
        items += [item.model_dump(mode="json", exclude_none=True) for item in getattr(page, field)]
        cursor = page.next_cursor
        if not cursor:
            break
    return items[:_MAX_ITEMS]


async def _list_resources(client: Client, _: dict[str, Any]) -> dict[str, Any]:
    return {"resources": await _pages(client.list_resources, "resources")}


async def _list_templates(client: Client, _: dict[str, Any]) -> dict[str, Any]:
    return {"templates": await _pages(client.list_resource_templates, "resource_templates")}


async def _list_prompts(client: Client, _: dict[str, Any]) -> dict[str, Any]:
    return {"prompts": await _pages(client.list_prompts, "prompts")}


async def _read(client: Client, arguments: dict[str, Any]) -> dict[str, Any]:
    uri = _text_argument(arguments, "uri")
    result = await client.read_resource(uri)
    contents = [item.model_dump(mode="json", exclude_none=True) for item in result.contents]
    text = "\n\n".join(item["text"] for item in contents if "text" in item)
    return {"text": text, "contents": contents}


async def _get(client: Client, arguments: dict[str, Any]) -> dict[str, Any]:
    name = _text_argument(arguments, "name")
    given = arguments.get("arguments") or {}
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise InvalidParamsError("arguments: a map of strings")
    result = await client.get_prompt(name, given)
    messages = [
        {"role": message.role, "content": content_items([message.content])[0]}
        for message in result.messages
    ]
    text = joined_text([message.content for message in result.messages])
    return {"description": result.description, "messages": messages, "text": text}


def _text_argument(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidParamsError(f"{name}: a non-empty string is required")
    return value
