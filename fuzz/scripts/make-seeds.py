#!/usr/bin/env python3
"""Makes the raw (not yet minimised) seed inputs of the fuzz targets.

Reads the captures in place (never copies a whole one) and writes small
inputs into OUT/<target>/:

- pcap: each capture cut to its first 3 frames, each frame cut to 256
  bytes (`editcap -r -s 256 FILE OUT 1-3`), same format and byte order.
- parse: the first 4 frames of each capture, cut to 256 bytes, each
  prefixed with the target's link-type selector byte.
- tc: the recorded netlink bytes in hw/src/tc/testdata, as filter
  payloads (selector 0), and wrapped into datagrams: a dump reply
  (selector 2) and a batch reply (selector 1).
- control, config: written by hand, see below.

These are then minimised with afl-cmin into fuzz/corpus/<target>/ (see
README.md); only the minimised sets are kept in the repository.

Usage: make-seeds.py CAPTURE_DIR OUT
"""
import os
import struct
import subprocess
import sys

# pcap LINKTYPE_ -> the parse target's selector (index in fuzz/src/lib.rs LINKS).
SELECTOR = {1: 0, 12: 1, 14: 1, 101: 1, 228: 1, 229: 1, 113: 2, 276: 3, 0: 4,
            108: 5, 9: 6, 104: 7, 192: 8}


def pcap_frames(data):
    """(linktype, frame) of a classic pcap file, either byte order."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        return
    linktype = struct.unpack(e + "I", data[20:24])[0] & 0xFFFF
    at = 24
    while at + 16 <= len(data):
        incl = struct.unpack(e + "I", data[at + 8:at + 12])[0]
        yield linktype, data[at + 16:at + 16 + incl]
        at += 16 + incl


def pcapng_frames(data):
    """(linktype, frame) of the enhanced and simple packet blocks."""
    at, e, links = 0, "<", []
    while at + 12 <= len(data):
        kind = struct.unpack(e + "I", data[at:at + 4])[0]
        if kind == 0x0A0D0D0A:
            e = "<" if data[at + 8:at + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            kind = 0x0A0D0D0A
            links = []
        length = struct.unpack(e + "I", data[at + 4:at + 8])[0]
        if length < 12:
            return
        body = data[at + 8:at + length - 4]
        if kind == 1:
            links.append(struct.unpack(e + "H", body[:2])[0])
        elif kind == 6 and len(body) >= 20:
            iface, _, _, incl = struct.unpack(e + "IIII", body[:16])
            if iface < len(links):
                yield links[iface], body[20:20 + incl]
        elif kind == 3 and links:
            yield links[0], body[4:]
        at += length


def main():
    captures, out = sys.argv[1], sys.argv[2]
    for t in ("pcap", "parse", "tc", "control", "config"):
        os.makedirs(os.path.join(out, t), exist_ok=True)
    for name in sorted(os.listdir(captures)):
        path = os.path.join(captures, name)
        if not name.endswith((".pcap", ".pcapng", ".cap")):
            continue
        cut = os.path.join(out, "pcap", name.replace(" ", "_"))
        if subprocess.run(["editcap", "-s", "256", "-r", path, cut, "1-3"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            if os.path.exists(cut):
                os.remove(cut)
            continue
        data = open(cut, "rb").read()
        frames = list(pcapng_frames(data) if data[:4] == b"\x0a\x0d\x0d\x0a" else pcap_frames(data))
        for i, (linktype, frame) in enumerate(frames[:4]):
            if linktype in SELECTOR:
                with open(os.path.join(out, "parse", f"{name}.{i}"), "wb") as f:
                    f.write(bytes([SELECTOR[linktype]]) + frame[:256])
    # Netlink recordings: bare filter payloads and whole datagrams.
    testdata = os.path.join(os.path.dirname(__file__), "../../hw/src/tc/testdata")
    for name in sorted(os.listdir(testdata)):
        if not name.endswith(".bin"):
            continue
        raw = open(os.path.join(testdata, name), "rb").read()
        base = os.path.join(out, "tc", name[:-4])
        if name.startswith("dump-"):
            open(base + ".filter", "wb").write(b"\x00" + raw)
            # RTM_NEWTFILTER (44), NLM_F_MULTI (2), seq 7, then NLMSG_DONE (3).
            msg = struct.pack("<IHHII", 16 + len(raw), 44, 2, 7, 0) + raw
            done = struct.pack("<IHHIIi", 20, 3, 2, 7, 0, 0)
            open(base + ".dump", "wb").write(b"\x02" + msg + done)
            open(base + ".echo", "wb").write(b"\x01" + msg)
        else:
            open(base + ".batch", "wb").write(b"\x01" + raw)
            open(base + ".dumperr", "wb").write(b"\x02" + raw)
    # A bare ACK (NLMSG_ERROR with error 0 and the request header).
    ack = struct.pack("<IHHIIi", 36, 2, 0x100, 9, 0, 0) + struct.pack("<IHHII", 16, 44, 5, 9, 0)
    open(os.path.join(out, "tc", "ack.batch"), "wb").write(b"\x01" + ack)
    control = {
        "ping": '{"v":1,"id":1,"cmd":"ping"}',
        "flows": '{"v":1,"id":"a","cmd":"flows","filter":"proto=tcp port=443-444 src=10.0.0.0/8 stage=offloaded vlan!=3","sort":"rate","offset":5,"limit":10}',
        "flow": '{"v":1,"id":[1,2],"cmd":"flow","flow":42}',
        "stats": '{"v":1,"cmd":"stats"}',
        "set-context": '{"v":1,"id":null,"cmd":"set-context","flow":7,"label":"web","verdict":"offload","metadata":{"k":"v"}}',
        "offload": '{"v":1,"id":2.5,"cmd":"offload","flow":3,"action":{"type":"mirror","port":1}}',
        "offload-drop": '{"v":1,"id":3,"cmd":"offload","flow":3,"action":{"type":"drop"}}',
        "unoffload": '{"v":1,"id":4,"cmd":"unoffload","flow":3}',
        "subscribe": '{"v":1,"id":5,"cmd":"subscribe"}',
        "bad-version": '{"v":2,"id":6,"cmd":"ping"}',
        "unknown": '{"v":1,"id":{"x":true},"cmd":"reboot"}',
    }
    for k, v in control.items():
        open(os.path.join(out, "control", k), "w").write(v)
    example = subprocess.run(["cargo", "run", "-q", "--release", "--", "config", "example"],
                             cwd=os.path.join(os.path.dirname(__file__), "../.."),
                             capture_output=True, text=True).stdout
    configs = {
        "empty.json": "{}",
        "example.json": example,
        "pairs.json": '{"ports": [{"name": "wan0"}, {"name": "lan0", "pair": "wan0"}]}',
        "tc.json": '{"backend": {"kind": "tc", "icmp_by_hosts": true, "keep_rules": false}}',
        "dpdk.json": '{"backend": {"kind": "dpdk", "eal_args": []}, "sources": [{"dpdk": {}}]}',
        "rules.json": '{"classifier": {"rules": [{"name": "a", "match": {"proto": "udp", "ports": ["53", "1000-2000"]}, "trigger": {"after_packets": 3, "tcp_established": true}, "result": {"offload": {"type": "forward", "port": 0}}}]}}',
    }
    for k, v in configs.items():
        if v:
            open(os.path.join(out, "config", k), "w").write(v)


main()
