"""A local OpenAI-compatible Files + Batches server for tests, demos and benchmarks.

Run it with ``python -m airflow_provider_batch.emulator --port 0``; point any OpenAI client at
the base URL it prints. State lives in SQLite and blob files under ``--data-dir``, so a restart
finishes the batches in flight. The provider's runtime modules never import this package.
"""

from __future__ import annotations
