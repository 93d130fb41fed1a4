/*
 * Stand-in for Windows' bcryptprimitives.dll, for running Rust test
 * binaries under Wine 8 (Debian 12), which does not ship that DLL.
 *
 * Rust's std (>= 1.78) imports ProcessPrng from bcryptprimitives.dll to
 * seed HashMap's RandomState and for other randomness. Without the DLL the
 * Windows loader fails and every Rust program exits with code 53
 * (STATUS_OBJECT_PATH_NOT_FOUND / "DLL not found").
 *
 * This DLL exports ProcessPrng with the documented signature and fills the
 * buffer from RtlGenRandom (advapi32!SystemFunction036), which Wine
 * implements on top of the host's random source. Only for tests: it is
 * installed into a private Wine prefix by .ci/setup-cross.sh, never shipped.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -s -o bcryptprimitives.dll \
 *            bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

/* RtlGenRandom is exported by advapi32 under the name SystemFunction036. */
__declspec(dllimport) BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/*
 * BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData);
 *
 * The real function is documented to always return TRUE; callers (Rust's
 * std among them) do not check the result. So if the host's random source
 * ever fails, end the process rather than hand back a buffer that is not
 * random.
 */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    /* SystemFunction036 takes a ULONG (32-bit) length: go in chunks. */
    const SIZE_T chunk_max = 0x40000000; /* 1 GiB */

    while (cbData > 0) {
        ULONG chunk = (ULONG)(cbData < chunk_max ? cbData : chunk_max);
        if (!SystemFunction036(pbData, chunk)) {
            /* 0xC00000E5 = STATUS_INTERNAL_ERROR (ntstatus.h, not in windows.h) */
            TerminateProcess(GetCurrentProcess(), 0xC00000E5u);
            return FALSE; /* not reached */
        }
        pbData += chunk;
        cbData -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)reserved;
    if (reason == DLL_PROCESS_ATTACH)
        DisableThreadLibraryCalls(instance);
    return TRUE;
}
