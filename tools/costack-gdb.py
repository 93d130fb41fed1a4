"""gdb helpers for costack.

    (gdb) source tools/costack-gdb.py
    (gdb) costack-bt <handle>      # a `Coroutine` value, e.g. `co`
    (gdb) costack-bt-sp <address>  # a suspended context's saved stack pointer

A running coroutine needs no help: its frames continue into its enterer's
(the switch's CFI). A *suspended* coroutine has no frame in any thread; these
commands backtrace it by pointing the selected thread's registers at its
saved context for the duration of one `bt`, then putting them back. Live
processes only (a core file's registers cannot be changed). Assembly
backends only (x86_64, aarch64, riscv64 Linux): where the saved program
counter and callee-saved registers sit is that backend's layout. Frames
past `costack::coroutine::start` (shown as a signal frame) describe the
coroutine's *last* resumer, which has moved on: ignore them.
"""

import gdb

# Per architecture: (pc register, stack-pointer register, offset of the
# coroutine's stack pointer above the saved one, {register: offset}).
LAYOUTS = {
    "x86-64": ("rip", "rsp", 24, {"rip": 0, "rbx": 8, "rbp": 16}),
    "aarch64": ("pc", "sp", 32, {"pc": 0, "x29": 16, "x19": 24}),
    "riscv": ("pc", "sp", 32, {"pc": 0, "s0": 16, "s1": 24}),
}


def _layout():
    name = gdb.selected_frame().architecture().name()
    for key, layout in LAYOUTS.items():
        if key in name:
            return layout
    raise gdb.GdbError("costack-bt: no switch layout for architecture " + name)


def _read_word(addr):
    ptr = gdb.lookup_type("unsigned long").pointer()
    return int(gdb.Value(addr).cast(ptr).dereference())


def _backtrace_at(sp, from_tty):
    pc_reg, sp_reg, above, saved = _layout()
    gdb.execute("frame 0", to_string=True)
    regs = [sp_reg] + list(saved)
    old = {r: int(gdb.parse_and_eval("$" + r)) for r in regs}
    try:
        for reg, off in saved.items():
            gdb.execute("set ${} = {}".format(reg, _read_word(sp + off)), to_string=True)
        gdb.execute("set ${} = {}".format(sp_reg, sp + above), to_string=True)
        gdb.execute("bt", from_tty)
    finally:
        gdb.execute("frame 0", to_string=True)
        for reg in regs:
            gdb.execute("set ${} = {}".format(reg, old[reg]), to_string=True)


def _field(value, *names):
    """Follows fields, stepping through one-field wrappers (Cell, UnsafeCell,
    NonNull, MaybeUninit, Option's Some) whose names differ between Rust
    versions."""
    for name in names:
        value = value[name]
    while value.type.strip_typedefs().code in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
        fields = [f.name for f in value.type.strip_typedefs().fields()]
        if fields in (["value"], ["pointer"], ["__0"], ["0"]):
            value = value[fields[0]]
        elif fields == ["uninit", "value"]:
            # MaybeUninit (a union): the context is initialised while the
            # coroutine has not finished.
            value = value["value"]
        elif fields and fields[-1] == "Some":
            # gdb shows an Option as a variant part (unnamed discriminant
            # field) plus one field per data-carrying variant.
            if "Some" not in str(value):
                raise gdb.GdbError("costack-bt: the context is None")
            value = value["Some"]
        else:
            break
    return value


class CostackBtSp(gdb.Command):
    """costack-bt-sp ADDRESS: backtrace of the suspended coroutine whose saved
    stack pointer is ADDRESS."""

    def __init__(self):
        super().__init__("costack-bt-sp", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        _backtrace_at(int(gdb.parse_and_eval(arg)), from_tty)


class CostackBt(gdb.Command):
    """costack-bt EXPR: backtrace of the suspended coroutine that the
    `costack::Coroutine` EXPR names."""

    def __init__(self):
        super().__init__("costack-bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        handle = gdb.parse_and_eval(arg)
        ctl = _field(handle, "ctl").dereference()
        # The low bits of `status` hold the state: 1 is Ready (created, or
        # suspended once it has started: its closure is taken then).
        status = int(_field(ctl, "status"))
        started = "None" in str(_field(ctl, "drop_closure"))
        if status & 3 != 1 or not started:
            names = {0: "free", 1: "created", 2: "entered", 3: "finished"}
            raise gdb.GdbError(
                "costack-bt: the coroutine is " + names[status & 3] + ", not suspended"
            )
        context = _field(ctl, "context")
        sp = int(_field(context, "sp"))
        _backtrace_at(sp, from_tty)


CostackBtSp()
CostackBt()
