from __future__ import annotations

from collections.abc import Iterator

import pytest

from fault_server import FaultServer


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A started scripted fake LLM server (OpenAI wire) on 127.0.0.1; stopped at teardown."""
    with FaultServer("openai") as server:
        yield server


@pytest.fixture
def anthropic_fault_server() -> Iterator[FaultServer]:
    """A started scripted fake LLM server (Anthropic Messages wire) on 127.0.0.1."""
    with FaultServer("anthropic") as server:
        yield server
