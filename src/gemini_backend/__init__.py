"""Gemini-style chat backend."""
