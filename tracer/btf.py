"""Kernel struct offsets and enum names from BTF (`/sys/kernel/btf/vmlinux`), read at run time.

There are no headers for the running kernel on many machines (Debian ships 6.1 headers for a
6.18 kernel, and their offsets are wrong), so the BPF programs never dereference kernel structs
by name: each offset they need is resolved here and passed in as a `-D` define. The BTF blob is
parsed directly (a ~100-line reader of the documented format, see
Documentation/bpf/btf.rst); this is faster than running `bpftool btf dump` and needs no tool.

A path such as ``"sock_common.skc_net"`` names a struct and a member; members of anonymous
structs and unions are found through them, and a dotted path walks into nested struct members
(``"net.ns.inum"``). The tests check what the BPF side reads with these offsets against a known
truth (the netns inode from ``os.stat('/proc/<pid>/ns/net').st_ino``).
"""
from __future__ import annotations

import os
import struct
from typing import Dict, Iterable, List, Optional, Tuple, Union

from common.errors import SpikeTraceError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

# BTF kinds (include/uapi/linux/btf.h)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)

# Bytes that follow the 12-byte `struct btf_type` header, per kind: (fixed, per vlen item).
_TRAILER = {_INT: (4, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM: (0, 8),
            _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0),
            _ENUM64: (0, 12)}

# What the tracer reads from kernel structs: define name -> member path.
TRACER_OFFSETS: Dict[str, str] = {
    "OFF_SKC_FAMILY": "sock_common.skc_family",
    "OFF_SKC_STATE": "sock_common.skc_state",
    "OFF_SKC_NUM": "sock_common.skc_num",
    "OFF_SKC_DPORT": "sock_common.skc_dport",
    "OFF_SKC_DADDR": "sock_common.skc_daddr",
    "OFF_SKC_RCV_SADDR": "sock_common.skc_rcv_saddr",
    "OFF_SKC_V6_DADDR": "sock_common.skc_v6_daddr",
    "OFF_SKC_V6_RCV_SADDR": "sock_common.skc_v6_rcv_saddr",
    "OFF_SKC_NET": "sock_common.skc_net",
    "OFF_INET_SPORT": "inet_sock.inet_sport",
    "OFF_NET_INUM": "net.ns.inum",
    "OFF_TASK_NSPROXY": "task_struct.nsproxy",
    "OFF_TASK_PID": "task_struct.pid",
    "OFF_TASK_COMM": "task_struct.comm",
    "OFF_TASK_SCHED_PCOUNT": "task_struct.sched_info.pcount",
    "OFF_TASK_RUN_DELAY": "task_struct.sched_info.run_delay",
    "OFF_TASK_SUM_EXEC": "task_struct.se.sum_exec_runtime",
    "OFF_TASK_PREV_SUM_EXEC": "task_struct.se.prev_sum_exec_runtime",
    "OFF_NSPROXY_NET_NS": "nsproxy.net_ns",
    "OFF_TASK_FILES": "task_struct.files",
    "OFF_FILES_FDT": "files_struct.fdt",
    "OFF_FDT_MAX_FDS": "fdtable.max_fds",
    "OFF_FDT_FD": "fdtable.fd",
    "OFF_FILE_PRIVATE_DATA": "file.private_data",
    "OFF_SOCKET_SK": "socket.sk",
    "OFF_SKB_SK": "sk_buff.sk",
    "OFF_SKB_DEV": "sk_buff.dev",
    "OFF_SKB_HEAD": "sk_buff.head",
    "OFF_SKB_NETWORK_HEADER": "sk_buff.network_header",
    "OFF_SKB_PROTOCOL": "sk_buff.protocol",
    "OFF_SK_PROTOCOL": "sock.sk_protocol",
    "OFF_SK_ERR": "sock.sk_err",
    # a listener's accept queue (sk_acceptq_is_full, include/net/sock.h): u32 in every kernel
    # since at least 4.4 (DepSurf's struct sock); kprobes.c still reads the width their distance
    # apart tells
    "OFF_SK_ACK_BACKLOG": "sock.sk_ack_backlog",
    "OFF_SK_MAX_ACK_BACKLOG": "sock.sk_max_ack_backlog",
    "OFF_DEV_ND_NET": "net_device.nd_net",
}


