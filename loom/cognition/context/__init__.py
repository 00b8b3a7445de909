"""Context engineering for the agent loop: what of a run goes into the next prompt.

Five techniques, each switched on or off in :class:`ContextConfig`:

* reduction: each observation cut to what the model needs by per-tool rules
  (:class:`Reducers`);
* masking: old observations replaced by a placeholder naming the call and its reference;
* compaction: the oldest steps summarized in groups, each group once (:class:`Summarizer`:
  :class:`LLMSummarizer`, :class:`ExtractiveSummarizer`);
* offloading: large outputs written to ``<workspace>/.offload`` and named by
  ``offload://<id>`` (:class:`OffloadStore`, read back with the ``context.read`` tool);
* a byte-stable prefix: system prompt, task and tools rendered the same way every call
  (:func:`stable_prefix`, :func:`stable_tools`).

:class:`ContextManager` puts them together; :func:`count_tokens` and
:func:`prompt_tokens` estimate the cost of a prompt without a tokenizer.
"""

from loom.cognition.context._manager import ContextManager
from loom.cognition.context._model import (
    ContextConfig,
    ContextConfigError,
    ContextError,
    ReducerError,
    Step,
    call_ref,
    canonical_json,
)
from loom.cognition.context._offload import (
    OffloadMissingError,
    OffloadRecord,
    OffloadRefError,
    OffloadStore,
    find_refs,
    parse_ref,
)
from loom.cognition.context._prefix import ToolListError, stable_prefix, stable_tools, wire_name
from loom.cognition.context._reducers import Limits, Reducer, Reducers, reduce_json
from loom.cognition.context._summarize import (
    ExtractiveSummarizer,
    LLMSummarizer,
    Observation,
    Summarizer,
    SummaryError,
)
from loom.cognition.context._tokens import count_tokens, prompt_tokens
from loom.cognition.context._tool import context_read

__all__ = [
    "ContextConfig",
    "ContextConfigError",
    "ContextError",
    "ContextManager",
    "ExtractiveSummarizer",
    "LLMSummarizer",
    "Limits",
    "Observation",
    "OffloadMissingError",
    "OffloadRecord",
    "OffloadRefError",
    "OffloadStore",
    "Reducer",
    "ReducerError",
    "Reducers",
    "Step",
    "Summarizer",
    "SummaryError",
    "ToolListError",
    "call_ref",
    "canonical_json",
    "context_read",
    "count_tokens",
    "find_refs",
    "parse_ref",
    "prompt_tokens",
    "reduce_json",
    "stable_prefix",
    "stable_tools",
    "wire_name",
]
