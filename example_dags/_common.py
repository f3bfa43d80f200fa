"""Shared settings of the example DAGs: where they land results, which connection they use.

Point ``BATCH_EXAMPLES_OUTPUT`` at any object store Airflow knows (``s3://bucket/prefix``) to land
results there; by default they go under the system's temporary directory.
"""

from __future__ import annotations

import os
import tempfile

from airflow.sdk import ObjectStoragePath

CONN_ID = os.environ.get("BATCH_EXAMPLES_CONN_ID", "openai_default")
OUTPUT_ROOT = ObjectStoragePath(
    os.environ.get("BATCH_EXAMPLES_OUTPUT", f"file://{tempfile.gettempdir()}/airflow-provider-batch-examples")
)
# Short polls suit the emulator; against OpenAI, leave the operator's defaults (30 s growing to 5 min).
POLL_INTERVAL = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "2"))
