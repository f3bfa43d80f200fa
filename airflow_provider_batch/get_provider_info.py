"""Provider metadata read by Airflow's ``ProvidersManager`` through the ``apache_airflow_provider``
entry point: the hook, operator, sensor and trigger modules, the extra link, and the
``openai_batch`` connection form (declared here, as Airflow 3.2+ expects, not in hook methods)."""

from __future__ import annotations

from typing import Any

from airflow_provider_batch import __version__

INTEGRATION = "OpenAI Batch"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-batch",
        "name": "OpenAI Batch",
        "description": "Run OpenAI Batch API jobs from Airflow: retry-safe submit, deferred waits, results.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://platform.openai.com/docs/guides/batch",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_batch.hooks.batch"]}
        ],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_batch.operators.batch"]}
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_batch.sensors.batch"]}
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_batch.triggers.batch",
                    "airflow_provider_batch.triggers.job",
                ],
            }
        ],
        "extra-links": ["airflow_provider_batch.links.batch.OpenAIBatchLink"],
        # OpenAI file ids as assets (lineage.py): openai://<api host>/files/<id>, known to OpenLineage.
        "asset-uris": [
            {
                "schemes": ["openai"],
                "handler": "airflow_provider_batch.lineage.sanitize_uri",
                "to_openlineage_converter": "airflow_provider_batch.lineage.convert_asset_to_openlineage",
            }
        ],
        "connection-types": [
            {
                "connection-type": "openai_batch",
                "hook-class-name": "airflow_provider_batch.hooks.batch.OpenAIBatchHook",
                "hook-name": "OpenAI Batch",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.openai.com/v1 (leave empty for OpenAI)",
                        "password": "sk-...",
                    },
                },
                "conn-fields": {
                    "api_type": {
                        "label": "API type",
                        "description": "openai (also any OpenAI-compatible server) or azure",
                        "schema": {"type": ["string", "null"], "enum": ["openai", "azure", None]},
                    },
                    "organization": {"label": "Organization", "schema": {"type": ["string", "null"]}},
                    "project": {"label": "Project", "schema": {"type": ["string", "null"]}},
                    "api_version": {
                        "label": "Azure API version",
                        "description": "Required for Azure OpenAI, e.g. 2024-10-21",
                        "schema": {"type": ["string", "null"]},
                    },
                    "azure_endpoint": {
                        "label": "Azure endpoint",
                        "description": "https://<resource>.openai.azure.com (or use the Base URL field)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "timeout": {
                        "label": "Timeout (s)",
                        "description": "Per HTTP call",
                        "schema": {"type": ["number", "null"]},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries of a transient failure (connection, 408, 429, 5xx)",
                        "schema": {"type": ["integer", "null"]},
                    },
                },
            }
        ],
    }