class Btf:
    """The types of one BTF blob, indexed lazily by name."""

    def __init__(self, data: bytes):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise SpikeTraceError("not a BTF blob (bad magic); is /sys/kernel/btf/vmlinux intact?")
        self._data = data
        self._types_at = hdr_len + type_off
        self._strings_at = hdr_len + str_off
        self._strings_end = self._strings_at + str_len
        self._offsets: List[int] = [0]  # type id -> byte offset of its btf_type (id 0 = void)
        self._by_name: Dict[Tuple[int, str], int] = {}
        self._index(type_len)

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> "Btf":
        try:
            with open(path, "rb") as fh:
                return cls(fh.read())
        except FileNotFoundError:
            raise SpikeTraceError(
                f"{path} is missing: this kernel was built without CONFIG_DEBUG_INFO_BTF, so "
                "spiketrace cannot find struct offsets (see `spiketrace doctor`)")
        except PermissionError:
            raise SpikeTraceError(f"cannot read {path}: run as root (see `spiketrace doctor`)")

    def _index(self, type_len: int) -> None:
        data, pos, end = self._data, self._types_at, self._types_at + type_len
        unpack = struct.unpack_from
        wanted = (_STRUCT, _UNION, _ENUM, _ENUM64, _TYPEDEF, _FUNC)
        while pos < end:
            name_off, info, _ = unpack("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._offsets.append(pos)
            if kind in wanted and name_off:
                name = self._str(name_off)
                if kind != _TYPEDEF or name.startswith("btf_trace_"):
                    self._by_name.setdefault((kind if kind != _UNION else _STRUCT, name),
                                             len(self._offsets) - 1)
            fixed, per_item = _TRAILER.get(kind, (0, 0))
            pos += 12 + fixed + per_item * vlen

    def _str(self, off: int) -> str:
        start = self._strings_at + off
        return self._data[start:self._data.index(b"\0", start, self._strings_end)].decode()

    def _type(self, tid: int) -> Tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, byte offset) of type `tid`."""
        pos = self._offsets[tid]
        _name, info, size_or_type = struct.unpack_from("<III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type, pos

    def _resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            kind, _, _, ref, _ = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref

    def _members(self, tid: int) -> Iterable[Tuple[str, int, int]]:
        """(name, type id, byte offset) of each member of struct/union `tid`; a bitfield's
        offset is -1 (no byte offset to read it at)."""
        kind, vlen, kflag, _, pos = self._type(tid)
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
            bits = moff & 0xFFFFFF if kflag else moff
            bitfield = kflag and moff >> 24
            yield (self._str(name_off) if name_off else ""), mtype, -1 if bitfield else bits // 8

    def _find_member(self, tid: int, name: str) -> Optional[Tuple[int, int]]:
        """(byte offset, type id) of member `name`, looking through anonymous members."""
        for mname, mtype, moff in self._members(tid):
            if mname == name:
                return moff, mtype
        for mname, mtype, moff in self._members(tid):
            inner = self._resolve(mtype)
            if not mname and self._type(inner)[0] in (_STRUCT, _UNION):
                found = self._find_member(inner, name)
                if found is not None:
                    return moff + found[0], found[1]
        return None

    def struct_id(self, name: str) -> int:
        tid = self._by_name.get((_STRUCT, name))
        if tid is None:
            raise SpikeTraceError(f"BTF: no struct '{name}' in this kernel")
        return tid

    def offset(self, path: str) -> int:
        """Byte offset of `struct.member[.member...]` from the start of the struct."""
        sname, *members = path.split(".")
        tid, total = self.struct_id(sname), 0
        for member in members:
            found = self._find_member(tid, member)
            if found is None:
                raise SpikeTraceError(f"BTF: struct member '{path}' not found in this kernel")
            if found[0] < 0:
                raise SpikeTraceError(f"BTF: '{path}' is a bitfield in this kernel")
            total += found[0]
            tid = self._resolve(found[1])
        return total

    def trace_nargs(self, event: str) -> Optional[int]:
        """Arguments of raw tracepoint `event` (its TP_PROTO), None if BTF does not know it."""
        tid = self._by_name.get((_TYPEDEF, f"btf_trace_{event}"))
        if tid is None:
            return None
        kind, _, _, ref, _ = self._type(self._resolve(tid))
        if kind == _PTR:
            kind, vlen, _, _, _ = self._type(self._resolve(ref))
            if kind == _FUNC_PROTO:
                return vlen - 1  # the first parameter is the tracepoint's private data
        return None

    def func_nargs(self, name: str) -> Optional[int]:
        """Parameters of kernel function `name` (its BTF FUNC_PROTO), None if BTF does not know
        it: an fentry/fexit program attaches only to a function BTF describes, and an fexit
        program finds the return value after the arguments (ctx[nargs])."""
        tid = self._by_name.get((_FUNC, name))
        if tid is None:
            return None
        kind, vlen, _, _, _ = self._type(self._resolve(self._type(tid)[3]))
        return vlen if kind == _FUNC_PROTO else None

    def func_id(self, name: str) -> Optional[int]:
        """BTF type id of kernel function `name` (what BPF_PROG_LOAD's attach_btf_id names)."""
        return self._by_name.get((_FUNC, name))

    def enum(self, name: str) -> Dict[int, str]:
        """Value -> name of the enumerators of `enum name`."""
        tid = self._by_name.get((_ENUM, name)) or self._by_name.get((_ENUM64, name))
        if tid is None:
            return {}
        kind, vlen, kflag, _, pos = self._type(tid)
        out: Dict[int, str] = {}
        step = 8 if kind == _ENUM else 12
        for i in range(vlen):
            at = pos + 12 + step * i
            if kind == _ENUM:
                name_off, val = struct.unpack_from("<Ii" if kflag else "<II", self._data, at)
            else:
                name_off, lo, hi = struct.unpack_from("<III", self._data, at)
                val = (hi << 32) | lo
            out[val] = self._str(name_off)
        return out


_cache: Dict[str, Btf] = {}


def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    if VMLINUX_BTF not in _cache:
        _cache[VMLINUX_BTF] = Btf.load()
    return _cache[VMLINUX_BTF]


def tracer_offsets(btf: Optional[Btf] = None) -> Dict[str, int]:
    """The offsets the BPF programs need, as define name -> bytes; members this kernel lacks
    (or has as bitfields) are left out, and probes that need them are not chosen."""
    btf = btf or vmlinux()
    out = {}
    for define, path in TRACER_OFFSETS.items():
        try:
            out[define] = btf.offset(path)
        except SpikeTraceError:
            pass
    return out


def drop_reason_names(btf: Optional[Btf] = None) -> Dict[int, str]:
    """skb drop reason code -> short name (`NO_SOCKET` for SKB_DROP_REASON_NO_SOCKET)."""
    btf = btf or vmlinux()
    names = btf.enum("skb_drop_reason")
    return {v: n.replace("SKB_DROP_REASON_", "") for v, n in names.items()}


def reset_reason_names(btf: Optional[Btf] = None) -> Dict[int, str]:
    """sk_rst_reason code -> short name (6.10+; empty on older kernels)."""
    btf = btf or vmlinux()
    return {v: n.replace("SK_RST_REASON_", "") for v, n in btf.enum("sk_rst_reason").items()}


def netns_inum_of(pid_or_name: Union[int, str]) -> int:
    """The network namespace inode of a process (pid) or of a named netns (`ip netns` name)."""
    if isinstance(pid_or_name, int) or str(pid_or_name).isdigit():
        path = f"/proc/{int(pid_or_name)}/ns/net"
    else:
        path = os.path.join("/var/run/netns", str(pid_or_name))
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        raise SpikeTraceError(f"no network namespace at {path}")
    except PermissionError:
        raise SpikeTraceError(f"cannot read {path}: run as root")
