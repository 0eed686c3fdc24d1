"""Catalogue of Xen 4.17 trace events: ids, names and payload layouts.

Facts come from Xen's public header xen/include/public/trace.h (ids, classes, flag bits),
the emit sites in the hypervisor (payload layouts) and xen.h / vmx.h / vmcb.h (hypercall
numbers and exit reasons). The table below is declarative, one line per event id, in the
spirit of the `formats` file Xen used to ship with xentrace_format:

    <id>  <name>  <field>=<words> ...

A field is read from the record's raw payload words w0..w6 (the canonical table keeps them
in arg0..arg6):
    w3          one 32-bit word
    w1:w0       a 64-bit value from hi:lo words
    w0[16:32]   bits 16..31 of a word
    code[4:8]   bits of the event id itself (runstate ids carry the old/new state)
A field whose words the record does not carry (nargs too small) has no value (IOMEM
writes without data, ...); the table keeps such words as 0.

Where Xen's old `formats` file and the source disagree, the source wins: credit2's
PICKED_CPU..RUNQ_CAND_CHECK are events 19..23 (credit2.c), one higher than `formats` says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- classes (trace.h: TRC_GEN .. TRC_GUEST, bits 16..27 of the id) -------------------
CLASS_NAMES = {
    0x001: "gen",
    0x002: "sched",
    0x004: "dom0op",
    0x008: "hvm",
    0x010: "mem",
    0x020: "pv",
    0x040: "shadow",
    0x080: "hw",
    0x800: "guest",
}

TRC_LOST_RECORDS = 0x0001F001
TRC_TRACE_WRAP_BUFFER = 0x0001F002
TRC_TRACE_CPU_CHANGE = 0x0001F003
CPU_CHANGE_HEADER = TRC_TRACE_CPU_CHANGE | (2 << 28)
TRC_SCHED_RUNSTATE_CHANGE = 0x00021001
TRC_HVM_VMENTRY = 0x00081001
TRC_HVM_VMEXIT = 0x00081002
TRC_HVM_VMEXIT64 = 0x00081102
TRC_HVM_NESTEDFLAG = 0x400
TRC_PV_HYPERCALL_V2 = 0x0020100D
TRC_PV_HYPERCALL_SUBCALL = 0x0020200E
TRC_GUEST = 0x0800F000

RUNSTATES = ("running", "runnable", "blocked", "offline")

_CATALOGUE = """
0x0001f001 gen.lost_records       lost=w0 dom=w1[0:16] vcpu=w1[16:32] first_tsc=w3:w2
0x0001f002 gen.wrap_buffer
0x00021002 sched.continue_running dom=w0[16:32] vcpu=w0[0:16]
0x00028001 sched.dom_add          domid=w0
0x00028002 sched.dom_rem          domid=w0
0x00028003 sched.sleep            dom=w0 vcpu=w1
0x00028004 sched.wake             dom=w0 vcpu=w1
0x00028005 sched.yield            dom=w0 vcpu=w1
0x00028006 sched.block            dom=w0 vcpu=w1
0x00028007 sched.shutdown         dom=w0 vcpu=w1 reason=w2
0x00028008 sched.ctl
0x00028009 sched.adjdom           domid=w0
0x0002800a sched.switch           prev_dom=w0 prev_vcpu=w1 next_dom=w2 next_vcpu=w3
0x0002800b sched.s_timer_fn
0x0002800c sched.t_timer_fn
0x0002800d sched.dom_timer_fn
0x0002800e sched.switch_infprev   dom=w0 vcpu=w1 runtime_ns=w2
0x0002800f sched.switch_infnext   dom=w0 vcpu=w1 waited_ns=w2 r_time_ns=w3
0x00028010 sched.shutdown_code    dom=w0 vcpu=w1 reason=w2
0x00028011 sched.switch_infcont   dom=w0 vcpu=w1 runtime_ns=w2 r_time_ns=w3
0x00022001 sched.csched.sched_tasklet
0x00022002 sched.csched.account_start dom=w0 vcpu=w1 active=w2
0x00022003 sched.csched.account_stop  dom=w0 vcpu=w1 active=w2
0x00022004 sched.csched.stolen_vcpu   from=w0 dom=w1 vcpu=w2
0x00022005 sched.csched.picked_cpu    dom=w0 vcpu=w1 cpu=w2
0x00022006 sched.csched.tickle        cpu=w0
0x00022007 sched.csched.boost         dom=w0 vcpu=w1
0x00022008 sched.csched.unboost       dom=w0 vcpu=w1
0x00022009 sched.csched.schedule      flags=w0
0x0002200a sched.csched.ratelimit     dom=w0[16:32] vcpu=w0[0:16] runtime=w1
0x0002200b sched.csched.steal_check   peer_cpu=w0 checked=w1
0x00022201 sched.csched2.tick
0x00022202 sched.csched2.runq_pos     dom=w0[16:32] vcpu=w0[0:16] pos=w1
0x00022203 sched.csched2.credit_burn  dom=w0[16:32] vcpu=w0[0:16] credit=w1 budget=w2 delta=w3
0x00022204 sched.csched2.credit_add
0x00022205 sched.csched2.tickle_check dom=w0[16:32] vcpu=w0[0:16] credit=w1 score=w2
0x00022206 sched.csched2.tickle       cpu=w0
0x00022207 sched.csched2.credit_reset dom=w0[16:32] vcpu=w0[0:16] cr_start=w1 cr_end=w2
0x00022208 sched.csched2.sched_tasklet
0x00022209 sched.csched2.update_load
0x0002220a sched.csched2.runq_assign  dom=w0[16:32] vcpu=w0[0:16] rq_id=w1
0x0002220b sched.csched2.updt_vcpu_load vcpuload=w1:w0 dom=w2[16:32] vcpu=w2[0:16] wshift=w3
0x0002220c sched.csched2.updt_runq_load rq_avgload=w1:w0 b_avgload=w3:w2 packed=w4
0x0002220d sched.csched2.tickle_new   dom=w0[16:32] vcpu=w0[0:16] processor=w1 credit=w2
0x0002220e sched.csched2.runq_max_weight packed=w0
0x0002220f sched.csched2.migrate      dom=w0[16:32] vcpu=w0[0:16] rqs=w1
0x00022210 sched.csched2.load_check   rqs=w0 delta=w1
0x00022211 sched.csched2.load_balance l_bavgload=w1:w0 o_bavgload=w3:w2 rqs=w4
0x00022213 sched.csched2.pick_cpu     b_avgload=w1:w0 dom=w2[16:32] vcpu=w2[0:16] rq_cpu=w3
0x00022214 sched.csched2.runq_candidate dom=w0[16:32] vcpu=w0[0:16] tickled_cpu=w1 credit=w2
0x00022215 sched.csched2.schedule     rq_cpu=w0 flags=w1
0x00022216 sched.csched2.ratelimit    dom=w0[16:32] vcpu=w0[0:16] runtime=w1
0x00022217 sched.csched2.runq_cand_chk dom=w0[16:32] vcpu=w0[0:16]
0x00022801 sched.rtds.tickle          cpu=w0
0x00022802 sched.rtds.runq_pick       dom=w0[16:32] vcpu=w0[0:16] cur_deadline=w2:w1 cur_budget=w4:w3
0x00022803 sched.rtds.burn_budget     dom=w0[16:32] vcpu=w0[0:16] cur_budget=w2:w1 delta=w3
0x00022804 sched.rtds.repl_budget     dom=w0[16:32] vcpu=w0[0:16] cur_deadline=w2:w1 cur_budget=w4:w3
0x00022805 sched.rtds.sched_tasklet
0x00022806 sched.rtds.schedule        flags=w0
0x00022a01 sched.null.pick_cpu        dom=w0[16:32] vcpu=w0[0:16] new_cpu=w1
0x00022a02 sched.null.assign          dom=w0[16:32] vcpu=w0[0:16] cpu=w1
0x00022a03 sched.null.deassign        dom=w0[16:32] vcpu=w0[0:16] cpu=w1
0x00022a04 sched.null.migrate         dom=w0[16:32] vcpu=w0[0:16] cpus=w1
0x00022a05 sched.null.schedule        flags=w0 dom=w1[16:32] vcpu=w1[0:16]
0x00022a06 sched.null.sched_tasklet
0x00041001 dom0.domain_create     dom=w0
0x00041002 dom0.domain_destroy    dom=w0
0x00081001 hvm.vmentry
0x00081002 hvm.vmexit             exit_reason=w0 rip=w1
0x00081102 hvm.vmexit             exit_reason=w0 rip=w2:w1
0x00081401 hvm.nested_vmentry
0x00081402 hvm.nested_vmexit      exit_reason=w0 rip=w1
0x00081502 hvm.nested_vmexit      exit_reason=w0 rip=w2:w1
0x00082001 hvm.pf_xen             va=w0 error_code=w1
0x00082101 hvm.pf_xen             va=w1:w0 error_code=w2
0x00082002 hvm.pf_inject          error_code=w0 va=w1
0x00082102 hvm.pf_inject          error_code=w0 va=w2:w1
0x00082003 hvm.inj_exc            vector=w0 error_code=w1
0x00082004 hvm.inj_virq           vector=w0 fake=w1
0x00082005 hvm.reinj_virq         vector=w0
0x00082006 hvm.io_read            port=w0 size=w1
0x00082007 hvm.io_write           port=w0 size=w1
0x00082008 hvm.cr_read            cr=w0 value=w1
0x00082108 hvm.cr_read            cr=w0 value=w2:w1
0x00082009 hvm.cr_write           cr=w0 value=w1
0x00082109 hvm.cr_write           cr=w0 value=w2:w1
0x0008200a hvm.dr_read
0x0008200b hvm.dr_write
0x0008200c hvm.msr_read           msr=w0 value=w2:w1
0x0008200d hvm.msr_write          msr=w0 value=w2:w1
0x0008200e hvm.cpuid              leaf=w0 subleaf=w1 eax=w2 ebx=w3 ecx=w4 edx=w5
0x0008200f hvm.intr               vector=w0
0x00082010 hvm.nmi
0x00082011 hvm.smi
0x00082012 hvm.vmmcall            hypercall=w0
0x00082013 hvm.hlt                intpending=w0
0x00082014 hvm.invlpg             invlpga=w0 va=w1
0x00082114 hvm.invlpg             invlpga=w0 va=w2:w1
0x00082015 hvm.mce
0x00082016 hvm.ioport_read        port=w0 data=w1
0x00082216 hvm.ioport_write       port=w0 data=w1
0x00082017 hvm.mmio_read          gpa=w0 data=w1
0x00082217 hvm.mmio_write         gpa=w0 data=w1
0x00082117 hvm.mmio_read          gpa=w1:w0 data=w3:w2
0x00082317 hvm.mmio_write         gpa=w1:w0 data=w3:w2
0x00082018 hvm.clts
0x00082019 hvm.lmsw               value=w0
0x00082119 hvm.lmsw               value=w1:w0
0x0008201a hvm.rdtsc              value=w1:w0
0x00082020 hvm.intr_window        vector=w0 source=w1 intr=w2
0x00082021 hvm.npf                gpa=w1:w0 mfn=w3:w2 qualification=w4 p2mt=w5
0x00082022 hvm.realmode_emulate   cs=w0 ip=w1
0x00082023 hvm.trap               vector=w0
0x00082024 hvm.trap_debug         exit_qualification=w0
0x00082025 hvm.vlapic
0x00082126 hvm.xcr_read           index=w0 value=w2:w1
0x00082127 hvm.xcr_write          index=w0 value=w2:w1
0x00084001 hvm.emul.hpet_start_timer tn=w0 irq=w1 delta=w3:w2 period=w5:w4
0x00084002 hvm.emul.pit_start_timer delta=w1:w0 period=w3:w2
0x00084003 hvm.emul.rtc_start_timer delta=w1:w0 period=w3:w2
0x00084004 hvm.emul.lapic_start_timer delta=w1:w0 period=w3:w2 irq=w4
0x00084005 hvm.emul.hpet_stop_timer tn=w0
0x00084006 hvm.emul.pit_stop_timer
0x00084007 hvm.emul.rtc_stop_timer
0x00084008 hvm.emul.lapic_stop_timer
0x00084009 hvm.emul.pit_timer_cb
0x0008400a hvm.emul.lapic_timer_cb
0x0008400b hvm.emul.pic_int_output int_output=w0 is_master=w1 irq=w2
0x0008400c hvm.emul.pic_kick      irq=w0
0x0008400d hvm.emul.pic_intack    is_master=w0 irq=w1
0x0008400e hvm.emul.pic_posedge   irq=w0
0x0008400f hvm.emul.pic_negedge   irq=w0
0x00084010 hvm.emul.pic_pend_irq_call accept_pic_intr=w0 int_output=w1
0x00084011 hvm.emul.lapic_pic_intr i8259_target=w0 accept_pic_intr=w1
0x0010f001 mem.grant_map          granting_dom=w0
0x0010f002 mem.grant_unmap        granting_dom=w0
0x0010f003 mem.grant_transfer     dest_dom=w0
0x0010f004 mem.set_p2m_entry      gfn=w1:w0 mfn=w3:w2 packed=w4
0x0010f005 mem.decrease_reservation gfn=w1:w0 packed=w2
0x0010f010 mem.pod_populate       gfn=w1:w0 mfn=w3:w2 packed=w4
0x0010f011 mem.pod_zero_reclaim   gfn=w1:w0 mfn=w3:w2 packed=w4
0x0010f012 mem.pod_superpage_splinter gfn=w1:w0 packed=w2
0x00201001 pv.hypercall           eip=w0 eax=w1
0x00201101 pv.hypercall           rip=w1:w0 eax=w2
0x00201003 pv.trap                eip=w0 trap_error=w1
0x00201103 pv.trap                rip=w1:w0 trap_error=w2
0x00201004 pv.page_fault          eip=w0 addr=w1 error_code=w2
0x00201104 pv.page_fault          rip=w1:w0 addr=w3:w2 error_code=w4
0x00201005 pv.forced_invalid_op   eip=w0
0x00201105 pv.forced_invalid_op   rip=w1:w0
0x00201006 pv.emulate_privop      eip=w0
0x00201106 pv.emulate_privop      rip=w1:w0
0x00201007 pv.emulate_4gb         eip=w0
0x00201107 pv.emulate_4gb         rip=w1:w0
0x00201008 pv.math_state_restore
0x00201108 pv.math_state_restore
0x00201009 pv.paging_fixup        eip=w0 addr=w1
0x00201109 pv.paging_fixup        rip=w1:w0 addr=w3:w2
0x0020100a pv.gdt_ldt_mapping_fault eip=w0 offset=w1
0x0020110a pv.gdt_ldt_mapping_fault rip=w1:w0 offset=w3:w2
0x0020100b pv.ptwr_emulation      npte=w1:w0 addr=w2 eip=w3
0x0020110b pv.ptwr_emulation      npte=w1:w0 addr=w3:w2 rip=w5:w4
0x0020100c pv.ptwr_emulation_pae  npte=w1:w0 addr=w2 eip=w3
0x0020110c pv.ptwr_emulation_pae  npte=w1:w0 addr=w3:w2 rip=w5:w4
0x0020100d pv.hypercall           op=w0[0:20]
0x0020200e pv.hypercall_subcall   op=w0[0:20]
0x00801001 hw.pm.freq_change      old_mhz=w0 new_mhz=w1
0x00801002 hw.pm.idle_entry       cstate=w0 pm_tick=w1 expected_us=w2 predicted_us=w3
0x00801003 hw.pm.idle_exit        cstate=w0 pm_tick=w1 irq0=w2 irq1=w3 irq2=w4 irq3=w5
0x00802001 hw.irq.move_cleanup_delay irq=w0 vector=w1 cpu=w2
0x00802002 hw.irq.move_cleanup    irq=w0 vector=w1 cpu=w2
0x00802003 hw.irq.bind_vector     irq=w0[0:16] vector=w0[16:32] mask=w1
0x00802004 hw.irq.clear_vector    irq=w0[0:16] vector=w0[16:32] mask=w1
0x00802005 hw.irq.move_finish     irq=w0 vector=w1 cpu=w2
0x00802006 hw.irq.assign_vector   irq=w0[0:16] vector=w0[16:32] mask=w1
0x00802007 hw.irq.unmapped_vector vector=w0
0x00802008 hw.irq.handled         irq=w0 tsc_in=w1 tsc_out=w2
"""

_SHADOW = [
    (0x01, "not_shadow", "gl1e=w1:w0 va=w2 flags=w3", "gl1e=w1:w0 va=w3:w2 flags=w4"),
    (0x02, "fast_propagate", "va=w0", "va=w1:w0"),
    (0x03, "fast_mmio", "va=w0", "va=w1:w0"),
    (0x04, "false_fast_path", "va=w0", "va=w1:w0"),
    (0x05, "mmio", "va=w0", "va=w1:w0"),
    (0x06, "fixup", "gl1e=w0 va=w1 flags=w2", "gl1e=w1:w0 va=w3:w2 flags=w4"),
    (0x07, "domf_dying", "va=w0", "va=w1:w0"),
    (
        0x08,
        "emulate",
        "gl1e=w0 write_val=w1 va=w2 flags=w3",
        "gl1e=w1:w0 write_val=w3:w2 va=w5:w4 flags=w6",
    ),
    (0x09, "emulate_unshadow_user", "va=w0 gfn=w1", "va=w1:w0 gfn=w3:w2"),
    (0x0A, "emulate_unshadow_evtinj", "va=w0 gfn=w1", "va=w1:w0 gfn=w3:w2"),
    (0x0B, "emulate_unshadow_unhandled", "va=w0 gfn=w1", "va=w1:w0 gfn=w3:w2"),
    (0x0C, "wrmap_bf", "gfn=w0", "gfn=w1:w0"),
    (0x0D, "prealloc_unpin", "gfn=w0", "gfn=w1:w0"),
    (0x0E, "resync_full", "gfn=w0", "gfn=w1:w0"),
    (0x0F, "resync_only", "gfn=w0", "gfn=w1:w0"),
]

# --- field specs -------------------------------------------------------------------------

_FIELD_RE = re.compile(r"^(w(\d)(?::w(\d))?|w(\d)\[(\d+):(\d+)\]|code\[(\d+):(\d+)\])$")


@dataclass(frozen=True)
class Field:
    """One payload field: which words it is read from and how."""

    name: str
    word: int | None = None  # low (or only) word index
    hi_word: int | None = None  # high word for 64-bit values
    bits: tuple[int, int] | None = None  # (lo, hi) bit slice of `word` or of the id
    from_code: bool = False

    @property
    def needs_words(self) -> int:
        """How many payload words a record must carry for this field to be present."""
        if self.from_code:
            return 0
        return max(self.word or 0, self.hi_word or 0) + 1

    @property
    def wide(self) -> bool:
        return self.hi_word is not None


def _parse_field(text: str) -> Field:
    name, _, spec = text.partition("=")
    m = _FIELD_RE.match(spec)
    if not name or not m:
        raise ValueError(f"bad field spec {text!r}")
    if m.group(2) is not None:
        if m.group(3) is not None:  # w1:w0 is hi:lo
            return Field(name, word=int(m.group(3)), hi_word=int(m.group(2)))
        return Field(name, word=int(m.group(2)))
    if m.group(4) is not None:
        return Field(name, word=int(m.group(4)), bits=(int(m.group(5)), int(m.group(6))))
    return Field(name, bits=(int(m.group(7)), int(m.group(8))), from_code=True)


@dataclass(frozen=True)
class EventSpec:
    code: int
    name: str
    fields: tuple[Field, ...]

    @property
    def cls(self) -> str:
        return CLASS_NAMES.get((self.code >> 16) & 0xFFF, "unknown")


def _build() -> dict[int, EventSpec]:
    specs: dict[int, EventSpec] = {}

    def add(code: int, name: str, fields: str) -> None:
        specs[code] = EventSpec(code, name, tuple(_parse_field(f) for f in fields.split()))

    for line in _CATALOGUE.strip().splitlines():
        code, name, *fields = line.split()
        add(int(code, 16), name, " ".join(fields))
    # Runstate changes: the id carries old<<8 | new<<4 (sched/core.c trace_runstate_change).
    for old in range(4):
        for new in range(4):
            add(
                TRC_SCHED_RUNSTATE_CHANGE | old << 8 | new << 4,
                "sched.runstate_change",
                "dom=w0[16:32] vcpu=w0[0:16] old=code[8:12] new=code[4:8]",
            )
    # Shadow events: OR in (guest paging levels - 2) << 8; the 64-bit layout when levels=4.
    for minor, name, f32, f64 in _SHADOW:
        for levels in (2, 3, 4):
            add(
                0x0040F000 | (levels - 2) << 8 | minor,
                f"shadow.{name}",
                f64 if levels == 4 else f32,
            )
    return specs


SPECS: dict[int, EventSpec] = _build()
UNKNOWN = "unknown"
GUEST_MARKER = "guest.marker"

# Every name the decoder can produce, in a stable order (the `event` Enum categories).
EVENT_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys([UNKNOWN, GUEST_MARKER, *sorted({s.name for s in SPECS.values()})])
)


def spec_for(code: int) -> EventSpec | None:
    """The spec of one event id; TRC_GUEST ids (any minor) share one spec of raw words."""
    spec = SPECS.get(code)
    if spec is None and code & 0x0FFFF000 == TRC_GUEST:
        return EventSpec(code, GUEST_MARKER, tuple(Field(f"w{i}", word=i) for i in range(7)))
    return spec


def event_name(code: int) -> str:
    spec = spec_for(code)
    return spec.name if spec else UNKNOWN


# --- name tables ---------------------------------------------------------------------------

# xen/include/public/xen.h __HYPERVISOR_* numbers.
HYPERCALL_NAMES: dict[int, str] = {
    0: "set_trap_table", 1: "mmu_update", 2: "set_gdt", 3: "stack_switch",
    4: "set_callbacks", 5: "fpu_taskswitch", 6: "sched_op_compat", 7: "platform_op",
    8: "set_debugreg", 9: "get_debugreg", 10: "update_descriptor", 12: "memory_op",
    13: "multicall", 14: "update_va_mapping", 15: "set_timer_op",
    16: "event_channel_op_compat", 17: "xen_version", 18: "console_io",
    19: "physdev_op_compat", 20: "grant_table_op", 21: "vm_assist",
    22: "update_va_mapping_otherdomain", 23: "iret", 24: "vcpu_op", 25: "set_segment_base",
    26: "mmuext_op", 27: "xsm_op", 28: "nmi_op", 29: "sched_op", 30: "callback_op",
    31: "xenoprof_op", 32: "event_channel_op", 33: "physdev_op", 34: "hvm_op", 35: "sysctl",
    36: "domctl", 37: "kexec_op", 38: "tmem_op", 39: "argo_op", 40: "xenpmu_op", 41: "dm_op",
    42: "hypfs_op",
}  # fmt: skip

# xen/arch/x86/include/asm/hvm/vmx/vmx.h EXIT_REASON_* (basic exit reasons).
VMX_EXIT_REASONS: dict[int, str] = {
    0: "EXCEPTION_NMI", 1: "EXTERNAL_INTERRUPT", 2: "TRIPLE_FAULT", 3: "INIT", 4: "SIPI",
    5: "IO_SMI", 6: "OTHER_SMI", 7: "PENDING_INTERRUPT", 8: "PENDING_VIRT_NMI",
    9: "TASK_SWITCH", 10: "CPUID", 11: "GETSEC", 12: "HLT", 13: "INVD", 14: "INVLPG",
    15: "RDPMC", 16: "RDTSC", 17: "RSM", 18: "VMCALL", 19: "VMCLEAR", 20: "VMLAUNCH",
    21: "VMPTRLD", 22: "VMPTRST", 23: "VMREAD", 24: "VMRESUME", 25: "VMWRITE", 26: "VMOFF",
    27: "VMON", 28: "CR_ACCESS", 29: "DR_ACCESS", 30: "IO_INSTRUCTION", 31: "MSR_READ",
    32: "MSR_WRITE", 33: "INVALID_GUEST_STATE", 34: "MSR_LOADING", 36: "MWAIT_INSTRUCTION",
    37: "MONITOR_TRAP_FLAG", 39: "MONITOR_INSTRUCTION", 40: "PAUSE_INSTRUCTION",
    41: "MACHINE_CHECK", 43: "TPR_BELOW_THRESHOLD", 44: "APIC_ACCESS", 45: "EOI_INDUCED",
    46: "ACCESS_GDTR_OR_IDTR", 47: "ACCESS_LDTR_OR_TR", 48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG", 50: "INVEPT", 51: "RDTSCP", 52: "VMX_PREEMPTION_TIMER_EXPIRED",
    53: "INVVPID", 54: "WBINVD", 55: "XSETBV", 56: "APIC_WRITE", 58: "INVPCID", 59: "VMFUNC",
    62: "PML_FULL", 63: "XSAVES", 64: "XRSTORS", 74: "BUS_LOCK", 75: "NOTIFY",
}  # fmt: skip


def _svm_exit_reasons() -> dict[int, str]:
    """AMD VMCB exit codes (xen/arch/x86/include/asm/hvm/svm/vmcb.h VMEXIT_*)."""
    names: dict[int, str] = {}
    for i in range(16):
        names[i] = f"VMEXIT_CR{i}_READ"
        names[16 + i] = f"VMEXIT_CR{i}_WRITE"
        names[32 + i] = f"VMEXIT_DR{i}_READ"
        names[48 + i] = f"VMEXIT_DR{i}_WRITE"
    exceptions = ["DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "09", "TS", "NP", "SS",
                  "GP", "PF", "15", "MF", "AC", "MC", "XF"]  # fmt: skip
    for i in range(32):
        names[64 + i] = f"VMEXIT_EXCEPTION_{exceptions[i] if i < len(exceptions) else i}"
    rest = ["INTR", "NMI", "SMI", "INIT", "VINTR", "CR0_SEL_WRITE", "IDTR_READ", "GDTR_READ",
            "LDTR_READ", "TR_READ", "IDTR_WRITE", "GDTR_WRITE", "LDTR_WRITE", "TR_WRITE",
            "RDTSC", "RDPMC", "PUSHF", "POPF", "CPUID", "RSM", "IRET", "SWINT", "INVD", "PAUSE",
            "HLT", "INVLPG", "INVLPGA", "IOIO", "MSR", "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN",
            "VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT", "RDTSCP", "ICEBP",
            "WBINVD", "MONITOR", "MWAIT", "MWAIT_CONDITIONAL", "XSETBV", "RDPRU"]  # fmt: skip
    for i, n in enumerate(rest):
        names[96 + i] = f"VMEXIT_{n}"
    names[1024] = "VMEXIT_NPF"
    names[1025] = "VMEXIT_AVIC_INCOMP_IPI"
    names[1026] = "VMEXIT_AVIC_NOACCEL"
    return names


SVM_EXIT_REASONS: dict[int, str] = _svm_exit_reasons()
# SVM's codes for the exits every guest takes (INTR, IOIO, NPF...) are >= 96, VMX's below:
# the highest exit code of a trace tells which the host was
SVM_FIRST_COMMON = 96


def hvm_vendor(top_exit_code: int | None) -> str | None:
    """'svm' or 'vmx' from the highest exit code a trace holds (None: no exits)."""
    return None if top_exit_code is None else "svm" if top_exit_code >= SVM_FIRST_COMMON else "vmx"


def exit_reason_name(reason: int, vendor: str) -> str:
    """Name of an HVM exit reason; `vendor` is 'vmx' (Intel) or 'svm' (AMD)."""
    table = SVM_EXIT_REASONS if vendor == "svm" else VMX_EXIT_REASONS
    if vendor != "svm":
        reason &= 0xFFFF  # VMX: basic exit reason in bits 0..15
    return table.get(reason, f"exit_{reason}")


def hypercall_name(op: int) -> str:
    return HYPERCALL_NAMES.get(op, f"hypercall_{op}")
