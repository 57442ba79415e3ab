#!/usr/bin/env python3
"""Writes a micro-guest ELF "kernel" for splitvm (same layout as
tests/src/microguest.rs): 64-bit code at 0x1000000 that prints MESSAGE on
COM1 and then halts forever (`hlt` in a loop: with interrupts off and the
in-kernel irqchip the vCPU sleeps in KVM instead of burning a host CPU), so
the VM stays up.

Usage: microguest.py OUT.elf [MESSAGE]
"""
import struct
import sys

LOAD_ADDR = 0x100_0000


def code(msg: bytes) -> bytes:
    c = bytearray(b"\x66\xba\xf8\x03")  # mov dx, 0x3f8
    for b in msg:
        c += bytes([0xB0, b, 0xEE])  # mov al, b; out dx, al
    c += b"\xf4\xeb\xfd"  # hlt; jmp back to the hlt
    return bytes(c)


def elf(text: bytes) -> bytes:
    ehdr, phdr = 64, 56
    off = ehdr + phdr
    h = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    h += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, LOAD_ADDR, ehdr, 0, 0, ehdr, phdr, 1, 64, 0, 0)
    p = struct.pack("<IIQQQQQQ", 1, 7, off, LOAD_ADDR, LOAD_ADDR, len(text), len(text), 1)
    return h + p + text


if __name__ == "__main__":
    msg = (sys.argv[2] if len(sys.argv) > 2 else "API-READY") + "\n"
    with open(sys.argv[1], "wb") as f:
        f.write(elf(code(msg.encode())))
