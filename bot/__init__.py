"""A local-first Discord roleplay bot whose portrait changes expression with the conversation."""

__version__ = "0.1.0"
