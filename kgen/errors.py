"""kgen's typed errors: each carries the data that explains it and says what to do next."""
from __future__ import annotations


class KgenError(Exception):
    """Base of every error kgen raises on purpose."""


class InvalidVariant(KgenError, ValueError):
    """A Variant whose fields contradict each other, whatever the device."""

    def __init__(self, what: str, reason: str):
        self.what, self.reason = what, reason
        super().__init__(f"invalid variant {what}: {reason}")


class UnsupportedVariant(KgenError):
    """A valid variant that this device (or compiler) cannot run."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"{uri} is not supported here: {reason}")


class OutOfResources(UnsupportedVariant):
    """A variant needing more of a device resource than the device has."""

    def __init__(self, uri: str, what: str, required: int, limit: int):
        self.what, self.required, self.limit = what, required, limit
        super().__init__(uri, f"needs {required} of {what}, the device allows {limit}; "
                              "pick smaller tiles or another path")


class CompileError(KgenError):
    """The GLSL compiler rejected a rendered variant; `log` holds its messages. `returncode` is
    the failing tool's exit status where it had one (negative: killed by that signal)."""

    def __init__(self, uri: str, log: str, excerpt: str = "", *, returncode: int | None = None):
        self.uri, self.log, self.excerpt, self.returncode = uri, log, excerpt, returncode
        text = f"compiling {uri} failed:\n{log.rstrip()}"
        if excerpt:
            text += f"\n--- offending GLSL ---\n{excerpt.rstrip()}"
        super().__init__(text)


class ToolchainError(KgenError):
    """No usable GLSL compiler or SPIR-V tool was found, or one misbehaved."""


class KnobError(KgenError, ValueError):
    """A KGEN_* environment variable whose value kgen cannot use."""

    def __init__(self, name: str, raw: str, expected: str):
        self.name, self.raw, self.expected = name, raw, expected
        super().__init__(f"{name}={raw!r}: {expected}; fix it or unset it")
