	.file "start.S"
/* Start-up: stack, GDT with a 64-bit code segment (so that iretq works), IDT of 256 stubs,
 * then main() and a clean exit.  Interrupts are delivered by the platform as on hardware
 * without an error code: every stub pushes a zero error code and its vector number. */
    .section .text.start, "ax"
    .globl _start
_start:
    mov  0x1010, %rsp            /* boot_info->ram_size: the stack grows down from the top */
    lgdt gdt_ptr(%rip)
    lea  1f(%rip), %rax
    pushq $0x08
    pushq %rax
    lretq
1:  mov  $0x10, %ax
    mov  %ax, %ds
    mov  %ax, %es
    mov  %ax, %ss
    call idt_setup
    lidt idt_ptr(%rip)
    call main
    mov  %eax, %edi
    mov  $0, %eax                /* HC_EXIT */
    vmcall
2:  hlt
    jmp 2b

    .text
    .globl isr_common
isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov  %rsp, %rdi
    mov  %rsp, %rbx
    and  $-16, %rsp
    call isr_dispatch
    mov  %rbx, %rsp
    pop  %r15
    pop  %r14
    pop  %r13
    pop  %r12
    pop  %r11
    pop  %r10
    pop  %r9
    pop  %r8
    pop  %rbp
    pop  %rdi
    pop  %rsi
    pop  %rdx
    pop  %rcx
    pop  %rbx
    pop  %rax
    add  $16, %rsp               /* vector and error code */
    iretq

    .macro stub n
isr_stub_\n:
    pushq $0
    pushq $\n
    jmp isr_common
    .endm

    .altmacro
    .macro stubs from, to
    stub %from
    .if \to-\from
    stubs %(from+1), \to
    .endif
    .endm
    stubs 0, 63
    stubs 64, 127
    stubs 128, 191
    stubs 192, 255

    .macro stubaddr n
    .quad isr_stub_\n
    .endm
    .macro stubaddrs from, to
    stubaddr %from
    .if \to-\from
    stubaddrs %(from+1), \to
    .endif
    .endm

    .section .rodata
    .globl isr_stubs
    .balign 8
isr_stubs:
    stubaddrs 0, 63
    stubaddrs 64, 127
    stubaddrs 128, 191
    stubaddrs 192, 255

    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff     /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff     /* 0x10: data */
gdt_ptr:
    .word 23
    .quad gdt
    .globl idt_ptr
idt_ptr:
    .word 4095
    .quad idt
    .bss
    .balign 4096
    .globl idt
idt:
    .skip 4096
.section .note.GNU-stack,"",@progbits
