"""Cognition: LLM providers, the agent loop over mesh tools, context engineering
(``loom.cognition.context``), memory, sub-agents."""

from loom.cognition._actor import CognitiveActor
from loom.cognition._agent import AgentLoop, AgentResult, MeshTools
from loom.cognition._config import LLMSettings, load_llm_settings, resolve_api_key
from loom.cognition._memory import Memory, MemoryItem, MemoryStoreError
from loom.cognition._messages import Completion, ToolCall, Usage
from loom.cognition._provider import ChatClient
from loom.cognition._stub import ScriptedLLM, load_script
from loom.cognition.context import ContextConfig, ContextManager
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
    ToolArgumentsError,
    ToolNameError,
)

__all__ = [
    "AgentLoop",
    "AgentResult",
    "ChatClient",
    "CognitiveActor",
    "Completion",
    "ContextConfig",
    "ContextManager",
    "LLMAuthError",
    "LLMConfigError",
    "LLMConnectionError",
    "LLMError",
    "LLMRateLimitError",
    "LLMRequestError",
    "LLMResponseError",
    "LLMServerError",
    "LLMSettings",
    "LLMTimeoutError",
    "Memory",
    "MemoryItem",
    "MemoryStoreError",
    "MeshTools",
    "ScriptedLLM",
    "ToolArgumentsError",
    "ToolCall",
    "ToolNameError",
    "Usage",
    "load_llm_settings",
    "load_script",
    "resolve_api_key",
]
