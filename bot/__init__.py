"""A local-first Discord roleplay bot whose portrait changes expression with the conversation."""

from bot.native import share_cpp_runtime

# Before any module can import torch or llama_cpp: see bot/native.py.
share_cpp_runtime()

__version__ = "0.1.0"
