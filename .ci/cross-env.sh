# shellcheck shell=bash
# Environment for `cargo test --target X` on the cross targets that
# .ci/setup-cross.sh prepares (run that first).
#
#   source .ci/cross-env.sh        # export the variables into this shell
#   bash .ci/cross-env.sh          # only print them, as `export` lines
#
# Then:
#   cargo test --target aarch64-unknown-linux-gnu     # under qemu-aarch64-static
#   cargo test --target riscv64gc-unknown-linux-gnu   # under qemu-riscv64-static
#   cargo test --target x86_64-pc-windows-gnu         # under Wine (wine-run.sh)
#
# binfmt_misc is not relied on: every runner is explicit.
# Paths are derived from this file's location, so this works from any clone.

_costack_cross_env() {
    local ci_dir root
    ci_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) || return 1
    root=$(cd "$ci_dir/.." && pwd) || return 1

    _costack_vars=(
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static -L /usr/aarch64-linux-gnu"
        CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_LINKER=riscv64-linux-gnu-gcc
        "CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUNNER=qemu-riscv64-static -L /usr/riscv64-linux-gnu"
        CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
        "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$ci_dir/cross/wine-run.sh"
        "WINEPREFIX=${COSTACK_WINEPREFIX:-$root/target/wineprefix}"
        WINEDEBUG=-all
        # For build scripts using the cc crate (C code in -sys crates).
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
        AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
        CC_riscv64gc_unknown_linux_gnu=riscv64-linux-gnu-gcc
        AR_riscv64gc_unknown_linux_gnu=riscv64-linux-gnu-ar
        CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
        AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
    )
}

if _costack_cross_env; then
    if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
        # Executed, not sourced: print.
        for _costack_kv in "${_costack_vars[@]}"; do
            case "${_costack_kv#*=}" in
                *\'*) printf 'export %s=%q\n' "${_costack_kv%%=*}" "${_costack_kv#*=}" ;;
                *) printf "export %s='%s'\n" "${_costack_kv%%=*}" "${_costack_kv#*=}" ;;
            esac
        done
    else
        for _costack_kv in "${_costack_vars[@]}"; do
            export "${_costack_kv%%=*}=${_costack_kv#*=}"
        done
    fi
    unset _costack_kv _costack_vars
    unset -f _costack_cross_env
else
    unset _costack_vars
    unset -f _costack_cross_env
    echo "cross-env.sh: could not locate the repository" >&2
    false
fi
