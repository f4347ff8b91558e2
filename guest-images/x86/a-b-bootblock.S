/*
 * migtest x86 A-B guest: a 512-byte boot sector for live-migration tests.
 *
 * Written for migtest (GPL-2.0-or-later); modelled on the behaviour of
 * QEMU's tests/migration x86 guest, not copied from it.
 *
 * Behaviour:
 *   1. BIOS loads us at 0x7c00 in real mode.
 *   2. Enable A20 through the "fast A20" port 0x92, load a flat GDT and
 *      switch to 32-bit protected mode (4 GiB flat code and data segments).
 *   3. Print 'A' on COM1 (outb to 0x3f8).
 *   4. Zero the first byte of every 4 KiB page in [START, END).
 *   5. Forever: increment the first byte of every page of [START, END) in
 *      ascending address order; after every (PASS_MASK + 1) passes print 'B'.
 *
 * Patchable words (little-endian u32, file offsets inside the 512-byte image):
 *   0x1F6 (502): PASS_MASK - 'B' is printed when (passes & PASS_MASK) == 0.
 *                Must be 2^n - 1. Default 15 (a 'B' every 16 passes); see
 *                README.md for measured rates under TCG and KVM.
 *   0x1FA (506): END       - exclusive end of the test range (page aligned,
 *                > START). Default 100 MiB.
 *   0x1FE (510): 0x55 0xAA boot signature.
 * START is fixed at 1 MiB.
 *
 * Invariant checked by the harness (the "A-B invariant"): walking the page
 * starts of [START, END) in ascending order, each byte equals the previous
 * one or the previous one minus 1 (mod 256), and the -1 step happens at most
 * once (where the writer currently is).
 */

#define START        0x00100000
#define PASS_MASK_DEFAULT 15
#define END_DEFAULT  (100 * 1024 * 1024)
#define PAGE         4096
#define COM1         0x3f8
#define LOAD_ADDR    0x7c00
#define PASS_MASK_OFF 0x1f6
#define END_OFF       0x1fa

        .code16
        .section .text
        .globl _start
_start:
        cli
        cld
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $LOAD_ADDR, %sp

        /* fast A20: set bit 1 of port 0x92, never set bit 0 (reset) */
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        lgdtl   gdt_desc
        movl    %cr0, %eax
        orl     $1, %eax                /* CR0.PE */
        movl    %eax, %cr0
        ljmpl   $0x08, $pmode

        .code32
pmode:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $LOAD_ADDR, %esp

        movw    $COM1, %dx
        movb    $'A', %al
        outb    %al, %dx

        movl    (LOAD_ADDR + END_OFF), %ebx       /* END */
        movl    (LOAD_ADDR + PASS_MASK_OFF), %esi /* PASS_MASK */

        /* zero the first byte of every page */
        movl    $START, %edi
1:      movb    $0, (%edi)
        addl    $PAGE, %edi
        cmpl    %ebx, %edi
        jb      1b

        xorl    %ecx, %ecx              /* pass counter */
pass:
        movl    $START, %edi
2:      incb    (%edi)
        addl    $PAGE, %edi
        cmpl    %ebx, %edi
        jb      2b

        incl    %ecx
        testl   %esi, %ecx
        jnz     pass
        movb    $'B', %al
        outb    %al, %dx
        jmp     pass

        .p2align 3
gdt:
        .quad   0                       /* null */
        .quad   0x00cf9a000000ffff      /* 0x08: code, base 0, 4 GiB, 32-bit */
        .quad   0x00cf92000000ffff      /* 0x10: data, base 0, 4 GiB, 32-bit */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt

        .org    PASS_MASK_OFF
pass_mask:
        .long   PASS_MASK_DEFAULT
        .org    END_OFF
end_addr:
        .long   END_DEFAULT
        .byte   0x55, 0xaa
