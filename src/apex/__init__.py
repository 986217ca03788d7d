"""Apex: find the waste in LLM spend and prove the savings."""

__version__ = "0.1.0"
