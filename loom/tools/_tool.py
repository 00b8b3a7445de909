"""``@tool``: a function (sync or async) with a pydantic argument schema, served by workers."""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, overload

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from loom.errors import InvalidParamsError, ToolDefinitionError
from loom.protocol import MAX_CONCURRENCY, MAX_SCHEMA_BYTES, ToolSpec, encode_body
from loom.tools.sandbox._policy import Sandbox

__all__ = ["SchemaTool", "Tool", "ToolContext", "tool"]

_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_SECTIONS = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples|Example|Note|Notes):\s*$"
)
_ENTRY = re.compile(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_PROGRESS_EVERY = 0.05
"""Seconds between two progress messages of one call; reports in between are folded."""


class ToolContext:
    """What a running tool may ask of its worker. Declare a parameter of this type (any
    name) and the worker passes it in; it is not part of the tool's schema.

    Attributes:
        call: the broker's token for this call (unique per broker run).
        tool: the tool's name.
        timeout: the call's timeout in seconds. The deadline runs from the call's arrival
            at the broker (time queued counts); each progress report moves it to
            ``timeout`` seconds after the report.
        sandbox: the tool's effective sandbox policy (``None``: not sandboxed).
        jail: the tool's working directory when it has a policy (the process's current
            directory when it runs sandboxed), else ``None``.
        caller: the caller's identity, as the broker knows it (``anonymous`` on an
            ``--insecure`` broker; ``None`` when the call came from elsewhere).
    """

    __slots__ = (
        "_cancelled",
        "_last",
        "_report",
        "call",
        "caller",
        "jail",
        "sandbox",
        "timeout",
        "tool",
    )

    def __init__(
        self,
        call: int,
        tool: str,
        timeout: float,
        report: Callable[[int, Any], None],
        *,
        sandbox: Sandbox | None = None,
        jail: Path | None = None,
        caller: str | None = None,
    ) -> None:
        self.call = call
        self.caller = caller
        self.tool = tool
        self.timeout = timeout
        self.sandbox = sandbox
        self.jail = jail
        self._report = report
        self._cancelled = False
        self._last = 0.0

    @property
    def cancelled(self) -> bool:
        """True once the caller cancelled or the call timed out. An ``async def`` tool is
        cancelled for you; a plain ``def`` tool (it runs in a thread) should check this."""
        return self._cancelled

    def progress(self, data: Any = None) -> None:
        """Report progress: moves the call's deadline to ``timeout`` seconds from now and
        passes ``data`` (anything msgpack-able) to the caller. Safe from the tool's
        thread. A report less than 50 ms after the one before is dropped (data and all):
        report the final state with the result, not with progress."""
        now = time.monotonic()
        if now - self._last >= _PROGRESS_EVERY:
            self._last = now
            self._report(self.call, data)

    def cancel(self) -> None:
        """Mark the call cancelled (the worker does this on CANCEL)."""
        self._cancelled = True


class Tool:
    """A function served over the mesh. Made by :func:`tool`; still callable directly.

    Attributes:
        name: the tool's name on the mesh (``fs.read``).
        description: what it does, for people and models (the docstring's text).
        timeout: seconds a call may take, counted from its arrival at the broker; each
            progress report moves the deadline to ``timeout`` seconds after it (``None``:
            the broker's default).
        idempotent: a call may be run again on another worker when its worker dies.
        concurrency: how many calls one worker runs at once.
        sandbox: the policy its calls run under (``None``: in the worker's process, unless
            the worker sandboxes every tool).
        approval: each call waits for a person's (or an approver actor's) yes first.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
        concurrency: int | None = None,
        sandbox: Sandbox | None = None,
        approval: bool = False,
    ) -> None:
        self.fn = fn
        self.sandbox = sandbox
        self.approval = approval
        self.is_async = inspect.iscoroutinefunction(fn)
        self.name = name or f"{fn.__module__}.{fn.__name__}"
        if not _NAME.match(self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r}: use dot-separated words of letters, digits, _ and -"
            )
        if timeout is not None and timeout <= 0:
            raise ToolDefinitionError(f"tool {self.name!r}: timeout must be positive")
        self.timeout = timeout
        self.idempotent = idempotent
        self.concurrency = concurrency if concurrency is not None else 8 if self.is_async else 1
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ToolDefinitionError(
                f"tool {self.name!r}: concurrency must be from 1 to {MAX_CONCURRENCY}"
            )
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self.description = summary
        self.context_param: str | None = None
        self._params: list[tuple[str, str]] = []
        """(field name in the model, parameter name), in signature order."""
        self.model = self._build_model(arg_docs)
        self.schema: dict[str, Any] = self.model.model_json_schema(by_alias=True)
        self.returns: dict[str, Any] | None = self._return_schema()
        self.annotations: dict[str, Any] | None = None
        self._check_size()

    def _check_size(self) -> None:
        size = len(encode_body(self.spec()))
        if size > MAX_SCHEMA_BYTES:  # the broker would refuse the worker's READY
            raise ToolDefinitionError(
                f"tool {self.name!r}: its spec (schemas, description) is {size} bytes, "
                f"more than {MAX_SCHEMA_BYTES}"
            )

    def _build_model(self, arg_docs: dict[str, str]) -> type[BaseModel]:
        try:
            hints = inspect.get_annotations(self.fn, eval_str=True)
        except Exception as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: cannot resolve hints: {exc}") from exc
        fields: dict[str, Any] = {}
        for param in inspect.signature(self.fn).parameters.values():
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                self.context_param = param.name
                continue
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise ToolDefinitionError(
                    f"tool {self.name!r}: parameter {param.name!r} must be passable by name"
                )
            default = ... if param.default is param.empty else param.default
            field = Field(default, alias=param.name, description=arg_docs.get(param.name))
            fields[f"p_{param.name}"] = (annotation, field)  # no clash with BaseModel names
            self._params.append((f"p_{param.name}", param.name))
        try:
            return create_model(
                self.name.replace(".", "_").replace("-", "_"),
                __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
                **fields,
            )
        except Exception as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: {exc}") from exc

    def _return_schema(self) -> dict[str, Any] | None:
        annotation = inspect.signature(self.fn, eval_str=True).return_annotation
        if annotation is inspect.Signature.empty:
            return None
        try:
            return TypeAdapter(annotation).json_schema()
        except Exception:  # a return type pydantic cannot describe: announced as unknown
            return None

    def spec(self) -> dict[str, Any]:
        """What a worker announces for this tool in READY."""
        return {
            "name": self.name,
            "description": self.description,
            "schema": self.schema,
            "returns": self.returns,
            "timeout": self.timeout,
            "idempotent": self.idempotent,
            "concurrency": self.concurrency,
            "approval": self.approval,
            "annotations": self.annotations,
        }

    def bind(self, args: Any) -> dict[str, Any]:
        """Validate call arguments and return the keyword arguments for the function.

        Raises:
            InvalidParamsError: ``args`` is not a map or does not match the schema; the
                message is pydantic's and names the field.
        """
        if not isinstance(args, dict):
            raise InvalidParamsError(
                f"arguments must be a map, not {type(args).__name__}", tool=self.name
            )
        try:
            model = self.model.model_validate(args)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(arguments)'}: {error['msg']}"
                for error in errors
            )
            message = f"invalid arguments for {self.name}: {problems}"
            raise InvalidParamsError(message, tool=self.name, details={"errors": errors}) from None
        return {param: getattr(model, field) for field, param in self._params}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


class SchemaTool(Tool):
    """A tool whose schema is given rather than read from a signature: a bridge to tools
    defined elsewhere (an MCP server's). ``fn`` is ``async def fn(arguments, context)``:
    the call's arguments as one map (checked to be a map, the rest is the far side's to
    validate) and its :class:`ToolContext`.

    Raises:
        ToolDefinitionError: a bad name, timeout or concurrency, or a spec too large.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[dict[str, Any], ToolContext], Awaitable[Any]],
        schema: dict[str, Any],
        *,
        description: str = "",
        returns: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
        concurrency: int = 8,
        approval: bool = False,
    ) -> None:
        if not _NAME.match(name):
            raise ToolDefinitionError(
                f"tool name {name!r}: use dot-separated words of letters, digits, _ and -"
            )
        if timeout is not None and timeout <= 0:
            raise ToolDefinitionError(f"tool {name!r}: timeout must be positive")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ToolDefinitionError(
                f"tool {name!r}: concurrency must be from 1 to {MAX_CONCURRENCY}"
            )
        self.fn = fn
        self.name = name
        self.sandbox = None
        self.approval = approval
        self.is_async = True
        self.timeout = timeout
        self.idempotent = idempotent
        self.concurrency = concurrency
        self.description = description
        self.context_param = "context"
        self._params = []
        self.schema = schema
        self.returns = returns
        self.annotations = annotations
        try:  # as the broker will read it: a spec it would refuse fails here, alone
            msgspec.convert(self.spec(), ToolSpec)
            self._check_size()
        except ToolDefinitionError:
            raise
        except (msgspec.ValidationError, ValueError, TypeError, OverflowError) as exc:
            raise ToolDefinitionError(f"tool {name!r}: {exc}"[:1000]) from None

    def bind(self, args: Any) -> dict[str, Any]:
        """``{"arguments": args}`` once ``args`` is a map.

        Raises:
            InvalidParamsError: ``args`` is not a map.
        """
        if not isinstance(args, dict):
            raise InvalidParamsError(
                f"arguments must be a map, not {type(args).__name__}", tool=self.name
            )
        return {"arguments": args}


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
    concurrency: int | None = None,
    sandbox: Sandbox | None = None,
    approval: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
    concurrency: int | None = None,
    sandbox: Sandbox | None = None,
    approval: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function (``def`` or ``async def``) a tool, bare or with options.

    The schema comes from the signature (pydantic; JSON Schema in ``.schema``), the
    description and argument descriptions from the Google-style docstring.

    Args:
        name: the tool's name (default ``module.function``).
        timeout: seconds a call may take; each progress report restarts the count.
        idempotent: the call may be retried on another worker if its worker dies.
        concurrency: calls one worker runs at once (default 8 for ``async def``, 1 for
            ``def``, which runs in a thread).
        sandbox: run each call in a sandboxed process under this policy.
        approval: each call waits for an approver's yes; no answer in time means DENIED.

    Raises:
        ToolDefinitionError: a parameter cannot be described, or an option is invalid.
    """

    def make(function: Callable[..., Any]) -> Tool:
        return Tool(
            function,
            name=name,
            timeout=timeout,
            idempotent=idempotent,
            concurrency=concurrency,
            sandbox=sandbox,
            approval=approval,
        )

    return make if fn is None else make(fn)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The text before the first section, and the ``Args:`` descriptions by name."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        header = _SECTIONS.match(stripped) if line == line.lstrip() else None
        if header:
            section, entry_indent, current = header.group(1), None, None
        elif section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters") and stripped:
            indent = len(line) - len(line.lstrip())
            entry_indent = indent if entry_indent is None else entry_indent
            entry = _ENTRY.match(stripped)
            if indent == entry_indent and entry:
                current = entry.group(1)
                args[current] = entry.group(2).strip()
            elif current is not None:
                args[current] = f"{args[current]} {stripped}".strip()
    return "\n".join(summary).strip(), args
