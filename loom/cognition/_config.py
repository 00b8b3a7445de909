"""``[llm.NAME]`` tables: how to reach one OpenAI-compatible chat-completions endpoint.

Read at a program's edge: the CLI parses the TOML, calls :func:`load_llm_settings`, and
resolves the API key with :func:`resolve_api_key` from ``os.environ``. The library never
reads the environment.

Example::

    [llm.openai]
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"

    [llm.local]                       # Ollama; vLLM and llama.cpp look the same
    base_url = "http://127.0.0.1:11434/v1"
    model = "qwen2.5:7b"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from loom.errors import LLMConfigError

__all__ = ["LLMSettings", "load_llm_settings", "resolve_api_key"]


class LLMSettings(BaseModel):
    """One ``[llm.NAME]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    """The API root, ``http(s)://...`` up to and including ``/v1``; requests go to
    ``{base_url}/chat/completions``."""
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    """The name of the environment variable holding the key; none for servers without
    one (Ollama, vLLM)."""
    temperature: float | None = Field(default=0.2, ge=0.0, le=2.0)
    """Sampling temperature; none leaves it out (models that accept only their default)."""
    max_tokens: PositiveInt | None = None
    """The completion's token limit; none lets the server decide."""
    timeout: PositiveFloat = 60.0
    """Seconds to connect, and between two reads of the answer."""
    max_retries: NonNegativeInt = 4
    """Retries after the first attempt, on 429, 500, 502, 503, 504 and broken connections."""
    backoff: NonNegativeFloat = 0.5
    """Seconds before the first retry; doubled for each next one."""
    max_backoff: NonNegativeFloat = 20.0
    """The longest wait between two attempts, ``Retry-After`` included."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP headers sent with every request (``OpenAI-Organization``...)."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest:
            raise ValueError("must be an http:// or https:// URL")
        return value


def load_llm_settings(table: Mapping[str, Any]) -> dict[str, LLMSettings]:
    """Validate the ``[llm]`` table of a parsed TOML file: one sub-table per provider.

    Args:
        table: ``{"openai": {...}, "local": {...}}``.

    Returns:
        The settings of each provider, by name.

    Raises:
        LLMConfigError: the table is not a table of tables, or a key is missing, unknown or
            invalid; the message names every bad key (``llm.openai.base_url: field
            required``).
    """
    if not isinstance(table, Mapping):
        raise LLMConfigError("llm: must be a table of named providers ([llm.NAME])")
    result: dict[str, LLMSettings] = {}
    problems: list[str] = []
    for name, section in table.items():
        if not isinstance(section, Mapping):
            problems.append(f"llm.{name}: must be a table")
            continue
        try:
            result[name] = LLMSettings.model_validate(dict(section))
        except ValidationError as exc:
            problems.extend(
                f"llm.{'.'.join(str(part) for part in (name, *error['loc']))}: "
                f"{_lower_first(error['msg'])}"
                for error in exc.errors()
            )
    if problems:
        raise LLMConfigError("; ".join(problems))
    return result


def resolve_api_key(
    settings: LLMSettings, environ: Mapping[str, str], *, name: str | None = None
) -> str | None:
    """The API key of ``settings``, read from ``environ`` (the CLI passes ``os.environ``).

    Args:
        settings: the provider's settings.
        environ: where to look ``settings.api_key_env`` up.
        name: the provider's name in ``[llm.NAME]``, for the error message.

    Returns:
        The key, or ``None`` when the provider needs none (``api_key_env`` unset).

    Raises:
        LLMConfigError: ``api_key_env`` names a variable that is not set or is empty.
    """
    variable = settings.api_key_env
    if variable is None:
        return None
    key = environ.get(variable, "").strip()
    if not key:
        where = f"llm.{name}" if name else "llm"
        raise LLMConfigError(f"{where}: the API key variable {variable} is not set")
    return key


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
