"""The one dispatch table of host calls, and the one table of which call is legal in
which VM state (as the TDX module's op_state_lookup)."""

from __future__ import annotations

from collections.abc import Callable

from shim.host_calls import (
    add_pages,
    complete_io,
    destroy,
    drop_writes,
    enter,
    export_vm,
    finalize,
    import_vm,
    inject,
    map_pages,
    read_page,
    remap,
    write_page,
)
from shim.vm import VmState
from tvmm.abi.types import Call

C, R, D = VmState.CREATED, VmState.RUNNABLE, VmState.DEAD

HANDLERS: dict[Call, Callable] = {
    Call.ADD_PAGES: add_pages.handle,
    Call.FINALIZE: finalize.handle,
    Call.ENTER: enter.handle,
    Call.MAP: map_pages.handle,
    Call.UNMAP: map_pages.handle,
    Call.REMAP: remap.handle,
    Call.READ_PAGE: read_page.handle,
    Call.WRITE_PAGE: write_page.handle,
    Call.INJECT: inject.handle,
    Call.COMPLETE_IO: complete_io.handle,
    Call.DESTROY: destroy.handle,
    Call.DROP_WRITES: drop_writes.handle,
    Call.EXPORT_VM: export_vm.handle,
    Call.IMPORT_VM: import_vm.handle,
}

LEGAL_IN: dict[Call, frozenset[VmState]] = {
    Call.ADD_PAGES: frozenset({C}),
    Call.FINALIZE: frozenset({C}),
    Call.ENTER: frozenset({R}),
    Call.MAP: frozenset({C, R}),
    Call.UNMAP: frozenset({C, R}),
    Call.REMAP: frozenset({C, R}),
    Call.READ_PAGE: frozenset({C, R, D}),
    Call.WRITE_PAGE: frozenset({C, R}),
    Call.INJECT: frozenset({R}),
    Call.COMPLETE_IO: frozenset({R}),
    Call.DESTROY: frozenset({C, R, D}),
    Call.DROP_WRITES: frozenset({R}),
    Call.EXPORT_VM: frozenset({R, D}),  # DEAD only while frozen for its stream
    Call.IMPORT_VM: frozenset({C, D}),  # DEAD: sealed off while its import runs
}
