"""What the CPU can do, as far as it matters for judging a measurement.

int8 kernels only beat float32 on CPUs with 8-bit dot-product instructions (x86: AVX512-VNNI,
AVX-VNNI or AMX; ARM: the ``asimddp`` dot-product extension). Without them onnxruntime's integer
kernels widen to 16 bits and an int8 model is often no faster, or slower, than float32. The
answer is read from ``/proc/cpuinfo`` (Linux); elsewhere it is *unknown*, never guessed.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")

#: flags (as /proc/cpuinfo spells them) that give int8 dot products
INT8_DOT_FLAGS: dict[str, tuple[str, ...]] = {
    "x86": ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"),
    "arm": ("asimddp",),
}
#: flags that give native float16 arithmetic
FP16_FLAGS: dict[str, tuple[str, ...]] = {
    "x86": ("avx512_fp16", "amx_fp16"),
    "arm": ("asimdhp", "fphp"),
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU the measurement ran on; ``None`` means the answer is unknown."""

    arch: str
    model_name: str
    #: int8 dot-product instructions (VNNI / AMX / asimddp)
    int8_dot: bool | None
    #: native float16 arithmetic (AVX512-FP16 / ARM fp16)
    fp16_arith: bool | None
    int8_flags: tuple[str, ...] = ()
    fp16_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def family(self) -> str | None:
        """``x86``, ``arm`` or ``None`` (another architecture)."""
        return _arch_family(self.arch)

    @property
    def u8s8_saturates(self) -> bool:
        """Whether onnxruntime's U8S8 kernels may add products pairwise in saturating int16 here
        (x86 without VNNI/AMX, or unknown): full-range int8 weights can then overflow."""
        return self.family == "x86" and self.int8_dot is not True

    @property
    def int8_dot_text(self) -> str:
        """``unknown``, ``no`` or the flags found, for reports."""
        if self.int8_dot is None:
            return "unknown"
        return ", ".join(self.int8_flags) if self.int8_dot else "no"


def _arch_family(machine: str) -> str | None:
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine.startswith(("aarch64", "arm")):
        return "arm"
    return None


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """A ``CpuInfo`` from the text of ``/proc/cpuinfo`` on a ``machine`` (``platform.machine()``)."""
    family = _arch_family(machine)
    flags: set[str] = set()
    model_name = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:  # the first processor speaks for all
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model_name:
            model_name = value.strip()
    if family is None or not flags:
        return CpuInfo(machine, model_name or "unknown", None, None)
    int8 = tuple(f for f in INT8_DOT_FLAGS[family] if f in flags)
    fp16 = tuple(f for f in FP16_FLAGS[family] if f in flags)
    return CpuInfo(machine, model_name or "unknown", bool(int8), bool(fp16), int8, fp16)


def cpu_info() -> CpuInfo:
    """The CPU this process runs on (unknown capabilities when ``/proc/cpuinfo`` is unreadable)."""
    machine = platform.machine() or "unknown"
    try:
        text = CPUINFO.read_text()
    except OSError as exc:
        logger.debug("cannot read %s: %s", CPUINFO, exc)
        text = ""
    return parse_cpuinfo(text, machine)
