"""Chatrooms and their messages."""
