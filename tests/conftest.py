"""Shared fixtures."""
import pytest
from helpers import tiny_llava


@pytest.fixture(scope="module")
def llama():
    return tiny_llava("llama")
