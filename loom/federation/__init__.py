"""Federation: brokers on several hosts joined through NATS (``docs/federation.md``).

* :class:`Link`: one broker's federation link, a peer of its broker (``loom federate``,
  or started by ``loom-broker --federate``).
* :func:`topic_subject`, :func:`subject_topic`, :func:`prefix_subjects`,
  :func:`pattern_subjects`, :func:`tool_subject`: the mapping of Loom topics and tool
  names to NATS subjects.

Needs the ``federation`` extra (``nats-py``).
"""

from loom.federation._link import Link
from loom.federation._subjects import (
    pattern_subjects,
    prefix_subjects,
    subject_topic,
    tool_subject,
    topic_subject,
)

__all__ = [
    "Link",
    "pattern_subjects",
    "prefix_subjects",
    "subject_topic",
    "tool_subject",
    "topic_subject",
]
