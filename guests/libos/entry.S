/* The personality's two doors: into the program (enter_program) and back from it
 * (syscall_entry, the LSTAR target).
 *
 * SYSCALL leaves the return address in rcx and RFLAGS in r11 and does not switch stacks:
 * the entry saves the program's rsp and runs the call on a stack of its own.  Linux's ABI
 * keeps every register but rax, rcx and r11 across a call; the C handler may clobber the
 * caller-saved ones, so they are saved here.  The return is a jump, not SYSRET: the
 * program runs in ring 0 like the personality (docs/linux.md). */
    .text
    .globl enter_program
enter_program:                   /* rdi = entry, rsi = initial stack */
    mov  %rsi, %rsp
    xor  %eax, %eax
    xor  %ebx, %ebx
    xor  %ecx, %ecx
    xor  %edx, %edx              /* no rtld_fini for _start to register */
    xor  %esi, %esi
    xor  %ebp, %ebp
    xor  %r8d, %r8d
    xor  %r9d, %r9d
    xor  %r10d, %r10d
    xor  %r11d, %r11d
    xor  %r12d, %r12d
    xor  %r13d, %r13d
    xor  %r14d, %r14d
    xor  %r15d, %r15d
    push %rdi
    xor  %edi, %edi
    ret

    .globl syscall_entry
syscall_entry:
    mov  %rsp, user_rsp(%rip)
    lea  kstack_top(%rip), %rsp
    push %r11                    /* the program's RFLAGS */
    push %rcx                    /* its return address */
    push %rdi
    push %rsi
    push %rdx
    push %r10
    push %r8
    push %r9
    sub  $16, %rsp               /* 16-byte alignment for the call */
    mov  %rax, (%rsp)            /* the number, as the 7th argument, on the stack */
    mov  %r10, %rcx              /* the 4th argument: r10 in the syscall ABI */
    call syscall_dispatch        /* (a0, a1, a2, a3, a4, a5, nr) -> rax */
    add  $16, %rsp
    pop  %r9
    pop  %r8
    pop  %r10
    pop  %rdx
    pop  %rsi
    pop  %rdi
    pop  %rcx
    popfq                        /* RFLAGS as SYSCALL saved it in r11 */
    mov  %rcx, %r11              /* r11 is the program's to lose, as on Linux */
    mov  user_rsp(%rip), %rsp
    jmp  *%rcx

    .bss
    .balign 16
user_rsp:
    .skip 8
    .balign 16
kstack:
    .skip 65536
kstack_top:
.section .note.GNU-stack,"",@progbits
