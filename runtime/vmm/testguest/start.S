/* Entry of the freestanding test guest, reached through the 64-bit Linux
 * boot protocol: long mode, identity paging, RSI = boot_params. */
    .section .text.start, "ax"
    .code64
    .globl _start
_start:
    cli
    lea     stack_top(%rip), %rsp
    mov     %rsi, %rdi
    call    guest_main
1:  cli
    hlt
    jmp     1b

/* Application-processor trampoline, copied below 1 MiB and started by
 * INIT/SIPI in real mode. It reuses the boot GDT (0x500: code64 at 0x10,
 * data at 0x18) and page tables (CR3 = 0x9000) the VMM wrote, switches
 * straight to long mode and jumps to ap_entry64 (absolute address in
 * trampoline_target). */
    .globl trampoline_start, trampoline_end, trampoline_target, trampoline_stack
    .code16
trampoline_start:
    cli
    mov     %cs, %ax
    mov     %ax, %ds
    /* GDT pointer at offset (gdt_ptr - trampoline_start) in this page. */
    lgdtl   (gdt_ptr - trampoline_start)
    mov     $0x20, %eax          /* CR4.PAE */
    mov     %eax, %cr4
    mov     $0x9000, %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx    /* EFER.LME */
    rdmsr
    or      $0x100, %eax
    wrmsr
    mov     $0x80000011, %eax    /* CR0.PG | CR0.ET | CR0.PE */
    mov     %eax, %cr0
    /* Far jump to the 64-bit stub; offset patched by the BSP. */
    .byte   0x66, 0xea
trampoline_jmp_off:
    .long   0
    .word   0x10
    .code64
    .align 8
gdt_ptr:
    .word   39
    .quad   0x500
trampoline_target:
    .quad   0
trampoline_stack:
    .quad   0
trampoline_stub64:
    mov     $0x18, %ax
    mov     %ax, %ds
    mov     %ax, %ss
    mov     %ax, %es
    mov     (0x10000 + (trampoline_stack - trampoline_start)), %rsp
    /* Jump through trampoline_target (absolute, patched by the BSP). */
    mov     (0x10000 + (trampoline_target - trampoline_start)), %rax
    jmp     *%rax
trampoline_end:
    .globl trampoline_jmp_off_sym, trampoline_stub64_sym
    .set trampoline_jmp_off_sym, trampoline_jmp_off - trampoline_start
    .set trampoline_stub64_sym, trampoline_stub64 - trampoline_start

    .section .bss
    .align 16
stack:
    .skip 65536
stack_top:
