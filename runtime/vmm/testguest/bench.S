/* Benchmark guest: one byte on COM1 as the very first thing, then spin. */
    .section .text.start, "ax"
    .code64
    .globl _start
_start:
    mov     $0x3f8, %dx
    mov     $'!', %al
    outb    %al, %dx
1:  pause
    jmp     1b
