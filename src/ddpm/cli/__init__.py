"""The ``ddpm`` command: the parser (options), one function per command (commands), the demo, and the lines
it prints (advice). The only package that prints; it imports torch only after the thread options are set."""

from .commands import main

__all__ = ["main"]
