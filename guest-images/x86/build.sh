#!/bin/sh
# Reproducibly build a-b-bootblock.img (flat 512-byte x86 boot sector) from
# a-b-bootblock.S with GNU as/ld/objcopy (binutils). Needs only binutils and
# the C preprocessor (gcc -E, for the #defines).
#
#   ./build.sh            build and check a-b-bootblock.img
#   ./build.sh --check    build into a temp dir and compare with the checked-in image
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
CPP=${CPP:-cpp}
AS=${AS:-as}
LD=${LD:-ld}
OBJCOPY=${OBJCOPY:-objcopy}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

$CPP -P -undef -nostdinc a-b-bootblock.S -o "$tmp/bb.s"
$AS --32 -o "$tmp/bb.o" "$tmp/bb.s"
nowarn=""
if $LD --help 2>/dev/null | grep -q -- --no-warn-rwx-segments; then nowarn="--no-warn-rwx-segments"; fi
$LD $nowarn -m elf_i386 -N -e _start -Ttext=0x7c00 --build-id=none -o "$tmp/bb.elf" "$tmp/bb.o"
$OBJCOPY -O binary -j .text "$tmp/bb.elf" "$tmp/bb.img"

size=$(wc -c <"$tmp/bb.img" | tr -d ' ')
if [ "$size" -ne 512 ]; then
    echo "build.sh: image is $size bytes, expected 512" >&2
    exit 1
fi
sig=$(od -An -tx1 -j510 -N2 "$tmp/bb.img" | tr -d ' \n')
if [ "$sig" != "55aa" ]; then
    echo "build.sh: boot signature is '$sig', expected 55aa" >&2
    exit 1
fi

if [ "${1:-}" = "--check" ]; then
    if cmp -s "$tmp/bb.img" a-b-bootblock.img; then
        echo "a-b-bootblock.img is up to date"
    else
        echo "build.sh: a-b-bootblock.img differs from a fresh build" >&2
        exit 1
    fi
else
    cp "$tmp/bb.img" a-b-bootblock.img
    echo "built a-b-bootblock.img (512 bytes, signature 55aa)"
fi
