"""The host's handle on the platform: typed calls over a transport.

A transport is any callable taking a request and returning a reply; ``bytes_transport``
wraps one that speaks the ABI codec (another process, a socket), so the same host code
runs in-process or across a boundary.
"""

from __future__ import annotations

from collections.abc import Callable

from tvmm.abi import codec
from tvmm.abi.messages import (
    AddPages,
    CompleteIo,
    CreateVm,
    Destroy,
    DropWrites,
    Enter,
    Finalize,
    Inject,
    Map,
    ReadPage,
    Remap,
    Reply,
    Unmap,
    WritePage,
)
from tvmm.abi.types import InjectMode, Level, PageType, Result

Transport = Callable[[object], Reply]


def bytes_transport(send: Callable[[bytes], bytes]) -> Transport:
    decode = codec.decode

    def call(request: object) -> Reply:
        reply = decode(send(codec.encode(request)))
        if type(reply) is not Reply and not isinstance(reply, Reply):
            raise codec.DecodeError("reply", "the platform did not answer with a reply")
        return reply

    def enter(vm: int, vcpu: int, quantum: int, state: bytes) -> Reply:
        """``call(Enter(vm, vcpu, quantum, state))``, the same bytes, without building the
        frozen request (PlatformClient.enter, at every exit)."""
        reply = decode(send(codec.encode_values(Enter, vm, vcpu, quantum, state)))
        if type(reply) is not Reply and not isinstance(reply, Reply):
            raise codec.DecodeError("reply", "the platform did not answer with a reply")
        return reply

    call.enter = enter  # type: ignore[attr-defined]
    return call


class HostCallError(RuntimeError):
    def __init__(self, call: str, reply: Reply) -> None:
        super().__init__(f"{call} refused: {reply.result.name} ({reply.operand or '-'})")
        self.result = reply.result
        self.operand = reply.operand
        self.reply = reply


class PlatformClient:
    def __init__(self, transport: Transport) -> None:
        self.call = transport
        self.calls = 0

    def _ok(self, name: str, request: object) -> Reply:
        self.calls += 1
        reply = self.call(request)
        if reply.result != Result.OK:
            raise HostCallError(name, reply)
        return reply

    def create_vm(self, level: Level, memory_size: int, shared_base: int, shared_size: int,
                  policy: int = 0) -> int:
        return self._ok("CREATE_VM", CreateVm(level, memory_size, shared_base, shared_size,
                                              policy)).value

    def add_pages(self, vm: int, gpa: int, page_type: PageType, count: int = 1,
                  data: bytes = b"", executable: bool = False) -> None:
        self._ok("ADD_PAGES", AddPages(vm, gpa, page_type, count, data, executable))

    def finalize(self, vm: int, entry: int) -> bytes:
        return self._ok("FINALIZE", Finalize(vm, entry)).data

    def enter(self, vm: int, quantum: int = 0, state: bytes = b"", vcpu: int = 0) -> Reply:
        """The raw reply: an exit record, or an error the caller decides about."""
        self.calls += 1
        call = self.call
        fast = getattr(call, "enter", None)  # a bytes transport's (whatever self.call is now)
        if fast is not None:
            return fast(vm, vcpu, quantum, state)
        return call(Enter(vm, vcpu, quantum, state))

    def map(self, vm: int, gpa: int, count: int = 1) -> None:
        self._ok("MAP", Map(vm, gpa, count))

    def unmap(self, vm: int, gpa: int, count: int = 1) -> None:
        self._ok("UNMAP", Unmap(vm, gpa, count))

    def remap(self, vm: int, gpa: int, source: int) -> Reply:
        self.calls += 1
        return self.call(Remap(vm, gpa, source))

    def read_page(self, vm: int, gpa: int) -> bytes:
        return self._ok("READ_PAGE", ReadPage(vm, gpa)).data

    def write_page(self, vm: int, gpa: int, data: bytes) -> Reply:
        self.calls += 1
        return self.call(WritePage(vm, gpa, data))

    def inject(self, vm: int, vector: int, vcpu: int = 0,
               mode: InjectMode = InjectMode.EVENT) -> None:
        self._ok("INJECT", Inject(vm, vcpu, vector, mode))

    def complete_io(self, vm: int, value: int, vcpu: int = 0) -> None:
        self._ok("COMPLETE_IO", CompleteIo(vm, vcpu, value))

    def drop_writes(self, vm: int) -> Reply:
        """INVD: discard the guest's stores still in the write-back buffer (CacheWarp)."""
        self.calls += 1
        return self.call(DropWrites(vm))

    def destroy(self, vm: int) -> None:
        self._ok("DESTROY", Destroy(vm))

    # -- shared memory, page by page ------------------------------------------------------
    def read_shared(self, vm: int, gpa: int, size: int) -> bytes:
        out = bytearray()
        pos = gpa
        while pos < gpa + size:
            page = pos & ~0xFFF
            data = self.read_page(vm, page)
            take = min(gpa + size, page + 0x1000) - pos
            out += data[pos - page : pos - page + take]
            pos += take
        return bytes(out)

    def write_shared(self, vm: int, gpa: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            addr = gpa + pos
            page = addr & ~0xFFF
            current = bytearray(self.read_page(vm, page))
            take = min(len(data) - pos, page + 0x1000 - addr)
            current[addr - page : addr - page + take] = data[pos : pos + take]
            reply = self.write_page(vm, page, bytes(current))
            if reply.result != Result.OK:
                raise HostCallError("WRITE_PAGE", reply)
            pos += take
