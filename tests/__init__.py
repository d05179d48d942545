"""The test suite. Set here, before anything imports huggingface_hub (which reads these once, at import): no test
reaches the real Hugging Face Hub, not even through the client's own background requests (its telemetry fetches
`{HF_ENDPOINT}/api/agent-harnesses`). Tests that need a hub point `HF_ENDPOINT` at their own, per test; the
constants are read now, so a test that sets `HF_ENDPOINT` before the first import cannot make them its own."""

import os

os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard: nothing listens
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import huggingface_hub.constants  # noqa: F401  (fixes the two above for the whole session)
