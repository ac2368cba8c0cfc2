"""Native libraries that share one process: llama.cpp and torch.

A llama.cpp built with CUDA exports copies of some C++ standard library symbols from libggml-cuda. When
torch is imported first, llama.cpp's own libraries (loaded with RTLD_GLOBAL) bind to those copies and
crash in std::regex while loading a model's tokenizer (seen on an H100: torch 2.11+cu130, llama-cpp-python
0.3.36 built with CUDA 13; segfault in `unicode_regex_split`). Loading the system C++ runtime into the
global namespace first makes every library bind to the one real copy, as `LD_PRELOAD` would."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

_log = logging.getLogger(__name__)
_shared = False


def share_cpp_runtime() -> None:
    """Make the C++ runtime global before torch or llama.cpp load; a no-op off Linux or if absent."""
    global _shared
    if _shared or not sys.platform.startswith("linux"):
        return
    _shared = True
    name = ctypes.util.find_library("stdc++")
    if name is None:
        return
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        _log.debug("could not load %s globally: %s", name, exc)
