#!/usr/bin/env python3
"""Regenerates gbk_table.bin, the GBK double-byte table used by gbk.rs.

The tutorial's client decodes command output with Python's `decode('gbk')`,
so skiff takes its table from that very codec: for every lead byte
0x81..0xFE and trail byte 0x40..0xFE (except 0x7F), in that order, one
little-endian u16 with the Unicode code point, or 0 where Python's codec has
no character. Run from this directory: python3 gen_gbk_table.py
"""
import struct

out = bytearray()
for lead in range(0x81, 0xFF):
    for trail in range(0x40, 0xFF):
        if trail == 0x7F:
            continue
        try:
            s = bytes([lead, trail]).decode('gbk')
        except UnicodeDecodeError:
            out += struct.pack('<H', 0)
            continue
        assert len(s) == 1 and 0 < ord(s) < 0x10000, (lead, trail, s)
        out += struct.pack('<H', ord(s))
with open('gbk_table.bin', 'wb') as f:
    f.write(out)
print(len(out), 'bytes,', sum(1 for i in range(0, len(out), 2) if out[i:i+2] != b'\0\0'), 'characters')
