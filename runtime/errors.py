"""The runtime's typed errors. Each carries the offending value and the limit it broke, and is
raised before any Vulkan call is made, so a bad argument never reaches the driver."""
from __future__ import annotations

from kgen.errors import KgenError


class InvalidArgument(KgenError, ValueError):
    """An argument a Vulkan call would reject (or silently misuse): `argument` names it,
    `value` is what was given and `limit` what the device or the ABI allows."""

    def __init__(self, where: str, argument: str, value: object, limit: object, hint: str = ""):
        self.where, self.argument, self.value, self.limit = where, argument, value, limit
        super().__init__(f"{where}: {argument}={value!r} is outside the limit {limit}"
                         + (f"; {hint}" if hint else ""))


class ClosedError(KgenError, RuntimeError):
    """Use of a Device, Buffer, Kernel or Sequence after it (or its Device) was closed."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(f"{what} is closed: open a new one")


class StatisticsUnavailable(KgenError, RuntimeError):
    """Kernel.statistics() where the driver kept no statistics: `reason` names what is missing
    (the device's extension or the capture_statistics option) and what to do."""

    def __init__(self, kernel: str, reason: str):
        self.kernel, self.reason = kernel, reason
        super().__init__(f"no pipeline statistics for kernel {kernel!r}: {reason}")
